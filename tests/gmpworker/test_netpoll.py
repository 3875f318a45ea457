"""The netpoller: 1,000 concurrent loopback echo connections, no M held while waiting."""

from __future__ import annotations

from typing import Any

import pytest
from gmp_guard import no_leaked_threads  # noqa: F401

import gmpworker as gmp
from gmpworker import net

pytestmark = pytest.mark.timeout(60)


async def _echo_server(ln: net.Listener, conns: int) -> None:
    async def handle(c: net.Conn) -> None:
        while True:
            data = await c.recv(4096)
            if not data:
                break
            await c.sendall(data)
        c.close()

    for _ in range(conns):
        c = await ln.accept()
        gmp.go(handle, c)


@pytest.mark.parametrize("procs", [1, 2])
def test_echo_1000_concurrent_connections(procs: int) -> None:
    n = 1000

    async def main() -> tuple[int, dict[str, Any]]:
        ln = net.listen("127.0.0.1", 0)
        host, port = ln.addr
        gmp.go(_echo_server, ln, n)
        ok: gmp.Chan[bool] = gmp.Chan(n)
        peak = [0]

        async def client(i: int) -> None:
            c = await net.dial(host, port)
            msg = f"hello {i} ".encode() * 50
            await c.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = await c.recv(65536)
                if not chunk:
                    break
                got += chunk
            peak[0] = max(peak[0], gmp.stats()["netpoll_waiters"])
            c.close()
            await ok.send(got == msg)

        for i in range(n):
            gmp.go(client, i)
        good = 0
        for _ in range(n):
            good += bool(await ok.recv())
        ln.close()
        st = gmp.stats()
        st["peak_waiters"] = peak[0]
        return good, st

    good, st = gmp.run(main, procs=procs)
    assert good == n
    # Thousands of Gs waited on sockets while only a handful of threads existed.
    assert st["threads"] <= procs + 4
    assert st["peak_waiters"] > 10


def test_recv_after_peer_close_and_dial_refused() -> None:
    async def main() -> tuple[bytes, str]:
        ln = net.listen()
        host, port = ln.addr

        async def server() -> None:
            c = await ln.accept()
            await c.sendall(b"bye")
            c.close()

        gmp.go(server)
        c = await net.dial(host, port)
        data = b""
        while True:
            chunk = await c.recv(10)
            if not chunk:
                break
            data += chunk
        c.close()
        ln.close()
        try:
            await net.dial(host, port)
        except OSError as e:
            return data, type(e).__name__
        return data, "connected?"

    data, err = gmp.run(main, procs=1)
    assert data == b"bye"
    assert err in ("ConnectionRefusedError", "OSError")


def test_close_wakes_goroutine_blocked_in_accept() -> None:
    async def main() -> str:
        ln = net.listen()

        async def acceptor() -> str:
            try:
                await ln.accept()
            except OSError:
                return "woken"
            return "accepted?"

        h = gmp.go(acceptor)
        await gmp.sleep(0.02)
        ln.close()
        return str(await h)

    assert gmp.run(main, procs=2) == "woken"
