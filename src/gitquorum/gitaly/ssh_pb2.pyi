from gitquorum.gitaly import lint_pb2 as _lint_pb2
from gitquorum.gitaly import shared_pb2 as _shared_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SSHUploadPackRequest(_message.Message):
    __slots__ = ("repository", "stdin", "git_config_options", "git_protocol")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    GIT_CONFIG_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    GIT_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    stdin: bytes
    git_config_options: _containers.RepeatedScalarFieldContainer[str]
    git_protocol: str
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., stdin: _Optional[bytes] = ..., git_config_options: _Optional[_Iterable[str]] = ..., git_protocol: _Optional[str] = ...) -> None: ...

class SSHUploadPackResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_status")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_status: _shared_pb2.ExitStatus
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_status: _Optional[_Union[_shared_pb2.ExitStatus, _Mapping]] = ...) -> None: ...

class SSHReceivePackRequest(_message.Message):
    __slots__ = ("repository", "stdin", "gl_id", "gl_repository", "gl_username", "git_protocol", "git_config_options")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    GL_ID_FIELD_NUMBER: _ClassVar[int]
    GL_REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    GL_USERNAME_FIELD_NUMBER: _ClassVar[int]
    GIT_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    GIT_CONFIG_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    stdin: bytes
    gl_id: str
    gl_repository: str
    gl_username: str
    git_protocol: str
    git_config_options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., stdin: _Optional[bytes] = ..., gl_id: _Optional[str] = ..., gl_repository: _Optional[str] = ..., gl_username: _Optional[str] = ..., git_protocol: _Optional[str] = ..., git_config_options: _Optional[_Iterable[str]] = ...) -> None: ...

class SSHReceivePackResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_status")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_status: _shared_pb2.ExitStatus
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_status: _Optional[_Union[_shared_pb2.ExitStatus, _Mapping]] = ...) -> None: ...

class SSHUploadArchiveRequest(_message.Message):
    __slots__ = ("repository", "stdin")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    stdin: bytes
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., stdin: _Optional[bytes] = ...) -> None: ...

class SSHUploadArchiveResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_status")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_status: _shared_pb2.ExitStatus
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_status: _Optional[_Union[_shared_pb2.ExitStatus, _Mapping]] = ...) -> None: ...
