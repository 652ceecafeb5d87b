"""The proxy's first-message decoding, over random bytes and random valid messages.

Everything the proxy does with a client's first message before routing it —
``MethodInfo.decode``, ``target_repository``, the second-repository check,
timestamp pinning, path validation and ``rewrite`` — must either succeed or
raise a ``GitquorumError`` (a clear status), for every registered request type.
A rewritten message must name exactly the chosen node and replica path and
keep every other byte of meaning.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import message as _message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitquorum.errors import GitquorumError
from gitquorum.proxy.handler import (
    _check_other_repositories,
    _pin_timestamps,
    rewrite,
)
from gitquorum.wire.paths import validate_repository_path
from gitquorum.wire.registry import MethodInfo, MethodRegistry, Op
from tests.fuzz.strategies import messages

REGISTRY = MethodRegistry.from_descriptors()
ROUTED = sorted(name for name, info in REGISTRY.methods.items() if info.op is not Op.INTERCEPTED)
NODE = "node1"
REPLICA = "@cluster/repositories/ab/cd/42"
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _examine(info: MethodInfo, request: _message.Message) -> None:
    """What the handler does before routing; raises only GitquorumError."""
    original = request.SerializeToString()
    target = info.target_repository(request)
    virtual_storage = target.storage_name
    relative = validate_repository_path(target.relative_path)
    # A validated path is relative, normalized and free of parent components.
    assert relative and not relative.startswith("/")
    assert ".." not in relative.split("/") and "" not in relative.split("/")
    assert "\x00" not in relative and relative.split("/")[0] != "+gitquorum"
    _check_other_repositories(info, request, virtual_storage, relative)
    _pin_timestamps(request)
    payload = rewrite(info, request, NODE, REPLICA)
    rewritten = info.decode(payload)
    new_target = info.target_repository(rewritten)
    assert (new_target.storage_name, new_target.relative_path) == (NODE, REPLICA)
    # Nothing but the repository fields changed: undo them and compare.
    restored = _with_target(info, rewritten, target)
    expected = info.decode(original)
    _pin_timestamps(expected)
    for other in info.additional_repositories(expected):
        if other.storage_name == virtual_storage:
            other.storage_name, other.relative_path = NODE, REPLICA
    assert restored == expected


def _with_target(info: MethodInfo, request: _message.Message, target: Any) -> _message.Message:
    copy = type(request)()
    copy.CopyFrom(request)
    info.target_repository(copy).CopyFrom(target)
    return copy


def _run(info: MethodInfo, data: bytes) -> None:
    try:
        request = info.decode(data)
        _examine(info, request)
    except GitquorumError as exc:
        assert exc.message  # a clear status with a reason, never a crash


@pytest.mark.parametrize("method", ROUTED)
@SETTINGS
@given(data=st.binary(max_size=512))
def test_random_bytes(method: str, data: bytes) -> None:
    _run(REGISTRY.methods[method], data)


@pytest.mark.parametrize("method", ROUTED)
@SETTINGS
@given(data=st.data())
def test_random_valid_messages(method: str, data: st.DataObject) -> None:
    info = REGISTRY.methods[method]
    request = data.draw(messages(info.request_class.DESCRIPTOR))
    encoded = request.SerializeToString()
    assert info.decode(encoded) == request
    _run(info, encoded)


@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from(ROUTED), data=st.data())
def test_mutated_valid_messages(method: str, data: st.DataObject) -> None:
    """Valid messages with bytes flipped, cut or appended: the decoder's edge cases."""
    info = REGISTRY.methods[method]
    encoded = bytearray(data.draw(messages(info.request_class.DESCRIPTOR)).SerializeToString())
    for _ in range(data.draw(st.integers(0, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "append"]))
        if action == "flip" and encoded:
            i = data.draw(st.integers(0, len(encoded) - 1))
            encoded[i] = data.draw(st.integers(0, 255))
        elif action == "cut" and encoded:
            del encoded[data.draw(st.integers(0, len(encoded) - 1)) :]
        else:
            encoded += data.draw(st.binary(min_size=1, max_size=16))
    _run(info, bytes(encoded))


def test_every_routed_method_has_a_target() -> None:
    # The properties above would be vacuous for a method without a target field.
    for name in ROUTED:
        assert REGISTRY.methods[name].target_paths, name
