from gitquorum.gitaly import lint_pb2 as _lint_pb2
from gitquorum.gitaly import shared_pb2 as _shared_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VoteTransactionRequest(_message.Message):
    __slots__ = ("repository", "transaction_id", "node", "reference_updates_hash", "phase")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN_PHASE: _ClassVar[VoteTransactionRequest.Phase]
        PREPARED_PHASE: _ClassVar[VoteTransactionRequest.Phase]
        COMMITTED_PHASE: _ClassVar[VoteTransactionRequest.Phase]
        SYNCHRONIZED_PHASE: _ClassVar[VoteTransactionRequest.Phase]
    UNKNOWN_PHASE: VoteTransactionRequest.Phase
    PREPARED_PHASE: VoteTransactionRequest.Phase
    COMMITTED_PHASE: VoteTransactionRequest.Phase
    SYNCHRONIZED_PHASE: VoteTransactionRequest.Phase
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_UPDATES_HASH_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    transaction_id: int
    node: str
    reference_updates_hash: bytes
    phase: VoteTransactionRequest.Phase
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., transaction_id: _Optional[int] = ..., node: _Optional[str] = ..., reference_updates_hash: _Optional[bytes] = ..., phase: _Optional[_Union[VoteTransactionRequest.Phase, str]] = ...) -> None: ...

class VoteTransactionResponse(_message.Message):
    __slots__ = ("state",)
    class TransactionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        COMMIT: _ClassVar[VoteTransactionResponse.TransactionState]
        ABORT: _ClassVar[VoteTransactionResponse.TransactionState]
        STOP: _ClassVar[VoteTransactionResponse.TransactionState]
    COMMIT: VoteTransactionResponse.TransactionState
    ABORT: VoteTransactionResponse.TransactionState
    STOP: VoteTransactionResponse.TransactionState
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: VoteTransactionResponse.TransactionState
    def __init__(self, state: _Optional[_Union[VoteTransactionResponse.TransactionState, str]] = ...) -> None: ...

class StopTransactionRequest(_message.Message):
    __slots__ = ("repository", "transaction_id")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    transaction_id: int
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., transaction_id: _Optional[int] = ...) -> None: ...

class StopTransactionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
