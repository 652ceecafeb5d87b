import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gitquorum.gitaly import lint_pb2 as _lint_pb2
from gitquorum.gitaly import shared_pb2 as _shared_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UserCreateBranchRequest(_message.Message):
    __slots__ = ("repository", "branch_name", "user", "start_point")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    BRANCH_NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    START_POINT_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    branch_name: bytes
    user: _shared_pb2.User
    start_point: bytes
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., branch_name: _Optional[bytes] = ..., user: _Optional[_Union[_shared_pb2.User, _Mapping]] = ..., start_point: _Optional[bytes] = ...) -> None: ...

class UserCreateBranchResponse(_message.Message):
    __slots__ = ("branch",)
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    branch: _shared_pb2.Branch
    def __init__(self, branch: _Optional[_Union[_shared_pb2.Branch, _Mapping]] = ...) -> None: ...

class UserDeleteBranchRequest(_message.Message):
    __slots__ = ("repository", "branch_name", "user", "expected_old_oid")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    BRANCH_NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OLD_OID_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    branch_name: bytes
    user: _shared_pb2.User
    expected_old_oid: str
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., branch_name: _Optional[bytes] = ..., user: _Optional[_Union[_shared_pb2.User, _Mapping]] = ..., expected_old_oid: _Optional[str] = ...) -> None: ...

class UserDeleteBranchResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UserCreateTagRequest(_message.Message):
    __slots__ = ("repository", "tag_name", "user", "target_revision", "message", "timestamp")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    TAG_NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TARGET_REVISION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    tag_name: bytes
    user: _shared_pb2.User
    target_revision: bytes
    message: bytes
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., tag_name: _Optional[bytes] = ..., user: _Optional[_Union[_shared_pb2.User, _Mapping]] = ..., target_revision: _Optional[bytes] = ..., message: _Optional[bytes] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UserCreateTagResponse(_message.Message):
    __slots__ = ("tag",)
    TAG_FIELD_NUMBER: _ClassVar[int]
    tag: _shared_pb2.Tag
    def __init__(self, tag: _Optional[_Union[_shared_pb2.Tag, _Mapping]] = ...) -> None: ...

class UserDeleteTagRequest(_message.Message):
    __slots__ = ("repository", "tag_name", "user", "expected_old_oid")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    TAG_NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OLD_OID_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    tag_name: bytes
    user: _shared_pb2.User
    expected_old_oid: str
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., tag_name: _Optional[bytes] = ..., user: _Optional[_Union[_shared_pb2.User, _Mapping]] = ..., expected_old_oid: _Optional[str] = ...) -> None: ...

class UserDeleteTagResponse(_message.Message):
    __slots__ = ("pre_receive_error",)
    PRE_RECEIVE_ERROR_FIELD_NUMBER: _ClassVar[int]
    pre_receive_error: str
    def __init__(self, pre_receive_error: _Optional[str] = ...) -> None: ...

class UserCommitFilesActionHeader(_message.Message):
    __slots__ = ("action", "file_path", "previous_path", "base64_content", "execute_filemode", "infer_content")
    class ActionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CREATE: _ClassVar[UserCommitFilesActionHeader.ActionType]
        CREATE_DIR: _ClassVar[UserCommitFilesActionHeader.ActionType]
        UPDATE: _ClassVar[UserCommitFilesActionHeader.ActionType]
        MOVE: _ClassVar[UserCommitFilesActionHeader.ActionType]
        DELETE: _ClassVar[UserCommitFilesActionHeader.ActionType]
        CHMOD: _ClassVar[UserCommitFilesActionHeader.ActionType]
    CREATE: UserCommitFilesActionHeader.ActionType
    CREATE_DIR: UserCommitFilesActionHeader.ActionType
    UPDATE: UserCommitFilesActionHeader.ActionType
    MOVE: UserCommitFilesActionHeader.ActionType
    DELETE: UserCommitFilesActionHeader.ActionType
    CHMOD: UserCommitFilesActionHeader.ActionType
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_PATH_FIELD_NUMBER: _ClassVar[int]
    BASE64_CONTENT_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_FILEMODE_FIELD_NUMBER: _ClassVar[int]
    INFER_CONTENT_FIELD_NUMBER: _ClassVar[int]
    action: UserCommitFilesActionHeader.ActionType
    file_path: bytes
    previous_path: bytes
    base64_content: bool
    execute_filemode: bool
    infer_content: bool
    def __init__(self, action: _Optional[_Union[UserCommitFilesActionHeader.ActionType, str]] = ..., file_path: _Optional[bytes] = ..., previous_path: _Optional[bytes] = ..., base64_content: _Optional[bool] = ..., execute_filemode: _Optional[bool] = ..., infer_content: _Optional[bool] = ...) -> None: ...

