"""What the etcd store retries (no etcd needed: the calls are fakes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from etcd3aio.errors import EtcdConnectionError, EtcdTransientError, EtcdUnauthenticatedError

from gitquorum.cluster.errors import LeaseExpired, StoreUnavailable
from gitquorum.cluster.etcd_store import (
    NEXT_MEMBER_DELAY,
    EtcdConfig,
    EtcdStore,
    channel_target,
    member_targets,
    next_member,
    watch_retry_delay,
)


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def observe_store_request(self, operation: str, seconds: float, error: str | None) -> None:
        self.seen.append((operation, error))


class Script:
    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


@pytest.fixture
def observer() -> Observer:
    return Observer()


def make_store(observer: Observer, *, username: str | None = None) -> EtcdStore:
    # The channel connects lazily: nothing listens on this port and nothing is sent.
    config = EtcdConfig(endpoints=("127.0.0.1:9",), attempts=3, username=username)
    return EtcdStore(config, observer=observer)


@pytest.fixture
def authentications(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    done: list[str] = []

    async def authenticate(self: EtcdStore) -> None:
        done.append("auth")

    monkeypatch.setattr(EtcdStore, "_authenticate", authenticate)
    yield done


@pytest.mark.parametrize(
    ("failures", "idempotent", "calls", "error"),
    [
        # reads, puts, deletes: transient failures are tried again, up to the attempts
        ([EtcdTransientError("blip")], True, 2, "timeout"),
        ([EtcdConnectionError("down"), EtcdConnectionError("down")], True, 3, "unavailable"),
        # a txn is sent once: after a failure its outcome is unknown
        ([EtcdTransientError("blip")], False, 1, "timeout"),
    ],
)
async def test_what_is_retried(
    observer: Observer,
    failures: list[Exception],
    idempotent: bool,
    calls: int,
    error: str,
) -> None:
    store = make_store(observer)
    fn = Script(*failures)
    try:
        if calls > len(failures):
            assert await store._call("range", fn, idempotent=idempotent) == "ok"
        else:
            with pytest.raises(StoreUnavailable):
                await store._call("txn", fn, idempotent=idempotent)
    finally:
        await store.close()
    assert fn.calls == calls
    assert observer.seen[-1][1] == error


async def test_gives_up_after_the_attempts(observer: Observer) -> None:
    store = make_store(observer)
    fn = Script(*(EtcdConnectionError("down") for _ in range(5)))
    with pytest.raises(StoreUnavailable):
        await store._call("range", fn, idempotent=True)
    await store.close()
    assert fn.calls == 3


async def test_a_lost_lease_is_not_retried(observer: Observer) -> None:
    store = make_store(observer)
    fn = Script(LeaseExpired("lease 1 expired"))
    with pytest.raises(LeaseExpired):
        await store._call("lease_keepalive", fn, idempotent=True)
    await store.close()
    assert fn.calls == 1
    assert observer.seen == [("lease_keepalive", "lease_expired")]


async def test_a_rejected_token_is_renewed_then_the_call_repeated(
    observer: Observer, authentications: list[str]
) -> None:
    store = make_store(observer, username="root")
    fn = Script(EtcdUnauthenticatedError("token expired"))
    assert await store._call("range", fn, idempotent=True) == "ok"
    await store.close()
    assert authentications == ["auth"] and fn.calls == 2


async def test_without_credentials_a_rejected_call_fails_at_once(
    observer: Observer, authentications: list[str]
) -> None:
    store = make_store(observer)
    fn = Script(EtcdUnauthenticatedError("auth required"))
    with pytest.raises(StoreUnavailable):
        await store._call("range", fn, idempotent=True)
    await store.close()
    assert authentications == [] and fn.calls == 1
    assert observer.seen == [("range", "unauthenticated")]


@pytest.mark.parametrize(
    ("endpoints", "members"),
    [
        pytest.param(
            ("127.0.0.1:1", "http://127.0.0.1:2", "localhost:3"),
            ["ipv4:127.0.0.1:1", "ipv4:127.0.0.1:2", "ipv4:127.0.0.1:3"],
            id="one target per member",
        ),
        pytest.param(("127.0.0.1:1",), ["ipv4:127.0.0.1:1"], id="one member"),
        pytest.param(("etcd.example:2379",), ["dns:///etcd.example:2379"], id="a name"),
    ],
)
def test_watches_get_one_target_per_member(endpoints: tuple[str, ...], members: list[str]) -> None:
    target, _, _ = channel_target(endpoints)
    assert member_targets(target) == members


@pytest.mark.parametrize(
    ("start", "silent_until", "expected"),
    [
        pytest.param(4, {}, 1, id="the next member, round"),
        pytest.param(1, {1: 20.0}, 2, id="a member silent lately is skipped"),
        pytest.param(2, {2: 20.0, 0: 20.0}, 1, id="and the one after"),
        pytest.param(1, {1: 5.0}, 1, id="no longer avoided after its time"),
        pytest.param(0, {0: 20.0, 1: 20.0, 2: 20.0}, 0, id="all silent: in turn"),
    ],
)
def test_a_watch_moves_past_members_found_silent(
    start: int, silent_until: dict[int, float], expected: int
) -> None:
    assert next_member(start, 3, silent_until, now=10.0) == expected


def test_a_failed_watch_tries_every_member_before_it_backs_off() -> None:
    # After an outage, the members that were down reconnect slowly; the one
    # that stayed up serves at once. A watch tries each member in turn almost
    # at once, and backs off only after a whole round failed.
    backoff, delays = 0.05, []
    for failures in range(1, 10):
        delay, backoff = watch_retry_delay(failures, 3, backoff)
        delays.append(delay)
    step = NEXT_MEMBER_DELAY
    assert delays == [step, step, 0.05, step, step, 0.1, step, step, 0.2]
    # One endpoint: every failure backs off, up to 1 s.
    backoff, one = 0.05, []
    for failures in range(1, 8):
        delay, backoff = watch_retry_delay(failures, 1, backoff)
        one.append(delay)
    assert one == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
