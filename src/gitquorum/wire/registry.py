"""The method registry: every served RPC's op type, scope and repository fields.

Built once at start-up from the protocol descriptors' annotations, so routing
follows the proto files rather than a hand-kept list. The proxy routes by it,
the node labels its metrics and limits its calls by it. A served method
without an op type (outside an intercepted service) is a configuration error
and the proxy refuses to start.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf import message_factory

import gitquorum.gitaly as gitaly_package
from gitquorum.errors import InvalidArgument
from gitquorum.gitaly import lint_pb2, shared_pb2

REPOSITORY_TYPE = "gitaly.Repository"


class Op(enum.Enum):
    ACCESSOR = "accessor"
    MUTATOR = "mutator"
    MAINTENANCE = "maintenance"
    INTERCEPTED = "intercepted"


class Scope(enum.Enum):
    REPOSITORY = "repository"
    STORAGE = "storage"


class Shape(enum.Enum):
    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"


FieldPath = tuple[str, ...]


@dataclass(frozen=True)
class MethodInfo:
    full_name: str  # "/gitaly.SSHService/SSHReceivePack"
    service: str
    name: str
    op: Op
    scope: Scope
    shape: Shape
    request_class: type[_message.Message]
    response_class: type[_message.Message]
    # Paths (field names from the request root) of fields marked target_repository.
    target_paths: tuple[FieldPath, ...]
    # Every other Repository field: those marked additional_repository, and
    # those without a mark (UserCommitFiles' start repository, ReplicateRepository's
    # source), which name a repository all the same and must be seen by the
    # proxy (rewritten or refused), not passed to a node unexamined.
    additional_paths: tuple[FieldPath, ...]
    storage_paths: tuple[FieldPath, ...]

    @property
    def client_streaming(self) -> bool:
        return self.shape in (Shape.STREAM_UNARY, Shape.STREAM_STREAM)

    def decode(self, data: bytes) -> _message.Message:
        request = self.request_class()
        try:
            request.ParseFromString(data)
        except _message.DecodeError as exc:
            raise InvalidArgument(f"malformed request for {self.full_name}: {exc}") from exc
        return request

    def target_repository(self, request: _message.Message) -> shared_pb2.Repository:
        """The single populated target repository of a (first) request message."""
        paths = self.target_paths
        if len(paths) == 1 and len(paths[0]) == 1:
            # Almost every RPC: one top-level ``repository`` field. Looked up
            # directly, on every call the proxy routes.
            name = paths[0][0]
            if not request.HasField(name):
                raise InvalidArgument("repository not set")
            return getattr(request, name)  # type: ignore[no-any-return]
        found = [repo for repo in _populated(request, paths)]
        if not found:
            raise InvalidArgument("repository not set")
        if len(found) > 1:
            raise InvalidArgument("target repository field is ambiguous")
        return found[0]

    def additional_repositories(self, request: _message.Message) -> list[shared_pb2.Repository]:
        """The populated Repository fields of a request besides its target (few RPCs have any)."""
        if not self.additional_paths:
            return []
        return list(_populated(request, self.additional_paths))


def _populated(request: _message.Message, paths: Iterable[FieldPath]) -> Iterable[Any]:
    for path in paths:
        node: _message.Message = request
        for name in path:
            if not node.HasField(name):
                break
            node = getattr(node, name)
        else:
            yield node


def _option(field: _descriptor.FieldDescriptor, extension: Any) -> bool:
    options = field.GetOptions()
    return bool(options.HasExtension(extension) and options.Extensions[extension])


def _field_paths(
    message: _descriptor.Descriptor, extension: Any, depth: int = 0
) -> list[FieldPath]:
    """Every path to a field carrying the extension, through nested messages."""
    if depth > 4:
        return []
    paths: list[FieldPath] = []
    for field in message.fields:
        if _option(field, extension):
            paths.append((field.name,))
        elif field.message_type is not None and not field.is_repeated:
            if field.message_type.full_name.startswith("google.protobuf."):
                continue
            for sub in _field_paths(field.message_type, extension, depth + 1):
                paths.append((field.name, *sub))
    return paths


def _repository_paths(message: _descriptor.Descriptor, depth: int = 0) -> list[FieldPath]:
    """Every path to a singular Repository field, annotated or not."""
    paths: list[FieldPath] = []
    for field in message.fields:
        if field.message_type is None or field.is_repeated:
            continue
        if field.message_type.full_name == REPOSITORY_TYPE:
            paths.append((field.name,))
        elif depth < 4 and not field.message_type.full_name.startswith("google.protobuf."):
            for sub in _repository_paths(field.message_type, depth + 1):
                paths.append((field.name, *sub))
    return paths


def additional_paths(
    method: _descriptor.MethodDescriptor, targets: Iterable[FieldPath]
) -> tuple[FieldPath, ...]:
    """Annotated additional repositories first, then every other non-target Repository field."""
    marked = _field_paths(method.input_type, lint_pb2.additional_repository)
    others = [p for p in _repository_paths(method.input_type) if p not in marked]
    excluded = set(targets)
    return tuple(p for p in (*marked, *others) if p not in excluded)


def _shape(method: _descriptor.MethodDescriptor) -> Shape:
    if method.client_streaming:
        return Shape.STREAM_STREAM if method.server_streaming else Shape.STREAM_UNARY
    return Shape.UNARY_STREAM if method.server_streaming else Shape.UNARY_UNARY


class UnannotatedMethod(Exception):
    pass


class MethodRegistry:
    def __init__(self, methods: dict[str, MethodInfo]) -> None:
        self.methods = methods

    def get(self, full_name: str) -> MethodInfo | None:
        return self.methods.get(full_name)

    @classmethod
    def from_descriptors(
        cls, files: Iterable[_descriptor.FileDescriptor] | None = None
    ) -> MethodRegistry:
        if files is None:
            files = _protocol_files()
        methods: dict[str, MethodInfo] = {}
        problems: list[str] = []
        for file in files:
            for service in file.services_by_name.values():
                svc_opts = service.GetOptions()
                intercepted = bool(
                    svc_opts.HasExtension(lint_pb2.intercepted)
                    and svc_opts.Extensions[lint_pb2.intercepted]
                )
                for method in service.methods:
                    full = f"/{service.full_name}/{method.name}"
                    opts = method.GetOptions()
                    if intercepted:
                        op, scope = Op.INTERCEPTED, Scope.STORAGE
                    elif opts.HasExtension(lint_pb2.op_type):
                        msg = opts.Extensions[lint_pb2.op_type]
                        if msg.op == lint_pb2.OperationMsg.UNKNOWN:
                            problems.append(f"{full}: op_type UNKNOWN")
                            continue
                        op = {
                            lint_pb2.OperationMsg.ACCESSOR: Op.ACCESSOR,
                            lint_pb2.OperationMsg.MUTATOR: Op.MUTATOR,
                            lint_pb2.OperationMsg.MAINTENANCE: Op.MAINTENANCE,
                        }[msg.op]
                        scope = (
                            Scope.STORAGE
                            if msg.scope_level == lint_pb2.OperationMsg.STORAGE
                            else Scope.REPOSITORY
                        )
                    else:
                        problems.append(f"{full}: no op_type annotation")
                        continue
                    targets = _field_paths(method.input_type, lint_pb2.target_repository)
                    if op is not Op.INTERCEPTED and scope is Scope.REPOSITORY and not targets:
                        problems.append(f"{full}: no target_repository field")
                        continue
                    methods[full] = MethodInfo(
                        full_name=full,
                        service=service.full_name,
                        name=method.name,
                        op=op,
                        scope=scope,
                        shape=_shape(method),
                        request_class=message_factory.GetMessageClass(method.input_type),
                        response_class=message_factory.GetMessageClass(method.output_type),
                        target_paths=tuple(targets),
                        additional_paths=additional_paths(method, targets),
                        storage_paths=tuple(_field_paths(method.input_type, lint_pb2.storage)),
                    )
        if problems:
            raise UnannotatedMethod("; ".join(problems))
        return cls(methods)


def _protocol_files() -> list[_descriptor.FileDescriptor]:
    files = []
    for module in pkgutil.iter_modules(gitaly_package.__path__):
        if module.name.endswith("_pb2"):
            files.append(importlib.import_module(f"gitquorum.gitaly.{module.name}").DESCRIPTOR)
    return files
