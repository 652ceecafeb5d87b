"""The node's registration layer wraps every service or refuses it."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gitquorum.config import LimitsConfig
from gitquorum.limits import Admission
from gitquorum.metrics import RpcMetrics
from gitquorum.storage.server import _Finishing
from gitquorum.wire.registry import MethodRegistry


class _Server:
    def __init__(self) -> None:
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)


def _finishing() -> _Finishing:
    return _Finishing(
        RpcMetrics(CollectorRegistry(), "node"),
        MethodRegistry.from_descriptors(),
        Admission(LimitsConfig(), what="node"),
    )


def _handlers() -> dict[str, grpc.RpcMethodHandler]:
    return {"Check": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}


def test_a_service_given_only_in_generic_form_is_refused() -> None:
    wrap = _finishing()
    wrap.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("x.Only", _handlers()),))
    with pytest.raises(TypeError, match=r"x\.Only"):
        wrap.register(_Server())  # type: ignore[arg-type]


def test_a_generic_handler_without_a_service_is_refused() -> None:
    class Anonymous(grpc.GenericRpcHandler):
        def service(self, handler_call_details: Any) -> None:
            return None

    with pytest.raises(TypeError):
        _finishing().add_generic_rpc_handlers((Anonymous(),))


def test_a_service_in_both_forms_is_registered_wrapped() -> None:
    wrap = _finishing()
    wrap.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("x.Both", _handlers()),))
    wrap.add_registered_method_handlers("x.Both", _handlers())
    server = _Server()
    wrap.register(server)  # type: ignore[arg-type]
    assert server.registered == ["x.Both"]
