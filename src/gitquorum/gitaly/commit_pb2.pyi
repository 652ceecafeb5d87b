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

class ListCommitsRequest(_message.Message):
    __slots__ = ("repository", "revisions", "pagination_params", "order", "max_parents", "disable_walk", "first_parent", "after", "before", "author", "reverse", "ignore_case", "commit_message_patterns", "skip", "paths")
    class Order(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[ListCommitsRequest.Order]
        TOPO: _ClassVar[ListCommitsRequest.Order]
        DATE: _ClassVar[ListCommitsRequest.Order]
    NONE: ListCommitsRequest.Order
    TOPO: ListCommitsRequest.Order
    DATE: ListCommitsRequest.Order
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_PARAMS_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    MAX_PARENTS_FIELD_NUMBER: _ClassVar[int]
    DISABLE_WALK_FIELD_NUMBER: _ClassVar[int]
    FIRST_PARENT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    REVERSE_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CASE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_MESSAGE_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    revisions: _containers.RepeatedScalarFieldContainer[str]
    pagination_params: _shared_pb2.PaginationParameter
    order: ListCommitsRequest.Order
    max_parents: int
    disable_walk: bool
    first_parent: bool
    after: _timestamp_pb2.Timestamp
    before: _timestamp_pb2.Timestamp
    author: bytes
    reverse: bool
    ignore_case: bool
    commit_message_patterns: _containers.RepeatedScalarFieldContainer[bytes]
    skip: int
    paths: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., revisions: _Optional[_Iterable[str]] = ..., pagination_params: _Optional[_Union[_shared_pb2.PaginationParameter, _Mapping]] = ..., order: _Optional[_Union[ListCommitsRequest.Order, str]] = ..., max_parents: _Optional[int] = ..., disable_walk: _Optional[bool] = ..., first_parent: _Optional[bool] = ..., after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., author: _Optional[bytes] = ..., reverse: _Optional[bool] = ..., ignore_case: _Optional[bool] = ..., commit_message_patterns: _Optional[_Iterable[bytes]] = ..., skip: _Optional[int] = ..., paths: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ListCommitsResponse(_message.Message):
    __slots__ = ("commits", "pagination_cursor")
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_CURSOR_FIELD_NUMBER: _ClassVar[int]
    commits: _containers.RepeatedCompositeFieldContainer[_shared_pb2.GitCommit]
    pagination_cursor: _shared_pb2.PaginationCursor
    def __init__(self, commits: _Optional[_Iterable[_Union[_shared_pb2.GitCommit, _Mapping]]] = ..., pagination_cursor: _Optional[_Union[_shared_pb2.PaginationCursor, _Mapping]] = ...) -> None: ...

class CommitIsAncestorRequest(_message.Message):
    __slots__ = ("repository", "ancestor_id", "child_id")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    ANCESTOR_ID_FIELD_NUMBER: _ClassVar[int]
    CHILD_ID_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    ancestor_id: str
    child_id: str
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., ancestor_id: _Optional[str] = ..., child_id: _Optional[str] = ...) -> None: ...

class CommitIsAncestorResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: bool
    def __init__(self, value: _Optional[bool] = ...) -> None: ...

class TreeEntryRequest(_message.Message):
    __slots__ = ("repository", "revision", "path", "limit", "max_size")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    revision: bytes
    path: bytes
    limit: int
    max_size: int
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., revision: _Optional[bytes] = ..., path: _Optional[bytes] = ..., limit: _Optional[int] = ..., max_size: _Optional[int] = ...) -> None: ...

