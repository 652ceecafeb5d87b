"""The per-repository limiter, the drain gate and the ``limits`` config section."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gitquorum.config import (
    NODE_LIMITS,
    PROXY_LIMITS,
    LimitsConfig,
    node_config_from_dict,
    proxy_config_from_dict,
)
from gitquorum.errors import ConfigError, DeadlineExceeded, ResourceExhausted, Unavailable
from gitquorum.limits import EXPENSIVE_READS, Admission, DrainGate, RepositoryLimiter
from gitquorum.wire.registry import MethodRegistry, Op

KEY = ("default", "group/repo.git")
OTHER = ("default", "group/other.git")


async def test_limit_admits_up_to_the_limit_then_queues_in_order() -> None:
    limiter = RepositoryLimiter("mutator", limit=2, max_queued=10, queue_timeout=5)
    order: list[int] = []
    release = asyncio.Event()

    async def call(i: int) -> None:
        async with limiter.slot(KEY):
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(call(i)) for i in range(5)]
    await asyncio.sleep(0.05)
    assert order == [0, 1]
    assert limiter.active(KEY) == 2 and limiter.queued(KEY) == 3
    release.set()
    await asyncio.gather(*tasks)
    # FIFO: the queue was served oldest first.
    assert order == [0, 1, 2, 3, 4]
    # Idle repositories are forgotten: nothing grows with repositories seen.
    assert limiter.tracked == 0


async def test_other_repositories_are_not_held_up() -> None:
    limiter = RepositoryLimiter("mutator", limit=1, max_queued=10, queue_timeout=5)
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot(KEY):
            held.set()
            await release.wait()

    task = asyncio.create_task(hold())
    await held.wait()
    async with asyncio.timeout(0.5):
        async with limiter.slot(OTHER):
            pass
    release.set()
    await task


async def test_queue_timeout_is_resource_exhausted_and_frees_the_queue() -> None:
    limiter = RepositoryLimiter("expensive read", limit=1, max_queued=10, queue_timeout=0.2)
    release = asyncio.Event()
    held = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot(KEY):
            held.set()
            await release.wait()

    task = asyncio.create_task(hold())
    await held.wait()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ResourceExhausted) as error:
        async with limiter.slot(KEY):
            pytest.fail("admitted over the limit")
    assert 0.15 < loop.time() - started < 2
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "group/repo.git" in error.value.message and "retry later" in error.value.message
    assert limiter.queued(KEY) == 0
    release.set()
    await task
    assert limiter.tracked == 0


async def test_full_queue_is_refused_at_once() -> None:
    limiter = RepositoryLimiter("mutator", limit=1, max_queued=1, queue_timeout=5)
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot(KEY):
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(2)]  # one runs, one queues
    await asyncio.sleep(0.05)
    with pytest.raises(ResourceExhausted, match="maximum queue size"):
        async with asyncio.timeout(1):
            async with limiter.slot(KEY):
                pass
    release.set()
    await asyncio.gather(*tasks)


async def test_a_short_deadline_ends_the_wait_as_deadline_exceeded() -> None:
    limiter = RepositoryLimiter("mutator", limit=1, max_queued=5, queue_timeout=30)
    release = asyncio.Event()
    held = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot(KEY):
            held.set()
            await release.wait()

    task = asyncio.create_task(hold())
    await held.wait()
    with pytest.raises(DeadlineExceeded):
        async with limiter.slot(KEY, time_remaining=0.1):
            pass
    release.set()
    await task


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    limiter = RepositoryLimiter("mutator", limit=1, max_queued=5, queue_timeout=30)
    release = asyncio.Event()
    held = asyncio.Event()
    ran: list[str] = []

    async def hold() -> None:
        async with limiter.slot(KEY):
            held.set()
            await release.wait()

    async def wait(name: str) -> None:
        async with limiter.slot(KEY):
            ran.append(name)

    first = asyncio.create_task(hold())
    await held.wait()
    cancelled = asyncio.create_task(wait("cancelled"))
    later = asyncio.create_task(wait("later"))
    await asyncio.sleep(0.02)
    cancelled.cancel()
    await asyncio.sleep(0.02)
    release.set()
    await asyncio.gather(first, later)
    assert ran == ["later"]
    assert limiter.tracked == 0


async def test_zero_disables_the_limit() -> None:
    limiter = RepositoryLimiter("mutator", limit=0, max_queued=0, queue_timeout=0)
    async with limiter.slot(KEY), limiter.slot(KEY), limiter.slot(KEY):
        assert limiter.tracked == 0


async def test_drain_gate_refuses_new_calls_and_waits_for_running_ones() -> None:
    gate = DrainGate("proxy")
    with gate.enter():
        assert gate.inflight == 1
        gate.drain()
        with pytest.raises(Unavailable, match="shutting down"):
            with gate.enter():
                pass
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await gate.wait_idle()
    async with asyncio.timeout(1):
        await gate.wait_idle()
    assert gate.inflight == 0


def test_admission_classifies_by_op_type_and_expensive_reads() -> None:
    registry = MethodRegistry.from_descriptors()
    admission = Admission(LimitsConfig())
    for name in EXPENSIVE_READS:
        info = registry.get(name)
        assert info is not None and info.op is Op.ACCESSOR, name
        assert admission.limiter(name, mutator=False) is admission.reads
    assert admission.limiter("/gitaly.CommitService/FindCommit", mutator=False) is None
    assert admission.limiter("/gitaly.SSHService/SSHReceivePack", mutator=True) is (
        admission.mutators
    )


def _node(**limits: object) -> dict[str, object]:
    return {
        "listen": "127.0.0.1:0",
        "storages": [{"name": "s", "path": "/srv/s"}],
        "limits": limits,
    }


def _proxy(**limits: object) -> dict[str, object]:
    return {
        "listen": "127.0.0.1:0",
        "etcd": {"endpoints": ["127.0.0.1:2379"]},
        "virtual_storages": [{"name": "default", "nodes": [{"storage": "n", "address": "h:1"}]}],
        "limits": limits,
    }


def test_limits_defaults() -> None:
    node = node_config_from_dict({**_node(), "limits": None})
    proxy = proxy_config_from_dict({**_proxy(), "limits": None})
    assert node.limits == NODE_LIMITS and proxy.limits == PROXY_LIMITS
    # The nodes serve every proxy: they must not be the tighter limit.
    assert NODE_LIMITS.mutator_concurrency >= 2 * PROXY_LIMITS.mutator_concurrency
    assert NODE_LIMITS.read_concurrency >= 2 * PROXY_LIMITS.read_concurrency


def test_limits_are_read() -> None:
    config = proxy_config_from_dict(
        _proxy(
            max_message_size=1048576,
            mutator_concurrency=2,
            read_concurrency=0,
            max_queued=3,
            queue_timeout="250ms",
        )
    )
    assert config.limits == LimitsConfig(1048576, 2, 0, 3, 0.25)


def test_bad_limits_are_all_reported_with_their_path() -> None:
    with pytest.raises(ConfigError) as error:
        node_config_from_dict(
            _node(max_message_size=10, mutator_concurrency=-1, queue_timeout="soon", extra=1)
        )
    problems = "\n".join(error.value.problems)
    for path in (
        "limits.max_message_size",
        "limits.mutator_concurrency",
        "limits.queue_timeout",
        "limits.extra",
    ):
        assert path in problems
