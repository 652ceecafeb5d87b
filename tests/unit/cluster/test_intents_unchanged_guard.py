"""IntentStore.unchanged_guard: a verdict weighs the intents read before the
checksums; it is void when they changed since, and its txn is refused when
one changes before it lands."""

from __future__ import annotations

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.intents import IntentStore, WriteIntent
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.store import Op

KEYS = Keyspace("unit")
VS = "vs"


def _intent(intent_id: str, *, finished: bool = False) -> WriteIntent:
    return WriteIntent(
        VS, 1, intent_id, "p1", 1.0, 5, "n1", ("n1", "n2"), finished=finished, routed_revision=7
    )


async def _store() -> tuple[MemoryStore, IntentStore]:
    store = MemoryStore(ManualClock())
    await store.put(KEYS.repository(VS, 1), b"{}")  # the intents' repository exists
    return store, IntentStore(store, KEYS)


async def test_unchanged_intents_give_a_compare_that_a_later_put_breaks() -> None:
    store, intents = await _store()
    await intents.put(_intent("a"))
    read = await intents.of_repository(VS, 1)
    guard = await intents.unchanged_guard(VS, 1, read)
    assert guard is not None
    assert (await store.txn([guard], [Op.put("unit/x", b"1")])).succeeded
    await intents.put(_intent("b"))  # a write's intent lands before the verdict's txn
    assert not (await store.txn([guard], [Op.put("unit/x", b"2")])).succeeded


async def test_a_new_intent_or_one_put_again_finished_voids_the_verdict() -> None:
    _, intents = await _store()
    await intents.put(_intent("a"))
    read = await intents.of_repository(VS, 1)
    await intents.put(_intent("b"))
    assert await intents.unchanged_guard(VS, 1, read) is None
    read = await intents.of_repository(VS, 1)
    assert await intents.finish_if_standing(_intent("a"))
    assert await intents.unchanged_guard(VS, 1, read) is None


async def test_an_intent_this_version_cannot_read_does_not_void_every_verdict() -> None:
    store, intents = await _store()
    await intents.put(_intent("a"))
    await store.put(KEYS.intent(VS, 1, "from-a-later-version"), b"not json")
    read = await intents.of_repository(VS, 1)
    assert [i.key for i in read] == [KEYS.intent(VS, 1, "a")]
    assert await intents.unchanged_guard(VS, 1, read) is not None
