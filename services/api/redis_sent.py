"""Whether a Redis command of the current task may have reached the server.

The api says "nothing was reserved" only when that is certain. A reservation that failed
before its connection was even open certainly did nothing; one that failed after its
bytes were (maybe partly) written may have run. :class:`SendTrackingConnection` records,
per asyncio task (a :class:`~contextvars.ContextVar`), that a command was handed to the
socket; the pool's own retries included, since any attempt may have been the one that ran.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar

import redis.asyncio

_SENT: ContextVar[bool] = ContextVar("redis_command_sent", default=False)


def forget_sends() -> None:
    """Start tracking afresh in this task (call right before the command that matters)."""
    _SENT.set(False)


def may_have_sent() -> bool:
    """Whether a command of this task may have reached Redis since :func:`forget_sends`."""
    return _SENT.get()


class SendTrackingConnection(redis.asyncio.Connection):
    """A redis.asyncio connection that marks the task once a caller's command is written.

    Connecting and the health-check PING are not the caller's commands: a failure there
    leaves the mark as it was.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        """Connect and check health untracked, mark the task, then write ``command``."""
        before = _SENT.get()
        try:
            if not self.is_connected:
                await self.connect_check_health(check_health=False)
            if check_health:
                await self.check_health()  # type: ignore[no-untyped-call]  # redis-py: unannotated
        finally:
            _SENT.set(before)
        _SENT.set(True)
        await super().send_packed_command(command, check_health=False)
