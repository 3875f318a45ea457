"""sysmon: the monitor thread that retakes Ps, preempts, polls and traces.

Mirrors ``runtime.sysmon``, ``retake`` and ``preemptone`` (proc.go, Go 1.19). It
runs on its own thread with no P (counted in ``nmsys``) and sleeps 20 us while it
keeps finding work, doubling after 50 idle rounds up to 10 ms, and deep-sleeps
when every P is idle. Under the GIL a "20 us" sleep really lasts 60 us to 5 ms,
so "retake after one sysmon tick" means roughly 0.1-5 ms here.

Python-only addition: ``retakeunannotated`` hands off the P of an M whose G
blocks in a call that was not wrapped in ``syscall()`` (a bare ``time.sleep``),
detected by the M's thread CPU clock not advancing (Go reaches the same state
for cgo calls through entersyscall).
"""

from __future__ import annotations

import sys
import threading
import time

from . import proc
from .runtime2 import M, P, _Grunning, _Pidle, _Prunning, _Psyscall, forcePreemptNS, schedt

nanotime = time.monotonic_ns

# An M whose thread CPU time has not moved for this long while its G runs is
# treated as blocked. Twice forcePreemptNS, because a thread waiting for the GIL
# also shows no CPU progress for up to a switch interval (5 ms) or two.
unannotatedBlockNS = 2 * forcePreemptNS
forcegcperiodNS = 2 * 60 * 1_000_000_000


def start_sysmon(sched: schedt) -> threading.Thread:
    """Create sysmon's M record and thread (newm(sysmon, nil, -1) in runtime.main)."""
    with sched.lock:
        m = M(sched, sched.mnext)
        sched.mnext += 1
        sched.allm.append(m)
        sched.nmsys += 1
    t = threading.Thread(target=sysmon, args=(sched, m), name=f"gmp-sysmon-M{m.id}", daemon=True)
    m.thread = t
    t.start()
    return t


def sysmon(sched: schedt, m: M) -> None:
    """The sysmon loop. Mirrors runtime.sysmon (proc.go, Go 1.19)."""
    try:
        _sysmonloop(sched)
    finally:
        with sched.lock:
            if m in sched.allm:
                sched.allm.remove(m)
                sched.nmsys -= 1


def _sysmonloop(sched: schedt) -> None:
    idle = 0
    delay = 0
    lasttrace = 0
    while True:  # not ``while not sched.exiting``: see proc.schedule on quickening
        if sched.exiting:
            return
        if idle == 0:
            delay = 20
        elif idle > 50:
            delay = min(delay * 2, 10_000)
        time.sleep(delay / 1e6)
        now = nanotime()
        if sched.schedtrace <= 0 and sched.npidle == sched.gomaxprocs:
            _deepsleep(sched, now)
            idle = 0
            continue
        lastpoll = sched.lastpoll
        np = sched.netpoll
        if np is not None and lastpoll != 0 and lastpoll + 10_000_000 < now:
            with sched.xlock:  # atomic.Cas64(&sched.lastpoll, lastpoll, now)
                ok = sched.lastpoll == lastpoll
                if ok:
                    sched.lastpoll = now
            if ok:
                glist = np.netpoll(0)
                if glist:
                    proc.injectglist(sched, glist, None)
        if retake(sched, now):
            idle = 0
        else:
            idle += 1
        if sched.schedtrace > 0 and lasttrace + sched.schedtrace * 1_000_000 <= now:
            lasttrace = now
            from .schedtrace import schedtrace

            print(schedtrace(sched, sched.scheddetail), file=sys.stderr, flush=True)


def _deepsleep(sched: schedt, now: int) -> None:
    """sysmonwait: sleep until the next timer (at most forcegcperiod/2) or a wakeup."""
    with sched.lock:
        if sched.exiting or sched.npidle != sched.gomaxprocs:
            return
        sched.sysmonwait = 1
    nxt = min((pp.timer0When for pp in sched.allp if pp.timer0When), default=0)
    sleep = forcegcperiodNS // 2
    if nxt:
        sleep = max(0, min(sleep, nxt - now))
    woke = sched.sysmonnote.acquire(timeout=sleep / 1e9)
    if not woke:
        with sched.lock:
            if sched.sysmonwait:
                sched.sysmonwait = 0
            else:
                # A waker released the note just after our timeout: consume it.
                sched.sysmonnote.acquire(blocking=False)


