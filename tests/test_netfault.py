"""The fault proxy itself, in front of the real Redis: each fault does what it says, and the
request still reaches the upstream where the fault is only on the reply."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.netfault import FaultProxy
from tests.support import REDIS_HOST_URL, unique_name, wait_until

_HOST, _PORT = REDIS_HOST_URL.removeprefix("redis://").split(":")


@pytest.fixture
def proxy(fault_proxy: Callable[[str, int], FaultProxy], redis_prefix: str) -> FaultProxy:
    return fault_proxy(_HOST, int(_PORT))


@pytest.fixture
def direct(redis_prefix: str) -> redis.Redis:
    return redis.Redis.from_url(f"{REDIS_HOST_URL}/2")


def _client(proxy: FaultProxy, timeout: float = 0.3) -> redis.Redis:
    # No retries: each fault must show as the one error it causes.
    return redis.Redis(
        host="127.0.0.1", port=proxy.port, db=2, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def _key(prefix: str) -> str:
    return prefix + unique_name("k")


def test_forwards_both_ways(proxy: FaultProxy, redis_prefix: str) -> None:
    client = _client(proxy)
    key = _key(redis_prefix)
    assert client.set(key, "v")
    assert client.get(key) == b"v"
    assert proxy.connections == 1


_UNANSWERED = {
    "delay": lambda proxy: proxy.delay_replies(2.0),
    "drop": FaultProxy.drop_replies,
    "blackhole": FaultProxy.blackhole,
}


@pytest.mark.parametrize(
    ("fault", "reaches_redis"), [("delay", True), ("drop", True), ("blackhole", False)]
)
def test_an_unanswered_command_times_out(
    proxy: FaultProxy, direct: redis.Redis, redis_prefix: str, fault: str, reaches_redis: bool
) -> None:
    """A late or lost reply times the client out although the command ran; a blackhole
    does not even deliver the command."""
    client = _client(proxy)
    client.ping()
    key = _key(redis_prefix)
    _UNANSWERED[fault](proxy)
    with pytest.raises(redis.TimeoutError):
        client.incr(key)
    assert direct.get(key) == (b"1" if reaches_redis else None)


def test_held_replies_arrive_in_order_after_release(proxy: FaultProxy, redis_prefix: str) -> None:
    client = _client(proxy, timeout=5.0)
    client.ping()
    key = _key(redis_prefix)
    proxy.hold_replies()
    pipe = client.pipeline(transaction=False)
    for _ in range(3):
        pipe.incr(key)
    sent: list[list[int]] = []
    worker = threading.Thread(target=lambda: sent.append(pipe.execute()))
    worker.start()
    wait_until(lambda: redis.Redis.from_url(f"{REDIS_HOST_URL}/2").get(key) == b"3", 5, "3 incrs")
    assert not sent  # replies still held although the commands ran
    proxy.release_replies()
    worker.join(5)
    assert sent == [[1, 2, 3]]


def test_cut_resets_open_connections(proxy: FaultProxy) -> None:
    client = _client(proxy)
    client.ping()
    connection = client.connection_pool.get_connection()
    proxy.cut()
    wait_until(lambda: proxy.connections == 0, 5, "the link to close")
    with pytest.raises(redis.ConnectionError):
        connection.send_command("PING")
        connection.read_response()


def test_refuse_then_heal_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.refuse()
    with pytest.raises(redis.ConnectionError):
        _client(proxy).ping()
    proxy.heal()
    assert proxy.port == port
    assert _client(proxy).ping()


def test_negative_delay_is_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="delay must be >= 0"):
        proxy.delay_replies(-1)