class UserCommitFilesAction(_message.Message):
    __slots__ = ("header", "content")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    header: UserCommitFilesActionHeader
    content: bytes
    def __init__(self, header: _Optional[_Union[UserCommitFilesActionHeader, _Mapping]] = ..., content: _Optional[bytes] = ...) -> None: ...

class UserCommitFilesRequestHeader(_message.Message):
    __slots__ = ("repository", "user", "branch_name", "commit_message", "commit_author_name", "commit_author_email", "start_branch_name", "start_repository", "force", "start_sha", "timestamp", "expected_old_oid", "sign")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    BRANCH_NAME_FIELD_NUMBER: _ClassVar[int]
    COMMIT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_AUTHOR_NAME_FIELD_NUMBER: _ClassVar[int]
    COMMIT_AUTHOR_EMAIL_FIELD_NUMBER: _ClassVar[int]
    START_BRANCH_NAME_FIELD_NUMBER: _ClassVar[int]
    START_REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    START_SHA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OLD_OID_FIELD_NUMBER: _ClassVar[int]
    SIGN_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    user: _shared_pb2.User
    branch_name: bytes
    commit_message: bytes
    commit_author_name: bytes
    commit_author_email: bytes
    start_branch_name: bytes
    start_repository: _shared_pb2.Repository
    force: bool
    start_sha: str
    timestamp: _timestamp_pb2.Timestamp
    expected_old_oid: str
    sign: bool
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., user: _Optional[_Union[_shared_pb2.User, _Mapping]] = ..., branch_name: _Optional[bytes] = ..., commit_message: _Optional[bytes] = ..., commit_author_name: _Optional[bytes] = ..., commit_author_email: _Optional[bytes] = ..., start_branch_name: _Optional[bytes] = ..., start_repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., force: _Optional[bool] = ..., start_sha: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expected_old_oid: _Optional[str] = ..., sign: _Optional[bool] = ...) -> None: ...

class UserCommitFilesRequest(_message.Message):
    __slots__ = ("header", "action")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    header: UserCommitFilesRequestHeader
    action: UserCommitFilesAction
    def __init__(self, header: _Optional[_Union[UserCommitFilesRequestHeader, _Mapping]] = ..., action: _Optional[_Union[UserCommitFilesAction, _Mapping]] = ...) -> None: ...

class OperationBranchUpdate(_message.Message):
    __slots__ = ("commit_id", "repo_created", "branch_created")
    COMMIT_ID_FIELD_NUMBER: _ClassVar[int]
    REPO_CREATED_FIELD_NUMBER: _ClassVar[int]
    BRANCH_CREATED_FIELD_NUMBER: _ClassVar[int]
    commit_id: str
    repo_created: bool
    branch_created: bool
    def __init__(self, commit_id: _Optional[str] = ..., repo_created: _Optional[bool] = ..., branch_created: _Optional[bool] = ...) -> None: ...

class UserCommitFilesResponse(_message.Message):
    __slots__ = ("branch_update", "index_error", "pre_receive_error")
    BRANCH_UPDATE_FIELD_NUMBER: _ClassVar[int]
    INDEX_ERROR_FIELD_NUMBER: _ClassVar[int]
    PRE_RECEIVE_ERROR_FIELD_NUMBER: _ClassVar[int]
    branch_update: OperationBranchUpdate
    index_error: str
    pre_receive_error: str
    def __init__(self, branch_update: _Optional[_Union[OperationBranchUpdate, _Mapping]] = ..., index_error: _Optional[str] = ..., pre_receive_error: _Optional[str] = ...) -> None: ...
