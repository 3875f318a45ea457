/* gmpworker._core: the native hot paths of gmpworker, with Go's names.
 *
 * The pure-Python runtime (proc.py, chan.py, runtime.py) is the reference; this
 * module replaces its hottest functions when it is built (see native.py):
 *
 *   runq          Go's p.runq: a 256-slot ring (runqhead/runqtail) plus runnext,
 *                 as one C struct per P                          (runtime2.go p)
 *   runqput, runqputslow, runqget, runqgrab, runqempty           (proc.go)
 *   goready       ready(gp, next=true)                           (proc.go)
 *   newproc, go   newproc/newproc1: the G record is filled in C  (proc.go)
 *   goexit        goexit1/goexit0's common case (no waiter, no panic)
 *   schedule      schedule + execute + gogo: resumes the G's coroutine with
 *                 PyIter_Send inside its Context, commits a park (park_m's
 *                 common case); every other request goes to the Python handlers
 *   Chan.send/recv/recv2/__anext__: chansend/chanrecv (chan.go) as awaitables
 *                 with am_send, so an operation that completes at once runs no
 *                 Python frame and returns without any scheduler round trip
 *
 *   g, sudog      Go's records as C structs (runtime2.G and GHandle subclass g
 *                 with no slots of their own; runtime2.sudog is sudog)
 *
 * The other records (P, M, schedt, Chan) stay the Python classes of
 * runtime2.py/chan.py: they use __slots__, i.e. CPython lays them out as C
 * structs of object pointers too, and this module reads and writes every record's
 * fields through the member offsets it looks up once (bind()). Everything that holds
 * the GIL without calling back into Python is atomic, which is what Go's CAS
 * and lock-free ring operations need; the channel locks are the same
 * _thread locks the Python code takes (select.py, close, try_send), taken here
 * directly (their 3.11/3.12 struct layout is checked by check_layout()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <sched.h>

#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030D0000
#error "gmpworker._core supports CPython 3.11 and 3.12 (the pure runtime runs elsewhere)"
#endif

#define LOCAL_RUNQ_CAP 256

/* Go's G and P states (runtime2.go). */
enum { Grunnable = 1, Grunning = 2, Gwaiting = 4, Gdead = 6, Prunning = 1 };

/* ---------------------------------------------------------------------------
 * Field access by slot offset */

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

static inline PyObject *
getf(PyObject *o, Py_ssize_t off)
{
    PyObject *v = SLOT(o, off);
    return v != NULL ? v : Py_None;
}

static inline void
setf(PyObject *o, Py_ssize_t off, PyObject *v)
{
    PyObject *old = SLOT(o, off);
    Py_INCREF(v);
    SLOT(o, off) = v;
    Py_XDECREF(old);
}

static inline int
is_true(PyObject *v)
{
    return v == Py_True || (v != Py_False && v != Py_None && PyObject_IsTrue(v) > 0);
}

/* Offsets of the slots used here, filled by bind(). */
static struct {
    /* G (and its base GHandle) */
    Py_ssize_t g_goid, g_status, g_preempt, g_result, g_exc_, g_waiters, g_cancelreq,
        g_throwexc, g_coro, g_ctx, g_exc, g_m, g_param, g_sched, g_timer, g_waitabort,
        g_waiting, g_waitlock, g_waitreason, g_waitunlockf;
    /* sudog */
    Py_ssize_t sg_c, sg_elem, sg_g, sg_isSelect, sg_seldone, sg_success;
    /* P */
    Py_ssize_t p_runq, p_schedtick, p_timer0When, p_status, p_sched, p_goidcache,
        p_goidcacheend;
    /* M */
    Py_ssize_t m_curg, m_p, m_spinning, m_sched;
    /* schedt */
    Py_ssize_t s_exiting, s_runq, s_npidle, s_nmspinning, s_counters, s_allgs, s_lock,
        s_mainStarted, s_islibrary;
    /* Counters */
    Py_ssize_t c_switches, c_spawned;
    /* Chan */
    Py_ssize_t ch_buf, ch_closed, ch_dataqsiz, ch_lock, ch_recvq, ch_sendq;
} off;

static PyTypeObject *G_type, *sudog_type, *P_type, *M_type, *Chan_type, *SyscallReq_type;
static PyTypeObject *Lock_type;   /* _thread.lock */
static PyTypeObject *deque_type;  /* collections.deque */
static PyObject *deque_popleft, *deque_append, *deque_extend;  /* method descriptors */

/* Python objects and callbacks handed over by bind(). */
static PyObject *PARK, *GOSCHED, *PREEMPT, *ChanClosedError, *abortChan, *hlock;
static PyObject *waitReasonChanSend, *waitReasonChanReceive, *waitReasonZero;
static PyObject *py_reacquirep, *py_checkTimers, *py_findrunnable_fast, *py_resetspinning,
    *py_goexit, *py_park_m, *py_ready_interrupted, *py_gosched_m, *py_abandon, *py_wakep,
    *py_syscall_m, *py_foreign_yield_error, *py_newgoid, *py_go_slow;
static PyObject *st_runnable, *st_running, *st_waiting, *st_dead;  /* small ints */
static PyObject *ZERO_OBJ, *ONE;

/* The M of the calling thread (Go's getg().m; runtime2.setm keeps it). */
static _Thread_local PyObject *tls_m = NULL;

/* ---------------------------------------------------------------------------
 * _thread.lock and deque internals (checked by check_layout) */

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock_lock;
    PyObject *in_weakreflist;
    char locked;
} lockobject;

static inline void
lock(PyObject *l)
{
    lockobject *lo = (lockobject *)l;
    if (!PyThread_acquire_lock_timed(lo->lock_lock, 0, 0)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock_timed(lo->lock_lock, -1, 0);
        Py_END_ALLOW_THREADS
    }
    lo->locked = 1;
}

static inline void
unlock(PyObject *l)
{
    lockobject *lo = (lockobject *)l;
    lo->locked = 0;
    PyThread_release_lock(lo->lock_lock);
}