class TreeEntryResponse(_message.Message):
    __slots__ = ("type", "oid", "size", "mode", "data")
    class ObjectType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        COMMIT: _ClassVar[TreeEntryResponse.ObjectType]
        BLOB: _ClassVar[TreeEntryResponse.ObjectType]
        TREE: _ClassVar[TreeEntryResponse.ObjectType]
        TAG: _ClassVar[TreeEntryResponse.ObjectType]
    COMMIT: TreeEntryResponse.ObjectType
    BLOB: TreeEntryResponse.ObjectType
    TREE: TreeEntryResponse.ObjectType
    TAG: TreeEntryResponse.ObjectType
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    type: TreeEntryResponse.ObjectType
    oid: str
    size: int
    mode: int
    data: bytes
    def __init__(self, type: _Optional[_Union[TreeEntryResponse.ObjectType, str]] = ..., oid: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class CountCommitsRequest(_message.Message):
    __slots__ = ("repository", "revision", "after", "before", "path", "max_count", "all", "first_parent", "global_options", "revisions")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    FIRST_PARENT_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    revision: bytes
    after: _timestamp_pb2.Timestamp
    before: _timestamp_pb2.Timestamp
    path: bytes
    max_count: int
    all: bool
    first_parent: bool
    global_options: _shared_pb2.GlobalOptions
    revisions: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., revision: _Optional[bytes] = ..., after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., path: _Optional[bytes] = ..., max_count: _Optional[int] = ..., all: _Optional[bool] = ..., first_parent: _Optional[bool] = ..., global_options: _Optional[_Union[_shared_pb2.GlobalOptions, _Mapping]] = ..., revisions: _Optional[_Iterable[bytes]] = ...) -> None: ...

class CountCommitsResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class TreeEntry(_message.Message):
    __slots__ = ("oid", "path", "type", "mode", "commit_oid", "flat_path")
    class EntryType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        BLOB: _ClassVar[TreeEntry.EntryType]
        TREE: _ClassVar[TreeEntry.EntryType]
        COMMIT: _ClassVar[TreeEntry.EntryType]
    BLOB: TreeEntry.EntryType
    TREE: TreeEntry.EntryType
    COMMIT: TreeEntry.EntryType
    OID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_OID_FIELD_NUMBER: _ClassVar[int]
    FLAT_PATH_FIELD_NUMBER: _ClassVar[int]
    oid: str
    path: bytes
    type: TreeEntry.EntryType
    mode: int
    commit_oid: str
    flat_path: bytes
    def __init__(self, oid: _Optional[str] = ..., path: _Optional[bytes] = ..., type: _Optional[_Union[TreeEntry.EntryType, str]] = ..., mode: _Optional[int] = ..., commit_oid: _Optional[str] = ..., flat_path: _Optional[bytes] = ...) -> None: ...

class GetTreeEntriesRequest(_message.Message):
    __slots__ = ("repository", "revision", "path", "recursive", "sort", "pagination_params", "skip_flat_paths")
    class SortBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DEFAULT: _ClassVar[GetTreeEntriesRequest.SortBy]
        TREES_FIRST: _ClassVar[GetTreeEntriesRequest.SortBy]
    DEFAULT: GetTreeEntriesRequest.SortBy
    TREES_FIRST: GetTreeEntriesRequest.SortBy
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_PARAMS_FIELD_NUMBER: _ClassVar[int]
    SKIP_FLAT_PATHS_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    revision: bytes
    path: bytes
    recursive: bool
    sort: GetTreeEntriesRequest.SortBy
    pagination_params: _shared_pb2.PaginationParameter
    skip_flat_paths: bool
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., revision: _Optional[bytes] = ..., path: _Optional[bytes] = ..., recursive: _Optional[bool] = ..., sort: _Optional[_Union[GetTreeEntriesRequest.SortBy, str]] = ..., pagination_params: _Optional[_Union[_shared_pb2.PaginationParameter, _Mapping]] = ..., skip_flat_paths: _Optional[bool] = ...) -> None: ...

class GetTreeEntriesResponse(_message.Message):
    __slots__ = ("entries", "pagination_cursor")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_CURSOR_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[TreeEntry]
    pagination_cursor: _shared_pb2.PaginationCursor
    def __init__(self, entries: _Optional[_Iterable[_Union[TreeEntry, _Mapping]]] = ..., pagination_cursor: _Optional[_Union[_shared_pb2.PaginationCursor, _Mapping]] = ...) -> None: ...

class FindCommitRequest(_message.Message):
    __slots__ = ("repository", "revision", "trailers")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TRAILERS_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    revision: bytes
    trailers: bool
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., revision: _Optional[bytes] = ..., trailers: _Optional[bool] = ...) -> None: ...

class FindCommitResponse(_message.Message):
    __slots__ = ("commit",)
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    commit: _shared_pb2.GitCommit
    def __init__(self, commit: _Optional[_Union[_shared_pb2.GitCommit, _Mapping]] = ...) -> None: ...