def retake(sched: schedt, now: int) -> int:
    """Preempt long-running Gs and take Ps from long syscalls; return Ps retaken.

    Mirrors runtime.retake (proc.go, Go 1.19): a P in _Psyscall for more than one
    sysmon tick is retaken unless it has no work, other Ms are spinning or idle
    and the syscall is shorter than 10 ms.
    """
    n = 0
    for pp in sched.allp:
        pd = pp.sysmontick
        s = pp.status
        sysretake = False
        if s in (_Prunning, _Psyscall):
            t = pp.schedtick
            if pd.schedtick != t:
                pd.schedtick = t
                pd.schedwhen = now
            elif pd.schedwhen + forcePreemptNS <= now:
                preemptone(pp)
                sysretake = True
        if s == _Psyscall:
            t = pp.syscalltick
            if not sysretake and pd.syscalltick != t:
                pd.syscalltick = t
                pd.syscallwhen = now
                continue
            if (
                proc.runqempty(pp)
                and sched.nmspinning + sched.npidle > 0
                and pd.syscallwhen + forcePreemptNS > now
            ):
                continue
            with sched.xlock:  # atomic.Cas(&pp.status, s, _Pidle)
                ok = pp.status == _Psyscall
                if ok:
                    pp.status = _Pidle
            if ok:
                n += 1
                pp.syscalltick += 1
                sched.counters.retakes += 1
                proc.handoffp(pp)
        elif s == _Prunning and retakeunannotated(sched, pp, now):
            n += 1
    return n


def preemptone(pp: P) -> bool:
    """Ask the G running on ``pp`` to yield at its next trap. Mirrors runtime.preemptone.

    Cooperative only: the flag is checked when the G next enters the runtime.
    """
    m = pp.m
    gp = m.curg if m is not None else None
    if gp is None or gp.preempt:
        return False
    gp.preempt = True
    pp.preempt = True
    pp.sched.counters.preemptions += 1
    return True


def _threadstate(tid: int) -> str:
    """The kernel scheduler state of thread ``tid`` ("R", "S", "D", ...); "" if unknown.

    Linux only (/proc); elsewhere the CPU-clock heuristic stands alone.
    """
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    # The comm field may contain spaces and parentheses: the state follows the last ")".
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3].decode()


def retakeunannotated(sched: schedt, pp: P, now: int) -> bool:
    """Hand off the P of an M blocked in a call not wrapped in ``syscall()``.

    Python-only. The M's thread CPU clock and the P's schedtick must both have
    stood still for ``unannotatedBlockNS`` and there must be other work for the
    P, as in retake. The M notices on its G's next trap that its P is gone and
    continues like ``exitsyscall0``.
    """
    pd = pp.sysmontick
    m = pp.m
    gp = m.curg if m is not None else None
    if m is None or gp is None or gp.status != _Grunning or m.cpuclock is None:
        pd.cputime = -1
        return False
    try:
        cpu = time.clock_gettime_ns(m.cpuclock)
    except OSError:  # the thread is gone
        return False
    if cpu != pd.cputime:
        pd.cputime = cpu
        pd.cpuwhen = now
        return False
    if pd.cpuwhen + unannotatedBlockNS > now or pd.schedwhen + unannotatedBlockNS > now:
        return False
    if _threadstate(m.tid) == "R":
        # Runnable, not blocked: the OS has not scheduled the thread (a loaded
        # machine), which a CPU clock alone cannot tell from a blocking call.
        return False
    if proc.runqempty(pp) and not sched.runq and not pp.timer0When:
        return False
    with sched.xlock:
        ok = pp.status == _Prunning and pp.m is m and m.p is pp
        if ok:
            m.p = None
            pp.m = None
            pp.status = _Pidle
    if not ok:
        return False
    pd.cputime = -1
    sched.counters.retakes_unannotated += 1
    proc.handoffp(pp)
    return True