/* Release a park's waitlock: a _thread.lock directly, anything else by its method. */
static int
release_any(PyObject *l)
{
    if (Py_IS_TYPE(l, Lock_type)) {
        unlock(l);
        return 0;
    }
    PyObject *r = PyObject_CallMethod(l, "release", NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

#define QLEN(q) Py_SIZE(q)  /* a deque keeps its length in ob_size */

static inline PyObject *
q_popleft(PyObject *q)
{
    return PyObject_Vectorcall(deque_popleft, &q, 1, NULL);
}

static inline int
q_append(PyObject *q, PyObject *v)
{
    PyObject *args[2] = {q, v};
    PyObject *r = PyObject_Vectorcall(deque_append, args, 2, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *
check_layout(PyObject *self, PyObject *noargs)
{
    PyObject *thread = PyImport_ImportModule("_thread");
    if (thread == NULL)
        return NULL;
    PyObject *l = PyObject_CallMethod(thread, "allocate_lock", NULL);
    Py_DECREF(thread);
    if (l == NULL)
        return NULL;
    int ok = Py_TYPE(l)->tp_basicsize >= (Py_ssize_t)sizeof(lockobject);
    if (ok) {
        PyObject *r = PyObject_CallMethod(l, "acquire", NULL);
        Py_XDECREF(r);
        ok = r != NULL && ((lockobject *)l)->locked == 1;
        r = PyObject_CallMethod(l, "release", NULL);
        Py_XDECREF(r);
        ok = ok && r != NULL && ((lockobject *)l)->locked == 0;
    }
    if (ok) {
        unlock((lock(l), l));  /* the direct path, then the method sees it free */
        PyObject *r = PyObject_CallMethod(l, "locked", NULL);
        ok = r == Py_False;
        Py_XDECREF(r);
    }
    Lock_type = Py_TYPE(l);
    Py_INCREF(Lock_type);
    Py_DECREF(l);
    if (!ok) {
        PyErr_SetString(PyExc_ImportError, "unexpected _thread.lock layout");
        return NULL;
    }
    PyObject *d = PyObject_CallFunction((PyObject *)deque_type, "((iii))", 1, 2, 3);
    if (d == NULL)
        return NULL;
    ok = QLEN(d) == 3;
    Py_DECREF(d);
    if (!ok) {
        PyErr_SetString(PyExc_ImportError, "unexpected deque layout");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------
 * g and sudog: Go's records (runtime2.go) as C structs. runtime2.G (and its base
 * GHandle) subclass g with no slots of their own, and runtime2.sudog is sudog, when
 * the core is in use; the pure runtime declares the same fields as __slots__. The
 * fields are object pointers either way, so the code below reaches them by the
 * member offsets bind() reads, whichever implementation defined them. */

typedef struct {
    PyObject_HEAD
    /* GHandle's part: the outcome and the handle's state */
    PyObject *goid, *status, *preempt, *_result, *_exc, *_waiters, *_cancelreq, *_throwexc;
    /* the scheduler's part */
    PyObject *coro, *ctx, *exc, *m, *param, *sched, *timer, *waitabort, *waiting, *waitlock,
        *waitreason, *waitunlockf;
    PyObject *weakreflist;
} gobject;

#define G_MEMBER(name, doc) {#name, T_OBJECT_EX, offsetof(gobject, name), 0, doc}

static PyMemberDef g_members[] = {
    G_MEMBER(goid, "The goroutine id."),
    G_MEMBER(status, "_Grunnable, _Grunning, ... (Go's values)."),
    G_MEMBER(preempt, "Yield at the next trap (sysmon, cancel, throw)."),
    G_MEMBER(_result, "The return value once dead."),
    G_MEMBER(_exc, "The escaping exception once dead."),
    G_MEMBER(_waiters, "Gs, thread locks and callbacks waiting for the G, or None."),
    G_MEMBER(_cancelreq, "GHandle.cancel() was called."),
    G_MEMBER(_throwexc, "GHandle.throw()'s exception until delivered."),
    G_MEMBER(coro, "The G's coroutine."),
    G_MEMBER(ctx, "The G's contextvars.Context."),
    G_MEMBER(exc, "An exception to throw into the G at its next resume."),
    G_MEMBER(m, "The M running the G, or None."),
    G_MEMBER(param, "What a waker hands the G (Go's gp.param)."),
    G_MEMBER(sched, "The runtime's schedt."),
    G_MEMBER(timer, "The G's sleep timer."),
    G_MEMBER(waitabort, "How GHandle.cancel pulls the parked G off its wait queue."),
    G_MEMBER(waiting, "What the G is parked on (Go's gp.waiting)."),
    G_MEMBER(waitlock, "gopark's lock, released once the G waits."),
    G_MEMBER(waitreason, "Go's waitReason string."),
    G_MEMBER(waitunlockf, "gopark's unlockf, run once the G waits."),
    {NULL}};

#define G_FIELDS(X)                                                                         \
    X(goid) X(status) X(preempt) X(_result) X(_exc) X(_waiters) X(_cancelreq) X(_throwexc)   \
    X(coro) X(ctx) X(exc) X(m) X(param) X(sched) X(timer) X(waitabort) X(waiting)           \
    X(waitlock) X(waitreason) X(waitunlockf)

static int
g_traverse(gobject *g, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(g->f);
    G_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int
g_clear(gobject *g)
{
#define CLEAR(f) Py_CLEAR(g->f);
    G_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void
g_dealloc(gobject *g)
{
    PyObject_GC_UnTrack(g);
    if (g->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)g);
    g_clear(g);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static PyTypeObject g_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gmpworker._core.g",
    .tp_basicsize = sizeof(gobject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Go's g (runtime2.go) as a C struct: the base of runtime2.GHandle and G.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)g_dealloc,
    .tp_traverse = (traverseproc)g_traverse,
    .tp_clear = (inquiry)g_clear,
    .tp_weaklistoffset = offsetof(gobject, weakreflist),
    .tp_members = g_members,
};

typedef struct {
    PyObject_HEAD
    PyObject *g, *elem, *c, *isSelect, *seldone, *success;
} sudogobject;

static PyMemberDef sudog_members[] = {
    {"g", T_OBJECT_EX, offsetof(sudogobject, g), 0, "The waiting G."},
    {"elem", T_OBJECT_EX, offsetof(sudogobject, elem), 0, "The value sent or received."},
    {"c", T_OBJECT_EX, offsetof(sudogobject, c), 0, "The channel."},
    {"isSelect", T_OBJECT_EX, offsetof(sudogobject, isSelect), 0, "Part of a select."},
    {"seldone", T_OBJECT_EX, offsetof(sudogobject, seldone), 0,
     "The select's selectDone word: a list, non-empty while nobody won the select."},
    {"success", T_OBJECT_EX, offsetof(sudogobject, success), 0,
     "The wake-up came from a send/receive (False: from close)."},
    {NULL}};

static int
sudog_traverse(sudogobject *sg, visitproc visit, void *arg)
{
    Py_VISIT(sg->g);
    Py_VISIT(sg->elem);
    Py_VISIT(sg->c);
    Py_VISIT(sg->seldone);
    return 0;
}

static int
sudog_clear(sudogobject *sg)
{
    Py_CLEAR(sg->g);
    Py_CLEAR(sg->elem);
    Py_CLEAR(sg->c);
    Py_CLEAR(sg->isSelect);
    Py_CLEAR(sg->seldone);
    Py_CLEAR(sg->success);
    return 0;
}

static void
sudog_dealloc(sudogobject *sg)
{
    PyObject_GC_UnTrack(sg);
    sudog_clear(sg);
    Py_TYPE(sg)->tp_free((PyObject *)sg);
}

/* sudog(g, elem, c, isSelect, seldone), as runtime2.sudog's constructor. */
static PyObject *
sudog_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"g", "elem", "c", "isSelect", "seldone", NULL};
    PyObject *g, *elem, *c, *isSelect, *seldone;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO:sudog", kwlist, &g, &elem, &c,
                                     &isSelect, &seldone))
        return NULL;
    sudogobject *sg = (sudogobject *)type->tp_alloc(type, 0);
    if (sg == NULL)
        return NULL;
    sg->g = Py_NewRef(g);
    sg->elem = Py_NewRef(elem);
    sg->c = Py_NewRef(c);
    sg->isSelect = Py_NewRef(isSelect);
    sg->seldone = Py_NewRef(seldone);
    sg->success = Py_NewRef(Py_False);
    return (PyObject *)sg;
}

static PyTypeObject sudog_ctype = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gmpworker._core.sudog",
    .tp_basicsize = sizeof(sudogobject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Go's sudog (runtime2.go) as a C struct: a G waiting on one channel.\n\n"
              "sudog(g, elem, c, isSelect, seldone); one per channel a G waits on.",
    .tp_new = sudog_new,
    .tp_dealloc = (destructor)sudog_dealloc,
    .tp_traverse = (traverseproc)sudog_traverse,
    .tp_clear = (inquiry)sudog_clear,
    .tp_members = sudog_members,
};

/* ---------------------------------------------------------------------------
 * runq: the local run queue of a P (Go's runq [256]guintptr, runqhead, runqtail,
 * runnext). Owned by the P's M; thieves take from it under the GIL. */

typedef struct {
    PyObject_HEAD
    uint32_t head, tail;
    PyObject *runnext;
    PyObject *ring[LOCAL_RUNQ_CAP];
} runqobject;

static PyTypeObject runq_type;

static inline uint32_t
rq_len(runqobject *q)
{
    return q->tail - q->head;
}

static inline void
rq_push(runqobject *q, PyObject *gp) /* steals a reference; caller checked room */
{
    q->ring[q->tail % LOCAL_RUNQ_CAP] = gp;
    q->tail++;
}

static inline PyObject *
rq_pop(runqobject *q) /* new reference or NULL */
{
    if (q->head == q->tail)
        return NULL;
    PyObject *gp = q->ring[q->head % LOCAL_RUNQ_CAP];
    q->ring[q->head % LOCAL_RUNQ_CAP] = NULL;
    q->head++;
    return gp;
}

static inline runqobject *
runqof(PyObject *pp)
{
    return (runqobject *)SLOT(pp, off.p_runq);
}

static int
runq_traverse(runqobject *q, visitproc visit, void *arg)
{
    Py_VISIT(q->runnext);
    for (uint32_t i = q->head; i != q->tail; i++)
        Py_VISIT(q->ring[i % LOCAL_RUNQ_CAP]);
    return 0;
}

static int
runq_clear(runqobject *q)
{
    Py_CLEAR(q->runnext);
    PyObject *gp;
    while ((gp = rq_pop(q)) != NULL)
        Py_DECREF(gp);
    return 0;
}

static void
runq_dealloc(runqobject *q)
{
    PyObject_GC_UnTrack(q);
    runq_clear(q);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

static PyObject *
runq_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "runq() takes no arguments");
        return NULL;
    }
    runqobject *q = (runqobject *)type->tp_alloc(type, 0);
    return (PyObject *)q;
}

static Py_ssize_t
runq_length(runqobject *q)
{
    return rq_len(q);
}

static PyObject *
runq_append(runqobject *q, PyObject *gp)
{
    if (rq_len(q) >= LOCAL_RUNQ_CAP) {
        PyErr_SetString(PyExc_OverflowError, "local run queue is full");
        return NULL;
    }
    Py_INCREF(gp);
    rq_push(q, gp);
    Py_RETURN_NONE;
}

static PyObject *
runq_extend(runqobject *q, PyObject *iterable)
{
    PyObject *it = PyObject_GetIter(iterable), *gp;
    if (it == NULL)
        return NULL;
    while ((gp = PyIter_Next(it)) != NULL) {
        if (rq_len(q) >= LOCAL_RUNQ_CAP) {
            Py_DECREF(gp);
            Py_DECREF(it);
            PyErr_SetString(PyExc_OverflowError, "local run queue is full");
            return NULL;
        }
        rq_push(q, gp);
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
runq_get_runnext(runqobject *q, void *closure)
{
    return Py_NewRef(q->runnext != NULL ? q->runnext : Py_None);
}

static PyMethodDef runq_methods[] = {
    {"append", (PyCFunction)runq_append, METH_O, "Put a G at the ring's tail (there must be room)."},
    {"extend", (PyCFunction)runq_extend, METH_O, "Put Gs at the ring's tail (runqsteal's batch)."},
    {NULL}};

static PyGetSetDef runq_getset[] = {
    {"runnext", (getter)runq_get_runnext, NULL, "The G in runnext, or None.", NULL}, {NULL}};

static PySequenceMethods runq_as_sequence = {.sq_length = (lenfunc)runq_length};

static PyTypeObject runq_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gmpworker._core.runq",
    .tp_basicsize = sizeof(runqobject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A P's local run queue: Go's 256-slot ring (runqhead, runqtail) and runnext.\n"
              "len() is the ring's length (runnext excluded), as Go's runqsize.",
    .tp_new = runq_new,
    .tp_dealloc = (destructor)runq_dealloc,
    .tp_traverse = (traverseproc)runq_traverse,
    .tp_clear = (inquiry)runq_clear,
    .tp_as_sequence = &runq_as_sequence,
    .tp_methods = runq_methods,
    .tp_getset = runq_getset,
};

static int
check_p(PyObject *pp)
{
    if (!PyObject_TypeCheck(pp, P_type) || !Py_IS_TYPE(SLOT(pp, off.p_runq), &runq_type)) {
        PyErr_SetString(PyExc_TypeError, "expected a P with a native run queue");
        return -1;
    }
    return 0;
}

static int
check_g(PyObject *gp)
{
    if (!PyObject_TypeCheck(gp, G_type)) {
        PyErr_Format(PyExc_TypeError, "expected a G, got %.100s", Py_TYPE(gp)->tp_name);
        return -1;
    }
    return 0;
}

/* globrunqputbatch under sched.lock. Steals the reference to batch. */
static int
globrunqputbatch(PyObject *sched, PyObject *batch)
{
    PyObject *lk = getf(sched, off.s_lock);
    lock(lk);
    PyObject *args[2] = {getf(sched, off.s_runq), batch};
    PyObject *r = PyObject_Vectorcall(deque_extend, args, 2, NULL);
    unlock(lk);
    Py_DECREF(batch);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* Mirrors runtime.runqputslow: half of the ring plus gp to the global queue. Steals gp. */
static int
runqputslow_c(PyObject *pp, runqobject *q, PyObject *gp)
{
    uint32_t n = rq_len(q) / 2;
    PyObject *batch = PyList_New(0);
    if (batch == NULL) {
        Py_DECREF(gp);
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        PyObject *g = rq_pop(q);
        if (g == NULL)
            break;
        int rc = PyList_Append(batch, g);
        Py_DECREF(g);
        if (rc < 0) {
            Py_DECREF(gp);
            Py_DECREF(batch);
            return -1;
        }
    }
    int rc = PyList_Append(batch, gp);
    Py_DECREF(gp);
    if (rc < 0) {
        Py_DECREF(batch);
        return -1;
    }
    return globrunqputbatch(getf(pp, off.p_sched), batch);
}

/* Mirrors runtime.runqput: runnext (kicking the old one to the tail) or the tail. Steals gp. */
static int
runqput_c(PyObject *pp, PyObject *gp, int next)
{
    runqobject *q = runqof(pp);
    if (next) {
        PyObject *old = q->runnext;
        q->runnext = gp;
        if (old == NULL)
            return 0;
        gp = old;
    }
    if (rq_len(q) < LOCAL_RUNQ_CAP) {
        rq_push(q, gp);
        return 0;
    }
    return runqputslow_c(pp, q, gp);
}

static PyObject *
runqput(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "runqput(pp, gp, next)");
        return NULL;
    }
    if (check_p(args[0]) < 0 || check_g(args[1]) < 0)
        return NULL;
    int next = PyObject_IsTrue(args[2]);
    if (next < 0 || runqput_c(args[0], Py_NewRef(args[1]), next) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
runqget(PyObject *self, PyObject *pp)
{
    if (check_p(pp) < 0)
        return NULL;
    runqobject *q = runqof(pp);
    PyObject *gp = q->runnext;
    if (gp != NULL) {
        q->runnext = NULL;
        return Py_BuildValue("(NO)", gp, Py_True);
    }
    gp = rq_pop(q);
    if (gp != NULL)
        return Py_BuildValue("(NO)", gp, Py_False);
    return Py_BuildValue("(OO)", Py_None, Py_False);
}

static PyObject *
runqempty(PyObject *self, PyObject *pp)
{
    if (check_p(pp) < 0)
        return NULL;
    runqobject *q = runqof(pp);
    return PyBool_FromLong(q->head == q->tail && q->runnext == NULL);
}

static PyObject *
runqsize(PyObject *self, PyObject *pp)
{
    if (check_p(pp) < 0)
        return NULL;
    runqobject *q = runqof(pp);
    return PyLong_FromLong((long)rq_len(q) + (q->runnext != NULL));
}

/* Mirrors runtime.runqgrab: half the ring (rounded up), or runnext if the ring is empty. */
static PyObject *
runqgrab(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "runqgrab(pp, stealRunNextG)");
        return NULL;
    }
    PyObject *pp = args[0];
    if (check_p(pp) < 0)
        return NULL;
    int stealRunNextG = PyObject_IsTrue(args[1]);
    if (stealRunNextG < 0)
        return NULL;
    runqobject *q = runqof(pp);
    PyObject *batch = PyList_New(0);
    if (batch == NULL)
        return NULL;
    uint32_t n = rq_len(q);
    n -= n / 2;
    if (n == 0) {
        PyObject *nxt = q->runnext;
        if (!stealRunNextG || nxt == NULL)
            return batch;
        if (PyLong_AsLong(getf(pp, off.p_status)) == Prunning) {
            /* Go sleeps 3 us so a communicating pair is not split; yield the GIL. */
            Py_INCREF(nxt);
            Py_BEGIN_ALLOW_THREADS
            sched_yield();
            Py_END_ALLOW_THREADS
            Py_DECREF(nxt);  /* still referenced by the G's owner (allgs) */
        }
        if (q->runnext != nxt)  /* runnext.cas(next, 0) failed */
            return batch;
        q->runnext = NULL;
        int rc = PyList_Append(batch, nxt);
        Py_DECREF(nxt);
        if (rc < 0) {
            Py_DECREF(batch);
            return NULL;
        }
        return batch;
    }
    for (uint32_t i = 0; i < n; i++) {
        PyObject *g = rq_pop(q);
        if (g == NULL)
            break;
        int rc = PyList_Append(batch, g);
        Py_DECREF(g);
        if (rc < 0) {
            Py_DECREF(batch);
            return NULL;
        }
    }
    return batch;
}

/* ---------------------------------------------------------------------------
 * goready, newproc, go, goexit */

static int
maybe_wakep(PyObject *sched)
{
    if (is_true(getf(sched, off.s_npidle)) && !is_true(getf(sched, off.s_nmspinning))) {
        PyObject *r = PyObject_CallOneArg(py_wakep, sched);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* Mirrors runtime.goready/ready: runnext of the caller's P, or the global queue. */
static int
goready_c(PyObject *gp, PyObject *pp)
{
    setf(gp, off.g_status, st_runnable);
    PyObject *sched = getf(gp, off.g_sched);
    if (pp == Py_None) {
        PyObject *lk = getf(sched, off.s_lock);
        lock(lk);
        int rc = q_append(getf(sched, off.s_runq), gp);
        unlock(lk);
        if (rc < 0)
            return -1;
    }
    else if (runqput_c(pp, Py_NewRef(gp), 1) < 0)
        return -1;
    return maybe_wakep(sched);
}

static PyObject *
goready(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "goready(gp, pp)");
        return NULL;
    }
    if (check_g(args[0]) < 0 || (args[1] != Py_None && check_p(args[1]) < 0))
        return NULL;
    if (goready_c(args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static inline int
counter_add(PyObject *counters, Py_ssize_t offset, long delta)
{
    long v = PyLong_AsLong(getf(counters, offset));
    PyObject *n = PyLong_FromLong(v + delta);
    if (n == NULL)
        return -1;
    PyObject *old = SLOT(counters, offset);
    SLOT(counters, offset) = n;
    Py_XDECREF(old);
    return 0;
}

/* newproc1's allocation: a G with every field G.__init__ sets (runtime2.G). */
static PyObject *
newg(PyObject *sched, PyObject *goid, PyObject *coro)
{
    PyObject *ctx = PyContext_CopyCurrent();
    if (ctx == NULL)
        return NULL;
    PyObject *gp = G_type->tp_alloc(G_type, 0);
    if (gp == NULL) {
        Py_DECREF(ctx);
        return NULL;
    }
    SLOT(gp, off.g_ctx) = ctx;
    setf(gp, off.g_sched, sched);
    setf(gp, off.g_goid, goid);
    setf(gp, off.g_coro, coro);
    setf(gp, off.g_status, st_runnable);
    setf(gp, off.g_waitreason, waitReasonZero);
    setf(gp, off.g_preempt, Py_False);
    setf(gp, off.g_cancelreq, Py_False);
    Py_ssize_t nones[] = {off.g_m,        off.g_param,    off.g_exc,      off.g_waitlock,
                          off.g_waitunlockf, off.g_waitabort, off.g_timer, off.g_waiting,
                          off.g_result,   off.g_exc_,     off.g_waiters,  off.g_throwexc};
    for (size_t i = 0; i < sizeof(nones) / sizeof(nones[0]); i++)
        setf(gp, nones[i], Py_None);
    return gp;
}

/* Mirrors runtime.newproc: a new G in pp's runnext (or the global queue), then wakep. */
static PyObject *
newproc_c(PyObject *sched, PyObject *coro, PyObject *pp)
{
    PyObject *goid;
    if (pp != Py_None && PyObject_RichCompareBool(getf(pp, off.p_goidcache),
                                                  getf(pp, off.p_goidcacheend), Py_NE) == 1) {
        goid = Py_NewRef(getf(pp, off.p_goidcache));
        PyObject *nxt = PyNumber_Add(goid, ONE);
        if (nxt == NULL) {
            Py_DECREF(goid);
            return NULL;
        }
        PyObject *old = SLOT(pp, off.p_goidcache);
        SLOT(pp, off.p_goidcache) = nxt;
        Py_XDECREF(old);
    }
    else {
        goid = PyObject_CallFunctionObjArgs(py_newgoid, sched, pp, NULL);
        if (goid == NULL)
            return NULL;
    }
    PyObject *gp = newg(sched, goid, coro);
    if (gp == NULL || PyDict_SetItem(getf(sched, off.s_allgs), goid, gp) < 0) {
        Py_DECREF(goid);
        Py_XDECREF(gp);
        return NULL;
    }
    Py_DECREF(goid);
    if (counter_add(getf(sched, off.s_counters), off.c_spawned, 1) < 0)
        goto fail;
    if (pp != Py_None) {
        if (runqput_c(pp, Py_NewRef(gp), 1) < 0)
            goto fail;
    }
    else {
        PyObject *lk = getf(sched, off.s_lock);
        lock(lk);
        int rc = q_append(getf(sched, off.s_runq), gp);
        unlock(lk);
        if (rc < 0)
            goto fail;
    }
    if (getf(sched, off.s_mainStarted) == Py_True && maybe_wakep(sched) < 0)
        goto fail;
    return gp;
fail:
    Py_DECREF(gp);
    return NULL;
}

static PyObject *
newproc(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "newproc(sched, coro, pp)");
        return NULL;
    }
    if (args[2] != Py_None && check_p(args[2]) < 0)
        return NULL;
    return newproc_c(args[0], args[1], args[2]);
}

/* go(fn, *args, **kwargs): the async-def fast path of runtime.go in C; anything else
 * (a plain callable, a coroutine object, no current G) goes to the Python go. */
static PyObject *
go(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *m = tls_m;
    if (nargs < 1 || m == NULL || !PyFunction_Check(args[0]) ||
        !(((PyCodeObject *)PyFunction_GET_CODE(args[0]))->co_flags & CO_COROUTINE) ||
        getf(m, off.m_curg) == Py_None)
        return PyObject_Vectorcall(py_go_slow, args, nargsf, kwnames);
    PyObject *coro = PyObject_Vectorcall(args[0], args + 1, nargs - 1, kwnames);
    if (coro == NULL)
        return NULL;
    if (!PyCoro_CheckExact(coro)) {
        /* an async def whose result is not a coroutine (decorated): let Python judge it */
        Py_DECREF(coro);
        return PyObject_Vectorcall(py_go_slow, args, nargsf, kwnames);
    }
    PyObject *gp = getf(m, off.m_curg);
    PyObject *gp2 = newproc_c(getf(gp, off.g_sched), coro, getf(m, off.m_p));
    Py_DECREF(coro);
    return gp2;
}

/* goexit's common case (runtime.goexit1/goexit0): a G that returned, is not G1 of
 * run(), and nobody waits on its handle. Returns 1 if done, 0 to use proc.goexit. */
static int
goexit_fast(PyObject *m, PyObject *gp, PyObject *result)
{
    PyObject *sched = getf(gp, off.g_sched);
    if (getf(gp, off.g_waiters) != Py_None ||
        (getf(sched, off.s_islibrary) != Py_True &&
         PyObject_RichCompareBool(getf(gp, off.g_goid), ONE, Py_EQ) == 1))
        return 0;
    setf(m, off.m_curg, Py_None);
    PyObject *allgs = getf(sched, off.s_allgs), *goid = getf(gp, off.g_goid);
    PyObject *v = PyDict_GetItemWithError(allgs, goid);
    if (v == NULL ? PyErr_Occurred() != NULL : PyDict_DelItem(allgs, goid) < 0)
        return -1;
    /* _gfree: drop what a dead G no longer needs, so no cycle survives it */
    Py_ssize_t clear[] = {off.g_m,      off.g_coro,  off.g_ctx,   off.g_waiting,
                          off.g_timer,  off.g_param, off.g_throwexc};
    for (size_t i = 0; i < sizeof(clear) / sizeof(clear[0]); i++)
        setf(gp, clear[i], Py_None);
    /* _complete under _hlock; a waiter that appeared meanwhile goes the slow way */
    lock(hlock);
    PyObject *ws = Py_NewRef(getf(gp, off.g_waiters));
    setf(gp, off.g_result, result);
    setf(gp, off.g_exc_, Py_None);
    setf(gp, off.g_status, st_dead);
    setf(gp, off.g_waiters, Py_None);
    unlock(hlock);
    if (ws == Py_None) {
        Py_DECREF(ws);
        return 1;
    }
    /* Rare: someone started waiting after the check above; wake them as _complete does. */
    PyObject *r = PyObject_CallMethod(gp, "_wake", "OO", ws, getf(m, off.m_p));
    Py_DECREF(ws);
    Py_XDECREF(r);
    return r == NULL ? -1 : 1;
}

/* ---------------------------------------------------------------------------
 * Channel operations (chan.go chansend/chanrecv with block=true) as awaitables.
 *
 * ``ch.send(v)`` returns a chanop; ``await`` drives it through am_send. The first
 * step does the whole locked part of chansend/chanrecv: a waiting partner gets the
 * value directly and goes to this P's runnext (goready), a buffer is used if it
 * can be, and only otherwise is a sudog queued and PARK yielded to the M (the
 * channel lock stays held until the M commits the park, as gopark(chanparkcommit)).
 * The step after the wake-up reads the outcome from the sudog. */

enum { OP_SEND, OP_RECV, OP_RECV2, OP_ANEXT };
enum { ST_START, ST_PARKED, ST_PREEMPTED, ST_DONE };

typedef struct {
    PyObject_HEAD
    int kind, state;
    PyObject *c;   /* the channel */
    PyObject *v;   /* the value to send; then the result held over a preemption */
    PyObject *sg;  /* the sudog while parked */
} chanop;

static PyTypeObject chanop_type;

static int
chanop_traverse(chanop *op, visitproc visit, void *arg)
{
    Py_VISIT(op->c);
    Py_VISIT(op->v);
    Py_VISIT(op->sg);
    return 0;
}

static int
chanop_clear(chanop *op)
{
    Py_CLEAR(op->c);
    Py_CLEAR(op->v);
    Py_CLEAR(op->sg);
    return 0;
}

static void
chanop_dealloc(chanop *op)
{
    PyObject_GC_UnTrack(op);
    chanop_clear(op);
    PyObject_GC_Del(op);
}

static PyObject *
chanop_new(PyObject *c, int kind, PyObject *v)
{
    chanop *op = PyObject_GC_New(chanop, &chanop_type);
    if (op == NULL)
        return NULL;
    op->kind = kind;
    op->state = ST_START;
    op->c = Py_NewRef(c);
    op->v = Py_XNewRef(v);
    op->sg = NULL;
    PyObject_GC_Track(op);
    return (PyObject *)op;
}

/* Pop the first sudog whose G can still be woken (waitq.dequeue: a select sudog
 * only if this call wins its selectDone word). New reference or NULL (none; or an
 * error, then PyErr_Occurred). */
static PyObject *
dequeue(PyObject *q)
{
    while (QLEN(q) > 0) {
        PyObject *sg = q_popleft(q);
        if (sg == NULL)
            return NULL;
        if (getf(sg, off.sg_isSelect) == Py_True) {
            PyObject *done = getf(sg, off.sg_seldone);
            Py_ssize_t n = PyList_GET_SIZE(done);
            if (n == 0) {  /* another case of that select already won */
                Py_DECREF(sg);
                continue;
            }
            if (PyList_SetSlice(done, n - 1, n, NULL) < 0) {
                Py_DECREF(sg);
                return NULL;
            }
        }
        return sg;
    }
    return NULL;
}

/* The G's reusable sudog for a plain channel wait (acquireSudog's cache), set up. */
static PyObject *
parkon(PyObject *gp, PyObject *c, PyObject *elem, PyObject *reason)
{
    PyObject *sg = getf(gp, off.g_waiting);
    if (Py_IS_TYPE(sg, sudog_type) && getf(sg, off.sg_isSelect) != Py_True) {
        Py_INCREF(sg);
        setf(sg, off.sg_elem, elem);
        setf(sg, off.sg_c, c);
        setf(sg, off.sg_success, Py_False);
    }
    else {
        sg = sudog_type->tp_alloc(sudog_type, 0);
        if (sg == NULL)
            return NULL;
        setf(sg, off.sg_g, gp);
        setf(sg, off.sg_elem, elem);
        setf(sg, off.sg_c, c);
        setf(sg, off.sg_isSelect, Py_False);
        setf(sg, off.sg_seldone, Py_None);
        setf(sg, off.sg_success, Py_False);
        setf(gp, off.g_waiting, sg);
    }
    setf(gp, off.g_waitreason, reason);
    setf(gp, off.g_waitlock, getf(c, off.ch_lock));
    setf(gp, off.g_waitabort, abortChan);
    return sg;
}

static PySendResult
op_error(PyObject *exc, const char *msg)
{
    PyErr_SetString(exc, msg);
    return PYGEN_ERROR;
}

/* The result of a completed receive, shaped for the operation. */
static PyObject *
recv_result(int kind, PyObject *v, int ok)
{
    if (kind == OP_RECV2)
        return Py_BuildValue("(OO)", v, ok ? Py_True : Py_False);
    if (kind == OP_ANEXT && !ok) {
        PyErr_SetNone(PyExc_StopAsyncIteration);
        return NULL;
    }
    return Py_NewRef(v);
}

/* Finish a step that completed at once: return, unless sysmon asked this G to yield
 * (g.preempt), in which case the result is held over one PREEMPT trap. */
static PySendResult
op_done(chanop *op, PyObject *gp, PyObject *res, PyObject **result)
{
    if (res == NULL)
        return PYGEN_ERROR;
    if (getf(gp, off.g_preempt) == Py_True) {
        Py_XSETREF(op->v, res);
        op->state = ST_PREEMPTED;
        *result = Py_NewRef(PREEMPT);
        return PYGEN_NEXT;
    }
    op->state = ST_DONE;
    *result = res;
    return PYGEN_RETURN;
}

static PySendResult
op_park(chanop *op, PyObject *gp, PyObject *q, PyObject *elem, PyObject *reason,
        PyObject **result)
{
    PyObject *sg = parkon(gp, op->c, elem, reason);
    if (sg == NULL || q_append(q, sg) < 0) {
        Py_XDECREF(sg);
        unlock(getf(op->c, off.ch_lock));
        return PYGEN_ERROR;
    }
    Py_XSETREF(op->sg, sg);
    op->state = ST_PARKED;
    *result = Py_NewRef(PARK);  /* the M releases the channel lock once the G waits */
    return PYGEN_NEXT;
}

/* Mirrors runtime.chansend's locked part (block=true). */
static PySendResult
chansend_step(chanop *op, PyObject *m, PyObject *gp, PyObject **result)
{
    PyObject *c = op->c, *lk = getf(c, off.ch_lock);
    lock(lk);
    if (getf(c, off.ch_closed) == Py_True) {
        unlock(lk);
        PyErr_SetString(ChanClosedError, "send on closed channel");
        return PYGEN_ERROR;
    }
    PyObject *sg = dequeue(getf(c, off.ch_recvq));
    if (sg != NULL) {  /* send(): hand the value to the waiting receiver */
        unlock(lk);
        setf(sg, off.sg_elem, op->v);
        setf(sg, off.sg_success, Py_True);
        PyObject *rg = Py_NewRef(getf(sg, off.sg_g));
        setf(rg, off.g_param, sg);
        Py_DECREF(sg);
        int rc = goready_c(rg, getf(m, off.m_p));
        Py_DECREF(rg);
        return op_done(op, gp, rc < 0 ? NULL : Py_NewRef(Py_None), result);
    }
    if (PyErr_Occurred()) {
        unlock(lk);
        return PYGEN_ERROR;
    }
    PyObject *buf = getf(c, off.ch_buf);
    if (QLEN(buf) < PyLong_AsSsize_t(getf(c, off.ch_dataqsiz))) {
        int rc = q_append(buf, op->v);
        unlock(lk);
        return op_done(op, gp, rc < 0 ? NULL : Py_NewRef(Py_None), result);
    }
    return op_park(op, gp, getf(c, off.ch_sendq), op->v, waitReasonChanSend, result);
}

/* Mirrors runtime.recv: take the parked sender's value, or rotate a full buffer. */
static PyObject *
recvFromSender(PyObject *c, PyObject *sg)
{
    PyObject *v;
    if (PyLong_AsSsize_t(getf(c, off.ch_dataqsiz)) == 0)
        v = Py_NewRef(getf(sg, off.sg_elem));
    else {
        PyObject *buf = getf(c, off.ch_buf);
        v = q_popleft(buf);
        if (v == NULL || q_append(buf, getf(sg, off.sg_elem)) < 0) {
            Py_XDECREF(v);
            return NULL;
        }
    }
    setf(sg, off.sg_elem, Py_None);
    setf(sg, off.sg_success, Py_True);
    setf(getf(sg, off.sg_g), off.g_param, sg);
    return v;
}

/* Mirrors runtime.chanrecv's locked part (block=true). */
static PySendResult
chanrecv_step(chanop *op, PyObject *m, PyObject *gp, PyObject **result)
{
    PyObject *c = op->c, *lk = getf(c, off.ch_lock), *buf = getf(c, off.ch_buf);
    lock(lk);
    if (getf(c, off.ch_closed) == Py_True && QLEN(buf) == 0) {
        unlock(lk);
        return op_done(op, gp, recv_result(op->kind, Py_None, 0), result);
    }
    PyObject *sg = dequeue(getf(c, off.ch_sendq));
    if (sg != NULL) {
        PyObject *v = recvFromSender(c, sg);
        unlock(lk);
        PyObject *sgg = Py_NewRef(getf(sg, off.sg_g));
        Py_DECREF(sg);
        int rc = v == NULL ? -1 : goready_c(sgg, getf(m, off.m_p));
        Py_DECREF(sgg);
        PyObject *res = rc < 0 ? NULL : recv_result(op->kind, v, 1);
        Py_XDECREF(v);
        return op_done(op, gp, res, result);
    }
    if (PyErr_Occurred()) {
        unlock(lk);
        return PYGEN_ERROR;
    }
    if (QLEN(buf) > 0) {
        PyObject *v = q_popleft(buf);
        unlock(lk);
        PyObject *res = v == NULL ? NULL : recv_result(op->kind, v, 1);
        Py_XDECREF(v);
        return op_done(op, gp, res, result);
    }
    return op_park(op, gp, getf(c, off.ch_recvq), Py_None, waitReasonChanReceive, result);
}

/* After the wake-up: the outcome is in the sudog (success, elem). */
static PySendResult
chanop_woken(chanop *op, PyObject **result)
{
    PyObject *sg = op->sg;
    int ok = getf(sg, off.sg_success) == Py_True;
    op->state = ST_DONE;
    if (op->kind == OP_SEND) {
        if (!ok) {
            PyErr_SetString(ChanClosedError, "send on closed channel");
            return PYGEN_ERROR;
        }
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    PyObject *v = Py_NewRef(getf(sg, off.sg_elem));
    setf(sg, off.sg_elem, Py_None);
    *result = recv_result(op->kind, v, ok);
    Py_DECREF(v);
    return *result == NULL ? PYGEN_ERROR : PYGEN_RETURN;
}

static PySendResult
chanop_am_send(chanop *op, PyObject *arg, PyObject **result)
{
    *result = NULL;
    switch (op->state) {
    case ST_START: {
        PyObject *m = tls_m;
        PyObject *gp = m != NULL ? getf(m, off.m_curg) : Py_None;
        if (gp == Py_None)
            return op_error(PyExc_RuntimeError, op->kind == OP_SEND
                ? "a blocking channel send must run inside a goroutine"
                : "a blocking channel receive must run inside a goroutine");
        if (op->kind == OP_SEND)
            return chansend_step(op, m, gp, result);
        return chanrecv_step(op, m, gp, result);
    }
    case ST_PARKED:
        return chanop_woken(op, result);
    case ST_PREEMPTED:
        op->state = ST_DONE;
        *result = op->v;
        op->v = NULL;
        return PYGEN_RETURN;
    default:
        return op_error(PyExc_RuntimeError, "cannot reuse an already awaited channel operation");
    }
}

static PyObject *
chanop_await(PyObject *op)
{
    return Py_NewRef(op);
}

/* coroutine.throw protocol: the operation ends with the exception (a G that was
 * parked here was already taken off the wait queue by its waitabort). */
static PyObject *
chanop_throw(chanop *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw(exc) takes one exception");
        return NULL;
    }
    op->state = ST_DONE;
    PyObject *exc = args[0];
    if (PyExceptionInstance_Check(exc))
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    else if (PyExceptionClass_Check(exc))
        PyErr_SetObject(exc, nargs > 1 ? args[1] : NULL);
    else
        PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
    return NULL;
}

static PyObject *
chanop_close(chanop *op, PyObject *noargs)
{
    op->state = ST_DONE;
    Py_RETURN_NONE;
}

static PyObject *
chanop_send(chanop *op, PyObject *arg)
{
    PyObject *result;
    PySendResult r = chanop_am_send(op, arg, &result);
    if (r == PYGEN_NEXT)
        return result;
    if (r == PYGEN_RETURN) {
        PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, result);
        Py_DECREF(result);
        if (e != NULL) {
            PyErr_SetObject(PyExc_StopIteration, e);
            Py_DECREF(e);
        }
    }
    return NULL;
}

static PyObject *
chanop_next(chanop *op)
{
    return chanop_send(op, Py_None);
}

static PyMethodDef chanop_methods[] = {
    {"send", (PyCFunction)chanop_send, METH_O, "Resume the operation (coroutine.send)."},
    {"throw", (PyCFunction)(void (*)(void))chanop_throw, METH_FASTCALL,
     "End the operation with an exception (coroutine.throw)."},
    {"close", (PyCFunction)chanop_close, METH_NOARGS, "Abandon the operation (coroutine.close)."},
    {NULL}};

static PyAsyncMethods chanop_as_async = {
    .am_await = chanop_await,
    .am_send = (sendfunc)chanop_am_send,
};

static PyTypeObject chanop_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gmpworker._core.chanop",
    .tp_basicsize = sizeof(chanop),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A pending channel send or receive (await it once).",
    .tp_dealloc = (destructor)chanop_dealloc,
    .tp_traverse = (traverseproc)chanop_traverse,
    .tp_clear = (inquiry)chanop_clear,
    .tp_as_async = &chanop_as_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)chanop_next,
    .tp_methods = chanop_methods,
};

