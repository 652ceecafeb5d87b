from gitquorum.gitaly import lint_pb2 as _lint_pb2
from gitquorum.gitaly import shared_pb2 as _shared_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FindDefaultBranchNameRequest(_message.Message):
    __slots__ = ("repository", "head_only")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    HEAD_ONLY_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    head_only: bool
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., head_only: _Optional[bool] = ...) -> None: ...

class FindDefaultBranchNameResponse(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: bytes
    def __init__(self, name: _Optional[bytes] = ...) -> None: ...

class FindLocalBranchesRequest(_message.Message):
    __slots__ = ("repository", "sort_by", "pagination_params")
    class SortBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NAME: _ClassVar[FindLocalBranchesRequest.SortBy]
        UPDATED_ASC: _ClassVar[FindLocalBranchesRequest.SortBy]
        UPDATED_DESC: _ClassVar[FindLocalBranchesRequest.SortBy]
    NAME: FindLocalBranchesRequest.SortBy
    UPDATED_ASC: FindLocalBranchesRequest.SortBy
    UPDATED_DESC: FindLocalBranchesRequest.SortBy
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    SORT_BY_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_PARAMS_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    sort_by: FindLocalBranchesRequest.SortBy
    pagination_params: _shared_pb2.PaginationParameter
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., sort_by: _Optional[_Union[FindLocalBranchesRequest.SortBy, str]] = ..., pagination_params: _Optional[_Union[_shared_pb2.PaginationParameter, _Mapping]] = ...) -> None: ...

class FindLocalBranchesResponse(_message.Message):
    __slots__ = ("local_branches",)
    LOCAL_BRANCHES_FIELD_NUMBER: _ClassVar[int]
    local_branches: _containers.RepeatedCompositeFieldContainer[_shared_pb2.Branch]
    def __init__(self, local_branches: _Optional[_Iterable[_Union[_shared_pb2.Branch, _Mapping]]] = ...) -> None: ...

class RefExistsRequest(_message.Message):
    __slots__ = ("repository", "ref")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    ref: bytes
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., ref: _Optional[bytes] = ...) -> None: ...

class RefExistsResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: bool
    def __init__(self, value: _Optional[bool] = ...) -> None: ...

class FindBranchRequest(_message.Message):
    __slots__ = ("repository", "name")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    name: bytes
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., name: _Optional[bytes] = ...) -> None: ...

class FindBranchResponse(_message.Message):
    __slots__ = ("branch",)
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    branch: _shared_pb2.Branch
    def __init__(self, branch: _Optional[_Union[_shared_pb2.Branch, _Mapping]] = ...) -> None: ...

class UpdateReferencesRequest(_message.Message):
    __slots__ = ("repository", "updates")
    class Update(_message.Message):
        __slots__ = ("reference", "old_object_id", "new_object_id")
        REFERENCE_FIELD_NUMBER: _ClassVar[int]
        OLD_OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
        NEW_OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
        reference: bytes
        old_object_id: bytes
        new_object_id: bytes
        def __init__(self, reference: _Optional[bytes] = ..., old_object_id: _Optional[bytes] = ..., new_object_id: _Optional[bytes] = ...) -> None: ...
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    updates: _containers.RepeatedCompositeFieldContainer[UpdateReferencesRequest.Update]
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., updates: _Optional[_Iterable[_Union[UpdateReferencesRequest.Update, _Mapping]]] = ...) -> None: ...

class UpdateReferencesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteRefsRequest(_message.Message):
    __slots__ = ("repository", "except_with_prefix", "refs")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    EXCEPT_WITH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    except_with_prefix: _containers.RepeatedScalarFieldContainer[bytes]
    refs: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., except_with_prefix: _Optional[_Iterable[bytes]] = ..., refs: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DeleteRefsResponse(_message.Message):
    __slots__ = ("git_error",)
    GIT_ERROR_FIELD_NUMBER: _ClassVar[int]
    git_error: str
    def __init__(self, git_error: _Optional[str] = ...) -> None: ...

class ListRefsRequest(_message.Message):
    __slots__ = ("repository", "patterns", "head", "sort_by", "pointing_at_oids", "peel_tags", "pagination_params")
    class SortBy(_message.Message):
        __slots__ = ("key", "direction")
        class Key(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            REFNAME: _ClassVar[ListRefsRequest.SortBy.Key]
            CREATORDATE: _ClassVar[ListRefsRequest.SortBy.Key]
            AUTHORDATE: _ClassVar[ListRefsRequest.SortBy.Key]
            COMMITTERDATE: _ClassVar[ListRefsRequest.SortBy.Key]
        REFNAME: ListRefsRequest.SortBy.Key
        CREATORDATE: ListRefsRequest.SortBy.Key
        AUTHORDATE: ListRefsRequest.SortBy.Key
        COMMITTERDATE: ListRefsRequest.SortBy.Key
        KEY_FIELD_NUMBER: _ClassVar[int]
        DIRECTION_FIELD_NUMBER: _ClassVar[int]
        key: ListRefsRequest.SortBy.Key
        direction: _shared_pb2.SortDirection
        def __init__(self, key: _Optional[_Union[ListRefsRequest.SortBy.Key, str]] = ..., direction: _Optional[_Union[_shared_pb2.SortDirection, str]] = ...) -> None: ...
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    SORT_BY_FIELD_NUMBER: _ClassVar[int]
    POINTING_AT_OIDS_FIELD_NUMBER: _ClassVar[int]
    PEEL_TAGS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_PARAMS_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    patterns: _containers.RepeatedScalarFieldContainer[bytes]
    head: bool
    sort_by: ListRefsRequest.SortBy
    pointing_at_oids: _containers.RepeatedScalarFieldContainer[bytes]
    peel_tags: bool
    pagination_params: _shared_pb2.PaginationParameter
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., patterns: _Optional[_Iterable[bytes]] = ..., head: _Optional[bool] = ..., sort_by: _Optional[_Union[ListRefsRequest.SortBy, _Mapping]] = ..., pointing_at_oids: _Optional[_Iterable[bytes]] = ..., peel_tags: _Optional[bool] = ..., pagination_params: _Optional[_Union[_shared_pb2.PaginationParameter, _Mapping]] = ...) -> None: ...

class ListRefsResponse(_message.Message):
    __slots__ = ("references", "pagination_cursor")
    class Reference(_message.Message):
        __slots__ = ("name", "target", "peeled_target")
        NAME_FIELD_NUMBER: _ClassVar[int]
        TARGET_FIELD_NUMBER: _ClassVar[int]
        PEELED_TARGET_FIELD_NUMBER: _ClassVar[int]
        name: bytes
        target: str
        peeled_target: str
        def __init__(self, name: _Optional[bytes] = ..., target: _Optional[str] = ..., peeled_target: _Optional[str] = ...) -> None: ...
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_CURSOR_FIELD_NUMBER: _ClassVar[int]
    references: _containers.RepeatedCompositeFieldContainer[ListRefsResponse.Reference]
    pagination_cursor: _shared_pb2.PaginationCursor
    def __init__(self, references: _Optional[_Iterable[_Union[ListRefsResponse.Reference, _Mapping]]] = ..., pagination_cursor: _Optional[_Union[_shared_pb2.PaginationCursor, _Mapping]] = ...) -> None: ...
