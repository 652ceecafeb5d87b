"""Coverage-guided fuzzing (atheris/libFuzzer) of the parsers of client data.

Run one target for as long as you like::

    python -m tests.fuzz.atheris_targets first_message -runs=100000
    python -m tests.fuzz.atheris_targets gateway_path -max_total_time=600

Targets: ``first_message`` (decode + target + path validation + rewrite of
every routed RPC; the first input byte picks the method), ``gateway_path``
(the HTTP gateway's URL path parser), ``config`` (YAML config loading) and
``body`` (gzip/deflate request-body decoding); ``all`` picks one per input.
An input that makes a target raise anything but its documented error is a
crash libFuzzer reports and saves. ``tests/fuzz/test_atheris.py`` runs ``all``
briefly when atheris is installed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import atheris

# Only our own code is instrumented: instrumenting grpc and protobuf costs minutes.
with atheris.instrument_imports(include=["gitquorum"]):
    import yaml
    from google.protobuf.message import DecodeError

    from gitquorum.config import node_config_from_dict, proxy_config_from_dict
    from gitquorum.errors import GitquorumError
    from gitquorum.gateway import body, paths
    from gitquorum.proxy.handler import (
        _check_other_repositories,
        _pin_timestamps,
        rewrite,
    )
    from gitquorum.wire.paths import validate_repository_path
    from gitquorum.wire.registry import MethodRegistry, Op

REGISTRY = MethodRegistry.from_descriptors()
ROUTED = sorted(n for n, i in REGISTRY.methods.items() if i.op is not Op.INTERCEPTED)


def first_message(data: bytes) -> None:
    """Raw bytes as a first message, or (guided) a message whose target the input spells."""
    provider = atheris.FuzzedDataProvider(data)
    info = REGISTRY.methods[ROUTED[provider.ConsumeIntInRange(0, len(ROUTED) - 1)]]
    structured = provider.ConsumeBool()
    try:
        if structured:
            # protobuf's parser is native code libFuzzer cannot see into: spell
            # the target repository from the input so path handling is explored.
            request = info.request_class()
            node = request
            for name in info.target_paths[0]:
                node = getattr(node, name)
            node.storage_name = provider.ConsumeUnicodeNoSurrogates(12)
            node.relative_path = provider.ConsumeUnicodeNoSurrogates(64)
            request.MergeFromString(provider.ConsumeBytes(provider.remaining_bytes()))
        else:
            request = info.decode(provider.ConsumeBytes(provider.remaining_bytes()))
        target = info.target_repository(request)
        relative = validate_repository_path(target.relative_path)
        _check_other_repositories(info, request, target.storage_name, relative)
        _pin_timestamps(request)
        rewritten = info.decode(rewrite(info, request, "node1", "@cluster/r/1"))
    except GitquorumError:
        return
    except DecodeError:
        if structured:  # MergeFromString of raw bytes: not the code under test
            return
        raise
    assert ".." not in relative.split("/") and not relative.startswith("/")
    new = info.target_repository(rewritten)
    assert (new.storage_name, new.relative_path) == ("node1", "@cluster/r/1")


_ENDPOINTS = ["/info/refs", "/git-upload-pack", "/git-receive-pack", ""]


def gateway_path(data: bytes) -> None:
    # The endpoint suffix comes from the first byte, so the fuzzer spends its
    # time on the repository part rather than on guessing "/info/refs".
    raw = data[1:].decode("latin-1") + (_ENDPOINTS[data[0] % 4] if data else "")
    try:
        target = paths.parse(raw)
    except (paths.InvalidPath, paths.UnknownEndpoint):
        return
    parts = target.relative_path.split("/")
    assert ".." not in parts and "" not in parts and "." not in parts


def config(data: bytes) -> None:
    try:
        document = yaml.safe_load(data)
    except (yaml.YAMLError, RecursionError, UnicodeDecodeError, ValueError):
        return
    for load in (node_config_from_dict, proxy_config_from_dict):
        try:
            load(document)
        except GitquorumError:
            pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, n: int = -1) -> bytes:
        chunk, self.data = self.data[:997], self.data[997:]
        return chunk


_LOOP = asyncio.new_event_loop()


def body_chunks(data: bytes) -> None:
    encoding = ["gzip", "deflate", ""][data[0] % 3] if data else ""

    async def run() -> None:
        async for chunk in body.chunks(_Reader(data[1:]), encoding, 4096):
            assert 0 < len(chunk) <= 4096

    try:
        _LOOP.run_until_complete(run())
    except body.BodyError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "first_message": first_message,
    "gateway_path": gateway_path,
    "config": config,
    "body": body_chunks,
}
_EACH = list(TARGETS.values())


def every_target(data: bytes) -> None:
    """All targets in one process (the first byte picks one): a cheap smoke run."""
    if data:
        _EACH[data[0] % len(_EACH)](data[1:])


TARGETS["all"] = every_target


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