static PyObject *
chan_send(PyObject *c, PyObject *v)
{
    return chanop_new(c, OP_SEND, v);
}

static PyObject *
chan_recv(PyObject *c, PyObject *noargs)
{
    return chanop_new(c, OP_RECV, NULL);
}

static PyObject *
chan_recv2(PyObject *c, PyObject *noargs)
{
    return chanop_new(c, OP_RECV2, NULL);
}

static PyObject *
chan_anext(PyObject *c, PyObject *noargs)
{
    return chanop_new(c, OP_ANEXT, NULL);
}

static PyMethodDef chan_methods[] = {
    {"send", chan_send, METH_O,
     "Send a value, blocking until a receiver takes it or buffer space frees.\n\n"
     "Mirrors runtime.chansend (chan.go) with block=true; native (gmpworker._core)."},
    {"recv", chan_recv, METH_NOARGS,
     "Receive a value; None once the channel is closed and drained.\n\n"
     "Mirrors runtime.chanrecv (chan.go) with block=true; native (gmpworker._core)."},
    {"recv2", chan_recv2, METH_NOARGS,
     "Receive (value, ok); ok is False when closed and drained.\n\n"
     "Mirrors runtime.chanrecv (chan.go) with block=true; native (gmpworker._core)."},
    {"__anext__", chan_anext, METH_NOARGS,
     "The next value, until the channel is closed and drained (native)."},
    {NULL}};

