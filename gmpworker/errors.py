"""Exceptions raised by gmpworker: one error model, Go's panic versus fatal error.

Go has two kinds of runtime failure, and every error here is one of them:

- **panic** (``GoPanic``, an ``Exception``): recoverable in Go with ``recover()``;
  here ``except GoPanic`` (or ``except Exception``) catches it, and a G that does
  not catch it ends, like a goroutine whose panic is not recovered (``run()``
  stops and re-raises it; an embedded ``Runtime`` reports it to ``panic_hook``).

  ====================================  ================================  ===========
  Go panic message                      raised by                         exception
  ====================================  ================================  ===========
  ``send on closed channel``            ``Chan.send``, ``try_send``,      ``ChanClosedError``
                                        ``select`` send case
  ``close of closed channel``           ``Chan.close``                    ``ChanClosedError``
  ``makechan: size out of range``       ``Chan(-1)``                      ``ValuePanic``
  ``sync: negative WaitGroup counter``  ``WaitGroup.add``/``done``        ``ValuePanic``
  ``non-positive interval for Ticker``  ``Ticker(d <= 0)``, ``reset``     ``ValuePanic``
  ====================================  ================================  ===========

  ``ValuePanic`` is also a ``ValueError``: a Python caller passing a bad value
  expects one. Go's "close of nil channel" has no counterpart (a nil channel is
  ``None`` here, which has no ``close``); a nil channel in ``select`` is
  ``recv_case(None)``/``send_case(None, v)``, never ready, as in Go.

- **fatal error** (``FatalError``, a ``BaseException``): unrecoverable in Go
  (``runtime.fatal``/``throw``: the process dies, ``recover`` cannot stop it).
  It derives from ``BaseException`` so ``except Exception`` (the Python
  counterpart of ``recover``) does not swallow it, and inside ``run()`` it ends the
  program even when the G catches it (the runtime records it before raising, as
  Go's ``fatalthrow`` does not return). An embedded ``Runtime`` cannot end the
  process: the G gets the exception, and ``panic_hook`` if it escapes.

  ======================================  ==========================  ============
  Go fatal error                          raised by                   exception
  ======================================  ==========================  ============
  ``sync: unlock of unlocked mutex``      ``Mutex.unlock``            ``FatalError``
  ``sync: Unlock of unlocked RWMutex``    ``RWMutex.unlock``          ``FatalError``
  ``sync: RUnlock of unlocked RWMutex``   ``RWMutex.runlock``         ``FatalError``
  ``all goroutines are asleep -           ``run()`` (checkdead)       ``Deadlock``
  deadlock!``
  ======================================  ==========================  ============

Errors Go reports at compile time (a wrong type, a non-case in ``select``) are
``TypeError``; calling a G-only operation where there is no G (Go cannot express
that) is ``RuntimeError``. ``Cancelled`` is Python-only (``GHandle.cancel``).
"""

from __future__ import annotations


class GoPanic(RuntimeError):
    """A Go runtime panic (recoverable: ``except GoPanic`` is Go's ``recover()``)."""


Panic = GoPanic


class ChanClosedError(GoPanic):
    """Send on a closed channel, or close of a closed channel (Go panics)."""


class ValuePanic(GoPanic, ValueError):
    """A panic on an out-of-range value: ``makechan: size out of range``, ``sync:
    negative WaitGroup counter``, ``non-positive interval for Ticker``."""


class FatalError(BaseException):
    """A Go fatal error (``runtime.fatal``/``throw``): not recoverable.

    A ``BaseException`` so ``except Exception`` does not swallow it; inside
    ``run()`` the program ends with it even if the G catches it (see ``fatal``).
    """


class Deadlock(FatalError):
    """Go's fatal "all goroutines are asleep - deadlock!", with a per-G dump."""


class Cancelled(BaseException):
    """Raised inside a G at its next park point after ``GHandle.cancel()``.

    A BaseException (like ``asyncio.CancelledError``) so ``except Exception`` in
    user code does not swallow it by accident.
    """
