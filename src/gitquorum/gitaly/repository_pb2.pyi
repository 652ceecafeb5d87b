import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gitquorum.gitaly import lint_pb2 as _lint_pb2
from gitquorum.gitaly import shared_pb2 as _shared_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RepositoryExistsRequest(_message.Message):
    __slots__ = ("repository",)
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ...) -> None: ...

class RepositoryExistsResponse(_message.Message):
    __slots__ = ("exists",)
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    def __init__(self, exists: _Optional[bool] = ...) -> None: ...

class RepositorySizeRequest(_message.Message):
    __slots__ = ("repository",)
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ...) -> None: ...

class RepositorySizeResponse(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class RepositoryInfoRequest(_message.Message):
    __slots__ = ("repository",)
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ...) -> None: ...

class RepositoryInfoResponse(_message.Message):
    __slots__ = ("size", "references", "objects", "commit_graph", "bitmap", "multi_pack_index", "multi_pack_index_bitmap", "alternates", "is_object_pool", "last_full_repack")
    class ReferencesInfo(_message.Message):
        __slots__ = ("loose_count", "packed_size", "reference_backend")
        class ReferenceBackend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            REFERENCE_BACKEND_UNSPECIFIED: _ClassVar[RepositoryInfoResponse.ReferencesInfo.ReferenceBackend]
            REFERENCE_BACKEND_FILES: _ClassVar[RepositoryInfoResponse.ReferencesInfo.ReferenceBackend]
            REFERENCE_BACKEND_REFTABLE: _ClassVar[RepositoryInfoResponse.ReferencesInfo.ReferenceBackend]
        REFERENCE_BACKEND_UNSPECIFIED: RepositoryInfoResponse.ReferencesInfo.ReferenceBackend
        REFERENCE_BACKEND_FILES: RepositoryInfoResponse.ReferencesInfo.ReferenceBackend
        REFERENCE_BACKEND_REFTABLE: RepositoryInfoResponse.ReferencesInfo.ReferenceBackend
        LOOSE_COUNT_FIELD_NUMBER: _ClassVar[int]
        PACKED_SIZE_FIELD_NUMBER: _ClassVar[int]
        REFERENCE_BACKEND_FIELD_NUMBER: _ClassVar[int]
        loose_count: int
        packed_size: int
        reference_backend: RepositoryInfoResponse.ReferencesInfo.ReferenceBackend
        def __init__(self, loose_count: _Optional[int] = ..., packed_size: _Optional[int] = ..., reference_backend: _Optional[_Union[RepositoryInfoResponse.ReferencesInfo.ReferenceBackend, str]] = ...) -> None: ...
    class ObjectsInfo(_message.Message):
        __slots__ = ("size", "recent_size", "stale_size", "keep_size", "packfile_count", "reverse_index_count", "cruft_count", "keep_count", "loose_objects_count", "stale_loose_objects_count", "loose_objects_garbage_count")
        SIZE_FIELD_NUMBER: _ClassVar[int]
        RECENT_SIZE_FIELD_NUMBER: _ClassVar[int]
        STALE_SIZE_FIELD_NUMBER: _ClassVar[int]
        KEEP_SIZE_FIELD_NUMBER: _ClassVar[int]
        PACKFILE_COUNT_FIELD_NUMBER: _ClassVar[int]
        REVERSE_INDEX_COUNT_FIELD_NUMBER: _ClassVar[int]
        CRUFT_COUNT_FIELD_NUMBER: _ClassVar[int]
        KEEP_COUNT_FIELD_NUMBER: _ClassVar[int]
        LOOSE_OBJECTS_COUNT_FIELD_NUMBER: _ClassVar[int]
        STALE_LOOSE_OBJECTS_COUNT_FIELD_NUMBER: _ClassVar[int]
        LOOSE_OBJECTS_GARBAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
        size: int
        recent_size: int
        stale_size: int
        keep_size: int
        packfile_count: int
        reverse_index_count: int
        cruft_count: int
        keep_count: int
        loose_objects_count: int
        stale_loose_objects_count: int
        loose_objects_garbage_count: int
        def __init__(self, size: _Optional[int] = ..., recent_size: _Optional[int] = ..., stale_size: _Optional[int] = ..., keep_size: _Optional[int] = ..., packfile_count: _Optional[int] = ..., reverse_index_count: _Optional[int] = ..., cruft_count: _Optional[int] = ..., keep_count: _Optional[int] = ..., loose_objects_count: _Optional[int] = ..., stale_loose_objects_count: _Optional[int] = ..., loose_objects_garbage_count: _Optional[int] = ...) -> None: ...
    class CommitGraphInfo(_message.Message):
        __slots__ = ("commit_graph_chain_length", "has_bloom_filters", "has_generation_data", "has_generation_data_overflow")
        COMMIT_GRAPH_CHAIN_LENGTH_FIELD_NUMBER: _ClassVar[int]
        HAS_BLOOM_FILTERS_FIELD_NUMBER: _ClassVar[int]
        HAS_GENERATION_DATA_FIELD_NUMBER: _ClassVar[int]
        HAS_GENERATION_DATA_OVERFLOW_FIELD_NUMBER: _ClassVar[int]
        commit_graph_chain_length: int
        has_bloom_filters: bool
        has_generation_data: bool
        has_generation_data_overflow: bool
        def __init__(self, commit_graph_chain_length: _Optional[int] = ..., has_bloom_filters: _Optional[bool] = ..., has_generation_data: _Optional[bool] = ..., has_generation_data_overflow: _Optional[bool] = ...) -> None: ...
    class BitmapInfo(_message.Message):
        __slots__ = ("has_hash_cache", "has_lookup_table", "version")
        HAS_HASH_CACHE_FIELD_NUMBER: _ClassVar[int]
        HAS_LOOKUP_TABLE_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        has_hash_cache: bool
        has_lookup_table: bool
        version: int
        def __init__(self, has_hash_cache: _Optional[bool] = ..., has_lookup_table: _Optional[bool] = ..., version: _Optional[int] = ...) -> None: ...
    class MultiPackIndexInfo(_message.Message):
        __slots__ = ("packfile_count", "version", "has_large_offsets", "has_bitmapped_packs", "has_reverse_index")
        PACKFILE_COUNT_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        HAS_LARGE_OFFSETS_FIELD_NUMBER: _ClassVar[int]
        HAS_BITMAPPED_PACKS_FIELD_NUMBER: _ClassVar[int]
        HAS_REVERSE_INDEX_FIELD_NUMBER: _ClassVar[int]
        packfile_count: int
        version: int
        has_large_offsets: bool
        has_bitmapped_packs: bool
        has_reverse_index: bool
        def __init__(self, packfile_count: _Optional[int] = ..., version: _Optional[int] = ..., has_large_offsets: _Optional[bool] = ..., has_bitmapped_packs: _Optional[bool] = ..., has_reverse_index: _Optional[bool] = ...) -> None: ...
    class AlternatesInfo(_message.Message):
        __slots__ = ("object_directories", "last_modified")
        OBJECT_DIRECTORIES_FIELD_NUMBER: _ClassVar[int]
        LAST_MODIFIED_FIELD_NUMBER: _ClassVar[int]
        object_directories: _containers.RepeatedScalarFieldContainer[str]
        last_modified: _timestamp_pb2.Timestamp
        def __init__(self, object_directories: _Optional[_Iterable[str]] = ..., last_modified: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_GRAPH_FIELD_NUMBER: _ClassVar[int]
    BITMAP_FIELD_NUMBER: _ClassVar[int]
    MULTI_PACK_INDEX_FIELD_NUMBER: _ClassVar[int]
    MULTI_PACK_INDEX_BITMAP_FIELD_NUMBER: _ClassVar[int]
    ALTERNATES_FIELD_NUMBER: _ClassVar[int]
    IS_OBJECT_POOL_FIELD_NUMBER: _ClassVar[int]
    LAST_FULL_REPACK_FIELD_NUMBER: _ClassVar[int]
    size: int
    references: RepositoryInfoResponse.ReferencesInfo
    objects: RepositoryInfoResponse.ObjectsInfo
    commit_graph: RepositoryInfoResponse.CommitGraphInfo
    bitmap: RepositoryInfoResponse.BitmapInfo
    multi_pack_index: RepositoryInfoResponse.MultiPackIndexInfo
    multi_pack_index_bitmap: RepositoryInfoResponse.BitmapInfo
    alternates: RepositoryInfoResponse.AlternatesInfo
    is_object_pool: bool
    last_full_repack: _timestamp_pb2.Timestamp
    def __init__(self, size: _Optional[int] = ..., references: _Optional[_Union[RepositoryInfoResponse.ReferencesInfo, _Mapping]] = ..., objects: _Optional[_Union[RepositoryInfoResponse.ObjectsInfo, _Mapping]] = ..., commit_graph: _Optional[_Union[RepositoryInfoResponse.CommitGraphInfo, _Mapping]] = ..., bitmap: _Optional[_Union[RepositoryInfoResponse.BitmapInfo, _Mapping]] = ..., multi_pack_index: _Optional[_Union[RepositoryInfoResponse.MultiPackIndexInfo, _Mapping]] = ..., multi_pack_index_bitmap: _Optional[_Union[RepositoryInfoResponse.BitmapInfo, _Mapping]] = ..., alternates: _Optional[_Union[RepositoryInfoResponse.AlternatesInfo, _Mapping]] = ..., is_object_pool: _Optional[bool] = ..., last_full_repack: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OptimizeRepositoryRequest(_message.Message):
    __slots__ = ("repository", "strategy")
    class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STRATEGY_UNSPECIFIED: _ClassVar[OptimizeRepositoryRequest.Strategy]
        STRATEGY_HEURISTICAL: _ClassVar[OptimizeRepositoryRequest.Strategy]
        STRATEGY_EAGER: _ClassVar[OptimizeRepositoryRequest.Strategy]
        STRATEGY_OFFLOADING: _ClassVar[OptimizeRepositoryRequest.Strategy]
        STRATEGY_REHYDRATION: _ClassVar[OptimizeRepositoryRequest.Strategy]
    STRATEGY_UNSPECIFIED: OptimizeRepositoryRequest.Strategy
    STRATEGY_HEURISTICAL: OptimizeRepositoryRequest.Strategy
    STRATEGY_EAGER: OptimizeRepositoryRequest.Strategy
    STRATEGY_OFFLOADING: OptimizeRepositoryRequest.Strategy
    STRATEGY_REHYDRATION: OptimizeRepositoryRequest.Strategy
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    strategy: OptimizeRepositoryRequest.Strategy
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., strategy: _Optional[_Union[OptimizeRepositoryRequest.Strategy, str]] = ...) -> None: ...

class OptimizeRepositoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WriteRefRequest(_message.Message):
    __slots__ = ("repository", "ref", "revision", "old_revision")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    OLD_REVISION_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    ref: bytes
    revision: bytes
    old_revision: bytes
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., ref: _Optional[bytes] = ..., revision: _Optional[bytes] = ..., old_revision: _Optional[bytes] = ...) -> None: ...

class WriteRefResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateRepositoryRequest(_message.Message):
    __slots__ = ("repository", "default_branch", "object_format")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BRANCH_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    default_branch: bytes
    object_format: _shared_pb2.ObjectFormat
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., default_branch: _Optional[bytes] = ..., object_format: _Optional[_Union[_shared_pb2.ObjectFormat, str]] = ...) -> None: ...

class CreateRepositoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateBundleRequest(_message.Message):
    __slots__ = ("repository",)
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ...) -> None: ...

class CreateBundleResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class CreateRepositoryFromBundleRequest(_message.Message):
    __slots__ = ("repository", "data")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    data: bytes
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CreateRepositoryFromBundleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CalculateChecksumRequest(_message.Message):
    __slots__ = ("repository",)
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ...) -> None: ...

class CalculateChecksumResponse(_message.Message):
    __slots__ = ("checksum",)
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    checksum: str
    def __init__(self, checksum: _Optional[str] = ...) -> None: ...

class GetSnapshotRequest(_message.Message):
    __slots__ = ("repository",)
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ...) -> None: ...

class GetSnapshotResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RemoveRepositoryRequest(_message.Message):
    __slots__ = ("repository",)
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ...) -> None: ...

class RemoveRepositoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicateRepositoryRequest(_message.Message):
    __slots__ = ("repository", "source")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    source: _shared_pb2.Repository
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., source: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ...) -> None: ...

class ReplicateRepositoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