/* ---------------------------------------------------------------------------
 * The M loop: schedule + execute + park_m (proc.go) */

static int
call_ok(PyObject *r)
{
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Resume gp's coroutine inside its Context: send(None), or throw gp.exc. */
static PySendResult
resume(PyObject *gp, PyObject **req)
{
    PyObject *ctx = getf(gp, off.g_ctx), *coro = getf(gp, off.g_coro);
    if (PyContext_Enter(ctx) < 0)
        return PYGEN_ERROR;
    PySendResult r;
    PyObject *exc = getf(gp, off.g_exc);
    if (exc == Py_None)
        r = PyIter_Send(coro, Py_None, req);
    else {
        Py_INCREF(exc);
        setf(gp, off.g_exc, Py_None);
        *req = PyObject_CallMethod(coro, "throw", "O", exc);
        Py_DECREF(exc);
        if (*req != NULL)
            r = PYGEN_NEXT;
        else if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            PyObject *t, *v, *tb;
            PyErr_Fetch(&t, &v, &tb);
            PyErr_NormalizeException(&t, &v, &tb);
            *req = Py_NewRef(((PyStopIterationObject *)v)->value);
            Py_XDECREF(t);
            Py_XDECREF(v);
            Py_XDECREF(tb);
            r = PYGEN_RETURN;
        }
        else
            r = PYGEN_ERROR;
    }
    if (r == PYGEN_ERROR) {
        /* leave the Context with the exception put aside */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        int rc = PyContext_Exit(ctx);
        PyErr_Restore(t, v, tb);
        return rc < 0 ? PYGEN_ERROR : r;
    }
    if (PyContext_Exit(ctx) < 0) {
        Py_CLEAR(*req);
        return PYGEN_ERROR;
    }
    return r;
}

