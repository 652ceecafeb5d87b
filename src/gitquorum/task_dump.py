"""What a running process is waiting on: every asyncio task and its await chain.

A repair that never finishes, a write that never answers: the process is up,
its logs are quiet, and nothing says which ``await`` it sits in. On SIGUSR1
(``lifecycle.run_until_signalled``) a server logs one ``task dump`` line
listing every task of its event loop with the chain of coroutines it is
suspended in, innermost last (``file:line function`` each), so that an
operator (or the fault suite, on a repository that did not converge) can see
where it waits without stopping it.

``Task.get_stack`` gives only the outermost frame of a suspended coroutine;
the chain is followed here through ``cr_await`` (and its generator and
async-generator equivalents) instead.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from gitquorum import log

# Deeper chains are cut: a dump must stay one readable log line per process.
MAX_DEPTH = 24
MAX_TASKS = 500

logger = log.get("gitquorum.tasks")


def _frame_of(awaitable: Any) -> Any:
    for name in ("cr_frame", "gi_frame", "ag_frame"):
        frame = getattr(awaitable, name, None)
        if frame is not None:
            return frame
    return None


def _awaited_by(awaitable: Any) -> Any:
    for name in ("cr_await", "gi_yieldfrom", "ag_await"):
        inner = getattr(awaitable, name, None)
        if inner is not None:
            return inner
    return None


def await_chain(awaitable: Any) -> list[str]:
    """Where ``awaitable`` (a coroutine, generator or async generator) is
    suspended: ``file:line function`` per coroutine, outermost first, ending
    with what the innermost one awaits when that is not a coroutine (a
    Future, a Condition's waiter...)."""
    chain: list[str] = []
    current = awaitable
    while current is not None and len(chain) < MAX_DEPTH:
        frame = _frame_of(current)
        if frame is None:
            chain.append(type(current).__qualname__)
            break
        code = frame.f_code
        path = os.path.join(*code.co_filename.split(os.sep)[-2:])
        chain.append(f"{path}:{frame.f_lineno} {code.co_qualname}")
        current = _awaited_by(current)
    return chain


def task_stacks() -> list[dict[str, object]]:
    """Every task of the running loop, by name, with its await chain."""
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())[:MAX_TASKS]
    return [
        {"task": task.get_name(), "waits": await_chain(task.get_coro())}
        for task in tasks
        if not task.done()
    ]


def log_task_dump() -> None:
    """Log the dump (a signal handler: runs on the loop, between its callbacks)."""
    stacks = task_stacks()
    logger.warning("task dump", extra=log.fields(task_count=len(stacks), tasks=stacks))
