"""The node wraps each method once at start-up: every method, and nothing left unwrapped."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gitquorum.config import node_config_from_dict
from gitquorum.gitaly import ref_pb2_grpc
from gitquorum.limits import Admission
from gitquorum.metrics import RpcMetrics
from gitquorum.storage.server import _Finishing
from gitquorum.wire.registry import MethodRegistry


class Recorder:
    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered[service] = handlers


def finishing() -> _Finishing:
    storages = [{"name": "default", "path": "/nonexistent"}]
    config = node_config_from_dict({"listen": "127.0.0.1:0", "storages": storages})
    return _Finishing(
        RpcMetrics(CollectorRegistry(), "node"),
        MethodRegistry.from_descriptors(),
        Admission(config.limits, what="node"),
    )


def test_every_method_is_registered_wrapped() -> None:
    wrap, plain, server = finishing(), Recorder(), Recorder()
    ref_pb2_grpc.add_RefServiceServicer_to_server(ref_pb2_grpc.RefServiceServicer(), plain)
    ref_pb2_grpc.add_RefServiceServicer_to_server(ref_pb2_grpc.RefServiceServicer(), wrap)
    wrap.register(server)  # type: ignore[arg-type]
    original = plain.registered["gitaly.RefService"]
    wrapped = server.registered["gitaly.RefService"]
    assert set(wrapped) == set(original)
    for name, handler in wrapped.items():
        before = original[name]
        assert handler.response_serializer is before.response_serializer
        behaviours = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        assert [bool(getattr(handler, b)) for b in behaviours] == [
            bool(getattr(before, b)) for b in behaviours
        ]
        assert handler.unary_unary is not before.unary_unary or handler.unary_unary is None
    assert len(server.generic) == 1


def test_a_service_offered_only_as_a_generic_handler_is_refused() -> None:
    wrap = finishing()
    wrap.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("x.Only", {}),))
    with pytest.raises(TypeError, match=r"x\.Only"):
        wrap.register(Recorder())  # type: ignore[arg-type]