/* goexit with the escaping exception (a panic) or the return value. */
static int
exit_g(PyObject *m, PyObject *gp, PySendResult r, PyObject *value)
{
    if (r == PYGEN_RETURN) {
        int done = goexit_fast(m, gp, value);
        if (done != 0)
            return done < 0 ? -1 : 0;
        return call_ok(PyObject_CallFunctionObjArgs(py_goexit, m, gp, value, Py_None, NULL));
    }
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL)
        PyException_SetTraceback(v, tb);
    int rc = call_ok(PyObject_CallFunctionObjArgs(py_goexit, m, gp, Py_None, v, NULL));
    Py_XDECREF(t);
    Py_XDECREF(v);
    Py_XDECREF(tb);
    return rc;
}

/* The inner loop of execute: run gp until it parks, yields the P or exits. */
static int
execute(PyObject *m, PyObject *gp, PyObject *sched, PyObject *counters)
{
    for (;;) {
        if (counter_add(counters, off.c_switches, 1) < 0)
            return -1;
        PyObject *req = NULL;
        PySendResult r = resume(gp, &req);
        if (r != PYGEN_NEXT) {
            int rc = exit_g(m, gp, r, req);
            Py_XDECREF(req);
            return rc;
        }
        if (req == PARK) {
            Py_DECREF(req);
            /* park_m: the G is _Gwaiting before its lock is released */
            setf(gp, off.g_status, st_waiting);
            setf(m, off.m_curg, Py_None);
            setf(gp, off.g_m, Py_None);
            if (getf(gp, off.g_waitunlockf) == Py_None) {
                PyObject *lk = getf(gp, off.g_waitlock);
                if (lk != Py_None) {
                    Py_INCREF(lk);
                    setf(gp, off.g_waitlock, Py_None);
                    int rc = release_any(lk);
                    Py_DECREF(lk);
                    if (rc < 0)
                        return -1;
                }
                if (getf(gp, off.g_preempt) == Py_True)
                    return call_ok(PyObject_CallFunctionObjArgs(py_ready_interrupted, gp,
                                                                getf(m, off.m_p), NULL));
                return 0;
            }
            PyObject *parked = PyObject_CallFunctionObjArgs(py_park_m, m, gp, NULL);
            if (parked == NULL)
                return -1;
            int done = parked == Py_True;
            Py_DECREF(parked);
            if (done)
                return 0;
            continue;
        }
        if (req == GOSCHED || req == PREEMPT) {
            int preempt = req == PREEMPT;
            Py_DECREF(req);
            if (preempt) {
                PyObject *exc = PyObject_CallMethod(gp, "_takeinterrupt", NULL);
                if (exc == NULL)
                    return -1;
                if (exc != Py_None) {
                    setf(gp, off.g_exc, exc);
                    Py_DECREF(exc);
                    continue;
                }
                Py_DECREF(exc);
            }
            return call_ok(PyObject_CallFunctionObjArgs(py_gosched_m, m, gp, NULL));
        }
        if (Py_IS_TYPE(req, SyscallReq_type)) {
            PyObject *cont = PyObject_CallFunctionObjArgs(py_syscall_m, m, gp, req, NULL);
            Py_DECREF(req);
            if (cont == NULL)
                return -1;
            int again = cont == Py_True;
            Py_DECREF(cont);
            if (!again)
                return 0;
            if (getf(sched, off.s_exiting) == Py_True)
                /* the program ended while this G was in its syscall */
                return call_ok(PyObject_CallFunctionObjArgs(py_abandon, m, gp, NULL));
        }
        else {
            PyObject *exc = PyObject_CallOneArg(py_foreign_yield_error, req);
            Py_DECREF(req);
            if (exc == NULL)
                return -1;
            setf(gp, off.g_exc, exc);
            Py_DECREF(exc);
        }
        if (getf(m, off.m_p) == Py_None)
            /* resumed without a P (retaken during an unannotated blocking call) */
            return call_ok(PyObject_CallFunctionObjArgs(py_gosched_m, m, gp, NULL));
    }
}

