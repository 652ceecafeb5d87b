from gitquorum.gitaly import lint_pb2 as _lint_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfoResponse(_message.Message):
    __slots__ = ("server_version", "git_version", "storage_statuses")
    class StorageStatus(_message.Message):
        __slots__ = ("storage_name", "readable", "writeable", "fs_type", "filesystem_id", "replication_factor")
        STORAGE_NAME_FIELD_NUMBER: _ClassVar[int]
        READABLE_FIELD_NUMBER: _ClassVar[int]
        WRITEABLE_FIELD_NUMBER: _ClassVar[int]
        FS_TYPE_FIELD_NUMBER: _ClassVar[int]
        FILESYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
        REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
        storage_name: str
        readable: bool
        writeable: bool
        fs_type: str
        filesystem_id: str
        replication_factor: int
        def __init__(self, storage_name: _Optional[str] = ..., readable: _Optional[bool] = ..., writeable: _Optional[bool] = ..., fs_type: _Optional[str] = ..., filesystem_id: _Optional[str] = ..., replication_factor: _Optional[int] = ...) -> None: ...
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    GIT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STORAGE_STATUSES_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    git_version: str
    storage_statuses: _containers.RepeatedCompositeFieldContainer[ServerInfoResponse.StorageStatus]
    def __init__(self, server_version: _Optional[str] = ..., git_version: _Optional[str] = ..., storage_statuses: _Optional[_Iterable[_Union[ServerInfoResponse.StorageStatus, _Mapping]]] = ...) -> None: ...
