"""The bounded history of primary changes (failover, switchover) in etcd."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gitquorum.cli import admin_history
from gitquorum.cluster.history import (
    FAILOVER,
    SWITCHOVER,
    VERDICT,
    Event,
    History,
    entry_name,
    overflow,
)
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore


@pytest.mark.parametrize(
    ("names", "limit", "keep_from"),
    [
        ([], 3, None),
        (["a", "b", "c"], 3, None),
        (["a", "b", "c", "d"], 3, "b"),
        (["a", "b", "c", "d", "e"], 1, "e"),
        (["a"], 1, None),
    ],
)
def test_overflow_keeps_the_newest(names: list[str], limit: int, keep_from: str | None) -> None:
    assert overflow(names, limit) == keep_from


def test_overflow_refuses_an_empty_log() -> None:
    with pytest.raises(ValueError):
        overflow(["a"], 0)


def test_entry_names_sort_by_time() -> None:
    assert entry_name(9.5, "ffffffff") < entry_name(10.0, "00000000")
    assert entry_name(1_700_000_000.123, "ab") == "01700000000123000-ab"


def test_event_round_trips_and_rejects_garbage() -> None:
    event = Event(
        12.5, FAILOVER, "default", 7, "g/p.git", "n1", "n2", "proxy1", "primary-unhealthy"
    )
    assert Event.decode(event.encode()) == event
    no_primary = Event(1.0, SWITCHOVER, "default", 1, "x.git", None, "n3")
    assert Event.decode(no_primary.encode()) == no_primary
    verdict = Event(
        3.0, VERDICT, "default", 2, "y.git", "n1", "n2", "p1", "majority",
        {"demoted": ["n1"], "differing_refs": ["refs/heads/a"], "differing_refs_count": 1},
    )  # fmt: skip
    assert Event.decode(verdict.encode()) == verdict
    assert b"details" not in event.encode()  # primary changes stay as they were
    for garbage in (
        b"{}",
        b"[]",
        b'{"at":1}',
        b"not json",
        b'{"at":1,"kind":"verdict","vs":"d","id":1,"details":[1]}',
    ):
        with pytest.raises(ValueError):
            Event.decode(garbage)


async def test_history_is_bounded_and_ordered() -> None:
    store, keys = MemoryStore(), Keyspace(cluster="c")
    now = [100.0]
    history = History(store, keys, limit=5, trim_every=3, clock=lambda: now[0])
    for i in range(12):
        now[0] += 1
        await history.record(history.event(FAILOVER, "default", i, f"r{i}.git", "n1", "n2"))
    await history.trim()
    events = await history.events()
    assert [e.repository_id for e in events] == [7, 8, 9, 10, 11]
    assert [e.at for e in events] == sorted(e.at for e in events)
    # Between trims the log grows by at most trim_every entries beyond the limit.
    for i in range(12, 14):
        now[0] += 1
        await history.record(history.event(SWITCHOVER, "default", i, "x.git", "n2", "n3"))
    assert len(await history.events()) <= 5 + 3


async def test_unreadable_entries_are_skipped_and_failures_are_quiet() -> None:
    store, keys = MemoryStore(), Keyspace(cluster="c")
    history = History(store, keys)
    await store.put(keys.history() + "00000000000000001-x", b"hand edited")
    await history.record(history.event(SWITCHOVER, "default", 1, "a.git", "n1", "n2", by="op"))
    [event] = await history.events()
    assert event.by == "op" and event.new == "n2"

    class Broken(MemoryStore):
        async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
            raise OSError("etcd is gone")

    await History(Broken(), keys).record_quietly(event)  # logs, does not raise


async def test_verdicts_are_kept_and_shown_with_whom_they_demoted() -> None:
    store, keys = MemoryStore(), Keyspace(cluster="c")
    history = History(store, keys, limit=3, trim_every=2, writer="p1")
    for i in range(6):
        event = history.event(VERDICT, "default", i, f"r{i}.git", "n1", "n1", reason="majority")
        await store.txn([], [history.op(event)])
        await history.written_in_txn()
    assert len(await history.events()) <= 3 + 2  # the txn-written entries are trimmed too
    demoting = history.event(VERDICT, "default", 9, "z.git", "n1", "n2", reason="majority")
    demoting = replace(demoting, details={"demoted": ["n3"]})
    await store.txn([], [history.op(demoting)])
    events = await history.events()
    assert [e.repository_id for e in admin_history.select(events, None, None, "n3", 0)] == [9]
    assert "majority: demoted n3" in admin_history.render([demoting])