/* Mirrors runtime.schedule (proc.go): find a G (the local queue, unless this is a
 * 1-in-61 tick with global work; otherwise proc._findrunnable_fast), execute it. */
static PyObject *
schedule(PyObject *self, PyObject *m)
{
    if (!PyObject_TypeCheck(m, M_type)) {
        PyErr_SetString(PyExc_TypeError, "schedule(m) needs an M");
        return NULL;
    }
    PyObject *sched = getf(m, off.m_sched);
    PyObject *counters = getf(sched, off.s_counters);
    for (;;) {
        if (getf(sched, off.s_exiting) == Py_True)
            Py_RETURN_NONE;
        PyObject *pp = getf(m, off.m_p);
        if (pp == Py_None) {
            if (call_ok(PyObject_CallOneArg(py_reacquirep, m)) < 0)
                return NULL;
            continue;
        }
        if (check_p(pp) < 0)
            return NULL;
        if (is_true(getf(pp, off.p_timer0When)) &&
            call_ok(PyObject_CallFunctionObjArgs(py_checkTimers, pp, ZERO_OBJ, pp, NULL)) < 0)
            return NULL;
        runqobject *q = runqof(pp);
        PyObject *gp = NULL;
        int inheritTime = 0;
        /* findRunnable's step 4 (1-in-61: the global queue first) and step 6
         * (runqget: runnext, then the ring) here; the rest in Python. */
        int globalturn = PyLong_AsLong(getf(pp, off.p_schedtick)) % 61 == 0 &&
                         QLEN(getf(sched, off.s_runq)) > 0;
        if (!globalturn && q->runnext != NULL) {
            gp = q->runnext;
            q->runnext = NULL;
            inheritTime = 1;
        }
        else if (!globalturn && (gp = rq_pop(q)) != NULL)
            inheritTime = 0;
        else {
            PyObject *res = PyObject_CallFunctionObjArgs(py_findrunnable_fast, m, pp, NULL);
            if (res == NULL)
                return NULL;
            gp = Py_NewRef(PyTuple_GET_ITEM(res, 0));
            inheritTime = PyTuple_GET_ITEM(res, 1) == Py_True;
            Py_DECREF(res);
            if (gp == Py_None || getf(m, off.m_p) == Py_None) {
                Py_DECREF(gp);
                Py_RETURN_NONE;
            }
            pp = getf(m, off.m_p);
        }
        if (getf(m, off.m_spinning) == Py_True &&
            call_ok(PyObject_CallOneArg(py_resetspinning, m)) < 0) {
            Py_DECREF(gp);
            return NULL;
        }
        if (!inheritTime && counter_add(pp, off.p_schedtick, 1) < 0) {
            Py_DECREF(gp);
            return NULL;
        }
        /* execute(gp, inheritTime) */
        setf(m, off.m_curg, gp);
        setf(gp, off.g_m, m);
        setf(gp, off.g_status, st_running);
        int rc = execute(m, gp, sched, counters);
        Py_DECREF(gp);
        if (rc < 0)
            return NULL;
    }
}

