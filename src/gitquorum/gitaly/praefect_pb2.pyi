import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gitquorum.gitaly import lint_pb2 as _lint_pb2
from gitquorum.gitaly import shared_pb2 as _shared_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MarkUnverifiedRequest(_message.Message):
    __slots__ = ("repository_id", "virtual_storage", "storage")
    class Storage(_message.Message):
        __slots__ = ("virtual_storage", "storage")
        VIRTUAL_STORAGE_FIELD_NUMBER: _ClassVar[int]
        STORAGE_FIELD_NUMBER: _ClassVar[int]
        virtual_storage: str
        storage: str
        def __init__(self, virtual_storage: _Optional[str] = ..., storage: _Optional[str] = ...) -> None: ...
    REPOSITORY_ID_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_STORAGE_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    repository_id: int
    virtual_storage: str
    storage: MarkUnverifiedRequest.Storage
    def __init__(self, repository_id: _Optional[int] = ..., virtual_storage: _Optional[str] = ..., storage: _Optional[_Union[MarkUnverifiedRequest.Storage, _Mapping]] = ...) -> None: ...

class MarkUnverifiedResponse(_message.Message):
    __slots__ = ("replicas_marked",)
    REPLICAS_MARKED_FIELD_NUMBER: _ClassVar[int]
    replicas_marked: int
    def __init__(self, replicas_marked: _Optional[int] = ...) -> None: ...

class GetRepositoryMetadataRequest(_message.Message):
    __slots__ = ("repository_id", "path")
    class Path(_message.Message):
        __slots__ = ("virtual_storage", "relative_path")
        VIRTUAL_STORAGE_FIELD_NUMBER: _ClassVar[int]
        RELATIVE_PATH_FIELD_NUMBER: _ClassVar[int]
        virtual_storage: str
        relative_path: str
        def __init__(self, virtual_storage: _Optional[str] = ..., relative_path: _Optional[str] = ...) -> None: ...
    REPOSITORY_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    repository_id: int
    path: GetRepositoryMetadataRequest.Path
    def __init__(self, repository_id: _Optional[int] = ..., path: _Optional[_Union[GetRepositoryMetadataRequest.Path, _Mapping]] = ...) -> None: ...

class GetRepositoryMetadataResponse(_message.Message):
    __slots__ = ("repository_id", "virtual_storage", "relative_path", "replica_path", "primary", "generation", "replicas")
    class Replica(_message.Message):
        __slots__ = ("storage", "assigned", "generation", "healthy", "valid_primary", "verified_at")
        STORAGE_FIELD_NUMBER: _ClassVar[int]
        ASSIGNED_FIELD_NUMBER: _ClassVar[int]
        GENERATION_FIELD_NUMBER: _ClassVar[int]
        HEALTHY_FIELD_NUMBER: _ClassVar[int]
        VALID_PRIMARY_FIELD_NUMBER: _ClassVar[int]
        VERIFIED_AT_FIELD_NUMBER: _ClassVar[int]
        storage: str
        assigned: bool
        generation: int
        healthy: bool
        valid_primary: bool
        verified_at: _timestamp_pb2.Timestamp
        def __init__(self, storage: _Optional[str] = ..., assigned: _Optional[bool] = ..., generation: _Optional[int] = ..., healthy: _Optional[bool] = ..., valid_primary: _Optional[bool] = ..., verified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
    REPOSITORY_ID_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_STORAGE_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_PATH_FIELD_NUMBER: _ClassVar[int]
    REPLICA_PATH_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    repository_id: int
    virtual_storage: str
    relative_path: str
    replica_path: str
    primary: str
    generation: int
    replicas: _containers.RepeatedCompositeFieldContainer[GetRepositoryMetadataResponse.Replica]
    def __init__(self, repository_id: _Optional[int] = ..., virtual_storage: _Optional[str] = ..., relative_path: _Optional[str] = ..., replica_path: _Optional[str] = ..., primary: _Optional[str] = ..., generation: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[GetRepositoryMetadataResponse.Replica, _Mapping]]] = ...) -> None: ...

class SetReplicationFactorRequest(_message.Message):
    __slots__ = ("virtual_storage", "relative_path", "replication_factor")
    VIRTUAL_STORAGE_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_PATH_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    virtual_storage: str
    relative_path: str
    replication_factor: int
    def __init__(self, virtual_storage: _Optional[str] = ..., relative_path: _Optional[str] = ..., replication_factor: _Optional[int] = ...) -> None: ...

