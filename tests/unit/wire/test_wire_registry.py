"""The registry's repository fields: annotated or not, every one is found once, at start-up."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message

from gitquorum.gitaly import operations_pb2, repository_pb2, shared_pb2
from gitquorum.wire.registry import FieldPath, MethodInfo, MethodRegistry, Op

REGISTRY = MethodRegistry.from_descriptors()
SERVED = sorted(name for name, info in REGISTRY.methods.items() if info.op is not Op.INTERCEPTED)


def walked(info: MethodInfo, request: _message.Message) -> list[Any]:
    """The handler's former per-request walk: populated Repository fields besides the target."""
    found: list[Any] = []

    def walk(message: _message.Message, path: tuple[str, ...], depth: int) -> None:
        for field, value in message.ListFields():
            if field.message_type is None or field.is_repeated:
                continue
            here = (*path, field.name)
            if field.message_type.full_name == "gitaly.Repository":
                if here not in info.target_paths:
                    found.append(value)
            elif depth < 4 and not field.message_type.full_name.startswith("google.protobuf."):
                walk(value, here, depth + 1)

    walk(request, (), 0)
    return found


def repository_paths(message: _descriptor.Descriptor, depth: int = 0) -> list[FieldPath]:
    paths: list[FieldPath] = []
    for field in message.fields:
        if field.message_type is None or field.is_repeated:
            continue
        if field.message_type.full_name == "gitaly.Repository":
            paths.append((field.name,))
        elif depth < 4 and not field.message_type.full_name.startswith("google.protobuf."):
            paths += [(field.name, *sub) for sub in repository_paths(field.message_type, depth + 1)]
    return paths


def populated(info: MethodInfo) -> _message.Message:
    """A request with every singular Repository field set, each to a distinct path."""
    request = info.request_class()
    for number, path in enumerate(repository_paths(request.DESCRIPTOR)):
        node: Any = request
        for name in path:
            node = getattr(node, name)
        node.storage_name = "virtual"
        node.relative_path = f"repo-{number}.git"
    return request


def spelled(repositories: list[Any]) -> list[tuple[str, str]]:
    return sorted((r.storage_name, r.relative_path) for r in repositories)


@pytest.mark.parametrize("method", SERVED)
def test_additional_repositories_are_what_the_walk_found(method: str) -> None:
    info = REGISTRY.methods[method]
    request = populated(info)
    assert spelled(info.additional_repositories(request)) == spelled(walked(info, request))


@pytest.mark.parametrize("method", SERVED)
def test_an_empty_request_has_no_additional_repositories(method: str) -> None:
    info = REGISTRY.methods[method]
    assert info.additional_repositories(info.request_class()) == []


def test_unannotated_repository_fields_the_walk_relied_on() -> None:
    """Two served requests carry a Repository without ``additional_repository``:
    the registry keeps them, since the proxy rewrites or refuses them."""
    unannotated = {
        name: info.additional_paths
        for name, info in REGISTRY.methods.items()
        if info.op is not Op.INTERCEPTED and info.additional_paths
    }
    assert unannotated == {
        "/gitaly.OperationService/UserCommitFiles": (("header", "start_repository"),),
        "/gitaly.RepositoryService/ReplicateRepository": (("source",),),
    }


@pytest.mark.parametrize(
    ("request_message", "expected"),
    [
        (
            operations_pb2.UserCommitFilesRequest(
                header=operations_pb2.UserCommitFilesRequestHeader(
                    repository=shared_pb2.Repository(storage_name="v", relative_path="a.git"),
                    start_repository=shared_pb2.Repository(storage_name="v", relative_path="b.git"),
                )
            ),
            [("v", "b.git")],
        ),
        (
            operations_pb2.UserCommitFilesRequest(
                header=operations_pb2.UserCommitFilesRequestHeader(
                    repository=shared_pb2.Repository(storage_name="v", relative_path="a.git"),
                )
            ),
            [],
        ),
        (
            repository_pb2.ReplicateRepositoryRequest(
                repository=shared_pb2.Repository(storage_name="v", relative_path="a.git"),
                source=shared_pb2.Repository(storage_name="other", relative_path="a.git"),
            ),
            [("other", "a.git")],
        ),
        (repository_pb2.RepositoryExistsRequest(), []),
    ],
)
def test_additional_repositories_of_a_request(
    request_message: _message.Message, expected: list[tuple[str, str]]
) -> None:
    name = type(request_message).__name__.removesuffix("Request")
    (info,) = [i for i in REGISTRY.methods.values() if i.name == name]
    assert spelled(info.additional_repositories(request_message)) == expected


@pytest.mark.parametrize("method", SERVED)
def test_the_target_is_never_an_additional_repository(method: str) -> None:
    info = REGISTRY.methods[method]
    assert not set(info.target_paths) & set(info.additional_paths)
    assert len(set(info.additional_paths)) == len(info.additional_paths)