/* ---------------------------------------------------------------------------
 * Binding to the Python runtime */

static PyObject *
setm(PyObject *self, PyObject *m)
{
    if (m != Py_None && !PyObject_TypeCheck(m, M_type)) {
        PyErr_SetString(PyExc_TypeError, "setm(m) needs an M or None");
        return NULL;
    }
    Py_XSETREF(tls_m, m == Py_None ? NULL : Py_NewRef(m));
    Py_RETURN_NONE;
}

static int
slot_offset(PyTypeObject *cls, const char *name, Py_ssize_t *out)
{
    PyObject *d = PyObject_GetAttrString((PyObject *)cls, name);
    if (d == NULL)
        return -1;
    int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
             ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
    if (ok)
        *out = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a __slots__ field", cls->tp_name, name);
        return -1;
    }
    return 0;
}

static PyObject *
take(PyObject *ns, const char *name)
{
    PyObject *v = PyDict_GetItemString(ns, name);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "bind() needs %s", name);
        return NULL;
    }
    return Py_NewRef(v);
}

static int
take_type(PyObject *ns, const char *name, PyTypeObject **out)
{
    PyObject *t = take(ns, name);
    if (t == NULL)
        return -1;
    if (!PyType_Check(t)) {
        Py_DECREF(t);
        PyErr_Format(PyExc_TypeError, "bind(): %s must be a class", name);
        return -1;
    }
    *out = (PyTypeObject *)t;
    return 0;
}

#define TAKE(var, name) if ((var = take(ns, name)) == NULL) return NULL
#define OFF(cls, field, name) if (slot_offset(cls, name, &off.field) < 0) return NULL