class SetReplicationFactorResponse(_message.Message):
    __slots__ = ("storages",)
    STORAGES_FIELD_NUMBER: _ClassVar[int]
    storages: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, storages: _Optional[_Iterable[str]] = ...) -> None: ...

class SetAuthoritativeStorageRequest(_message.Message):
    __slots__ = ("virtual_storage", "relative_path", "authoritative_storage")
    VIRTUAL_STORAGE_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_PATH_FIELD_NUMBER: _ClassVar[int]
    AUTHORITATIVE_STORAGE_FIELD_NUMBER: _ClassVar[int]
    virtual_storage: str
    relative_path: str
    authoritative_storage: str
    def __init__(self, virtual_storage: _Optional[str] = ..., relative_path: _Optional[str] = ..., authoritative_storage: _Optional[str] = ...) -> None: ...

class SetAuthoritativeStorageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DatalossRequest(_message.Message):
    __slots__ = ("virtual_storage", "include_partially_replicated")
    VIRTUAL_STORAGE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PARTIALLY_REPLICATED_FIELD_NUMBER: _ClassVar[int]
    virtual_storage: str
    include_partially_replicated: bool
    def __init__(self, virtual_storage: _Optional[str] = ..., include_partially_replicated: _Optional[bool] = ...) -> None: ...

class DatalossResponse(_message.Message):
    __slots__ = ("repositories",)
    class Repository(_message.Message):
        __slots__ = ("relative_path", "storages", "unavailable", "primary")
        class Storage(_message.Message):
            __slots__ = ("name", "behind_by", "assigned", "healthy", "valid_primary")
            NAME_FIELD_NUMBER: _ClassVar[int]
            BEHIND_BY_FIELD_NUMBER: _ClassVar[int]
            ASSIGNED_FIELD_NUMBER: _ClassVar[int]
            HEALTHY_FIELD_NUMBER: _ClassVar[int]
            VALID_PRIMARY_FIELD_NUMBER: _ClassVar[int]
            name: str
            behind_by: int
            assigned: bool
            healthy: bool
            valid_primary: bool
            def __init__(self, name: _Optional[str] = ..., behind_by: _Optional[int] = ..., assigned: _Optional[bool] = ..., healthy: _Optional[bool] = ..., valid_primary: _Optional[bool] = ...) -> None: ...
        RELATIVE_PATH_FIELD_NUMBER: _ClassVar[int]
        STORAGES_FIELD_NUMBER: _ClassVar[int]
        UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
        PRIMARY_FIELD_NUMBER: _ClassVar[int]
        relative_path: str
        storages: _containers.RepeatedCompositeFieldContainer[DatalossResponse.Repository.Storage]
        unavailable: bool
        primary: str
        def __init__(self, relative_path: _Optional[str] = ..., storages: _Optional[_Iterable[_Union[DatalossResponse.Repository.Storage, _Mapping]]] = ..., unavailable: _Optional[bool] = ..., primary: _Optional[str] = ...) -> None: ...
    REPOSITORIES_FIELD_NUMBER: _ClassVar[int]
    repositories: _containers.RepeatedCompositeFieldContainer[DatalossResponse.Repository]
    def __init__(self, repositories: _Optional[_Iterable[_Union[DatalossResponse.Repository, _Mapping]]] = ...) -> None: ...

class RepositoryReplicasRequest(_message.Message):
    __slots__ = ("repository",)
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ...) -> None: ...

class RepositoryReplicasResponse(_message.Message):
    __slots__ = ("primary", "replicas")
    class RepositoryDetails(_message.Message):
        __slots__ = ("repository", "checksum")
        REPOSITORY_FIELD_NUMBER: _ClassVar[int]
        CHECKSUM_FIELD_NUMBER: _ClassVar[int]
        repository: _shared_pb2.Repository
        checksum: str
        def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., checksum: _Optional[str] = ...) -> None: ...
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    primary: RepositoryReplicasResponse.RepositoryDetails
    replicas: _containers.RepeatedCompositeFieldContainer[RepositoryReplicasResponse.RepositoryDetails]
    def __init__(self, primary: _Optional[_Union[RepositoryReplicasResponse.RepositoryDetails, _Mapping]] = ..., replicas: _Optional[_Iterable[_Union[RepositoryReplicasResponse.RepositoryDetails, _Mapping]]] = ...) -> None: ...