/* bind(ns): the classes, constants and Python handlers of the runtime (native.py). */
static PyObject *
bind(PyObject *self, PyObject *ns)
{
    if (!PyDict_Check(ns)) {
        PyErr_SetString(PyExc_TypeError, "bind() needs a dict");
        return NULL;
    }
    if (take_type(ns, "G", &G_type) < 0 || take_type(ns, "sudog", &sudog_type) < 0 ||
        take_type(ns, "P", &P_type) < 0 || take_type(ns, "M", &M_type) < 0 ||
        take_type(ns, "Chan", &Chan_type) < 0 || take_type(ns, "SyscallReq", &SyscallReq_type) < 0)
        return NULL;
    PyTypeObject *schedt_type, *Counters_type;
    if (take_type(ns, "schedt", &schedt_type) < 0 || take_type(ns, "Counters", &Counters_type) < 0)
        return NULL;
    OFF(G_type, g_goid, "goid"); OFF(G_type, g_status, "status");
    OFF(G_type, g_preempt, "preempt"); OFF(G_type, g_result, "_result");
    OFF(G_type, g_exc_, "_exc"); OFF(G_type, g_waiters, "_waiters");
    OFF(G_type, g_cancelreq, "_cancelreq"); OFF(G_type, g_throwexc, "_throwexc");
    OFF(G_type, g_coro, "coro"); OFF(G_type, g_ctx, "ctx"); OFF(G_type, g_exc, "exc");
    OFF(G_type, g_m, "m"); OFF(G_type, g_param, "param"); OFF(G_type, g_sched, "sched");
    OFF(G_type, g_timer, "timer"); OFF(G_type, g_waitabort, "waitabort");
    OFF(G_type, g_waiting, "waiting"); OFF(G_type, g_waitlock, "waitlock");
    OFF(G_type, g_waitreason, "waitreason"); OFF(G_type, g_waitunlockf, "waitunlockf");
    OFF(sudog_type, sg_c, "c"); OFF(sudog_type, sg_elem, "elem"); OFF(sudog_type, sg_g, "g");
    OFF(sudog_type, sg_isSelect, "isSelect"); OFF(sudog_type, sg_seldone, "seldone");
    OFF(sudog_type, sg_success, "success");
    OFF(P_type, p_runq, "runq"); OFF(P_type, p_schedtick, "schedtick");
    OFF(P_type, p_timer0When, "timer0When"); OFF(P_type, p_status, "status");
    OFF(P_type, p_sched, "sched"); OFF(P_type, p_goidcache, "goidcache");
    OFF(P_type, p_goidcacheend, "goidcacheend");
    OFF(M_type, m_curg, "curg"); OFF(M_type, m_p, "p"); OFF(M_type, m_spinning, "spinning");
    OFF(M_type, m_sched, "sched");
    OFF(schedt_type, s_exiting, "exiting"); OFF(schedt_type, s_runq, "runq");
    OFF(schedt_type, s_npidle, "npidle"); OFF(schedt_type, s_nmspinning, "nmspinning");
    OFF(schedt_type, s_counters, "counters"); OFF(schedt_type, s_allgs, "allgs");
    OFF(schedt_type, s_lock, "lock"); OFF(schedt_type, s_mainStarted, "mainStarted");
    OFF(schedt_type, s_islibrary, "islibrary");
    OFF(Counters_type, c_switches, "switches"); OFF(Counters_type, c_spawned, "spawned");
    OFF(Chan_type, ch_buf, "buf"); OFF(Chan_type, ch_closed, "closed");
    OFF(Chan_type, ch_dataqsiz, "dataqsiz"); OFF(Chan_type, ch_lock, "lock");
    OFF(Chan_type, ch_recvq, "recvq"); OFF(Chan_type, ch_sendq, "sendq");
    Py_DECREF(schedt_type);
    Py_DECREF(Counters_type);
    TAKE(PARK, "PARK"); TAKE(GOSCHED, "GOSCHED"); TAKE(PREEMPT, "PREEMPT");
    TAKE(ChanClosedError, "ChanClosedError"); TAKE(abortChan, "_abortChan");
    TAKE(hlock, "_hlock");
    TAKE(waitReasonChanSend, "waitReasonChanSend");
    TAKE(waitReasonChanReceive, "waitReasonChanReceive");
    TAKE(waitReasonZero, "waitReasonZero");
    TAKE(py_reacquirep, "_reacquirep"); TAKE(py_checkTimers, "checkTimers");
    TAKE(py_findrunnable_fast, "_findrunnable_fast"); TAKE(py_resetspinning, "resetspinning");
    TAKE(py_goexit, "goexit"); TAKE(py_park_m, "park_m");
    TAKE(py_ready_interrupted, "ready_interrupted"); TAKE(py_gosched_m, "gosched_m");
    TAKE(py_abandon, "_abandon"); TAKE(py_wakep, "wakep"); TAKE(py_syscall_m, "syscall_m");
    TAKE(py_foreign_yield_error, "foreign_yield_error"); TAKE(py_newgoid, "newgoid");
    TAKE(py_go_slow, "go_slow");
    if (!Py_IS_TYPE(hlock, Lock_type)) {
        PyErr_SetString(PyExc_TypeError, "bind(): _hlock must be a _thread.lock");
        return NULL;
    }
    /* Chan's blocking operations become native methods (method descriptors, so
     * ch.send(v) allocates no bound method). */
    for (PyMethodDef *def = chan_methods; def->ml_name != NULL; def++) {
        PyObject *descr = PyDescr_NewMethod(Chan_type, def);
        if (descr == NULL || PyObject_SetAttrString((PyObject *)Chan_type, def->ml_name, descr) < 0) {
            Py_XDECREF(descr);
            return NULL;
        }
        Py_DECREF(descr);
    }
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"check_layout", check_layout, METH_NOARGS,
     "Check the CPython internals this module relies on (raises ImportError)."},
    {"bind", bind, METH_O, "Bind the runtime's classes, constants and Python handlers."},
    {"setm", setm, METH_O, "Record the calling thread's M (None: no M)."},
    {"runqput", (PyCFunction)(void (*)(void))runqput, METH_FASTCALL,
     "runqput(pp, gp, next): mirrors runtime.runqput (proc.go)."},
    {"runqget", runqget, METH_O, "runqget(pp) -> (gp, inheritTime): mirrors runtime.runqget."},
    {"runqempty", runqempty, METH_O, "Mirrors runtime.runqempty."},
    {"runqsize", runqsize, METH_O, "Gs queued on pp: the ring plus runnext."},
    {"runqgrab", (PyCFunction)(void (*)(void))runqgrab, METH_FASTCALL,
     "runqgrab(pp, stealRunNextG) -> list: mirrors runtime.runqgrab."},
    {"goready", (PyCFunction)(void (*)(void))goready, METH_FASTCALL,
     "goready(gp, pp): mirrors runtime.goready/ready (runnext of pp, or global)."},
    {"newproc", (PyCFunction)(void (*)(void))newproc, METH_FASTCALL,
     "newproc(sched, coro, pp) -> G: mirrors runtime.newproc/newproc1."},
    {"go", (PyCFunction)(void (*)(void))go, METH_FASTCALL | METH_KEYWORDS,
     "Start a new G running fn(*args, **kwargs) and return its handle (native go())."},
    {"schedule", schedule, METH_O, "schedule(m): one M's scheduling loop (native)."},
    {NULL}};

static struct PyModuleDef coremodule = {
    PyModuleDef_HEAD_INIT, "gmpworker._core",
    "The native hot paths of gmpworker (see gmpworker/native.py).", -1, core_methods};

PyMODINIT_FUNC
PyInit__core(void)
{
    if (PyType_Ready(&runq_type) < 0 || PyType_Ready(&chanop_type) < 0 ||
        PyType_Ready(&g_type) < 0 || PyType_Ready(&sudog_ctype) < 0)
        return NULL;
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL)
        return NULL;
    deque_type = (PyTypeObject *)PyObject_GetAttrString(collections, "deque");
    Py_DECREF(collections);
    if (deque_type == NULL)
        return NULL;
    deque_popleft = PyObject_GetAttrString((PyObject *)deque_type, "popleft");
    deque_append = PyObject_GetAttrString((PyObject *)deque_type, "append");
    deque_extend = PyObject_GetAttrString((PyObject *)deque_type, "extend");
    ZERO_OBJ = PyLong_FromLong(0);
    ONE = PyLong_FromLong(1);
    st_runnable = PyLong_FromLong(Grunnable);
    st_running = PyLong_FromLong(Grunning);
    st_waiting = PyLong_FromLong(Gwaiting);
    st_dead = PyLong_FromLong(Gdead);
    if (!deque_popleft || !deque_append || !deque_extend || !ZERO_OBJ || !ONE)
        return NULL;
    PyObject *mod = PyModule_Create(&coremodule);
    if (mod == NULL)
        return NULL;
    if (PyModule_AddObjectRef(mod, "runq", (PyObject *)&runq_type) < 0 ||
        PyModule_AddObjectRef(mod, "g", (PyObject *)&g_type) < 0 ||
        PyModule_AddObjectRef(mod, "sudog", (PyObject *)&sudog_ctype) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
