import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from licensing.v1 import attestation_pb2 as _attestation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_ACCEPTED: _ClassVar[Phase]
    PHASE_SCHEDULED: _ClassVar[Phase]
    PHASE_RUNNING: _ClassVar[Phase]
    PHASE_CERTIFICATE_ISSUED: _ClassVar[Phase]
    PHASE_READY: _ClassVar[Phase]
    PHASE_ATTESTING: _ClassVar[Phase]
    PHASE_ATTESTED: _ClassVar[Phase]
    PHASE_FAILED: _ClassVar[Phase]
    PHASE_DELETED: _ClassVar[Phase]
PHASE_UNSPECIFIED: Phase
PHASE_ACCEPTED: Phase
PHASE_SCHEDULED: Phase
PHASE_RUNNING: Phase
PHASE_CERTIFICATE_ISSUED: Phase
PHASE_READY: Phase
PHASE_ATTESTING: Phase
PHASE_ATTESTED: Phase
PHASE_FAILED: Phase
PHASE_DELETED: Phase

class Enclave(_message.Message):
    __slots__ = ("id", "owner", "phase", "endpoint", "tls_server_name", "certificate_pem", "create_time", "expire_time", "request_id", "failure_reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TLS_SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    owner: str
    phase: Phase
    endpoint: str
    tls_server_name: str
    certificate_pem: str
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    request_id: str
    failure_reason: str
    def __init__(self, id: _Optional[str] = ..., owner: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., endpoint: _Optional[str] = ..., tls_server_name: _Optional[str] = ..., certificate_pem: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., failure_reason: _Optional[str] = ...) -> None: ...

class CreateEnclaveRequest(_message.Message):
    __slots__ = ("request_id", "nonce")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    nonce: bytes
    def __init__(self, request_id: _Optional[str] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class CreateEnclaveResponse(_message.Message):
    __slots__ = ("enclave_id", "phase", "message", "sequence", "time", "enclave", "attestation")
    ENCLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ENCLAVE_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    enclave_id: str
    phase: Phase
    message: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    enclave: Enclave
    attestation: _attestation_pb2.Attestation
    def __init__(self, enclave_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., message: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., enclave: _Optional[_Union[Enclave, _Mapping]] = ..., attestation: _Optional[_Union[_attestation_pb2.Attestation, _Mapping]] = ...) -> None: ...

class WatchEnclaveRequest(_message.Message):
    __slots__ = ("enclave_id", "from_sequence")
    ENCLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    enclave_id: str
    from_sequence: int
    def __init__(self, enclave_id: _Optional[str] = ..., from_sequence: _Optional[int] = ...) -> None: ...

class WatchEnclaveResponse(_message.Message):
    __slots__ = ("enclave_id", "phase", "message", "sequence", "time", "enclave", "attestation")
    ENCLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ENCLAVE_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    enclave_id: str
    phase: Phase
    message: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    enclave: Enclave
    attestation: _attestation_pb2.Attestation
    def __init__(self, enclave_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., message: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., enclave: _Optional[_Union[Enclave, _Mapping]] = ..., attestation: _Optional[_Union[_attestation_pb2.Attestation, _Mapping]] = ...) -> None: ...

class GetEnclaveRequest(_message.Message):
    __slots__ = ("enclave_id",)
    ENCLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    enclave_id: str
    def __init__(self, enclave_id: _Optional[str] = ...) -> None: ...

class GetEnclaveResponse(_message.Message):
    __slots__ = ("enclave",)
    ENCLAVE_FIELD_NUMBER: _ClassVar[int]
    enclave: Enclave
    def __init__(self, enclave: _Optional[_Union[Enclave, _Mapping]] = ...) -> None: ...

class ListEnclavesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEnclavesResponse(_message.Message):
    __slots__ = ("enclaves", "next_page_token")
    ENCLAVES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    enclaves: _containers.RepeatedCompositeFieldContainer[Enclave]
    next_page_token: str
    def __init__(self, enclaves: _Optional[_Iterable[_Union[Enclave, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteEnclaveRequest(_message.Message):
    __slots__ = ("enclave_id",)
    ENCLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    enclave_id: str
    def __init__(self, enclave_id: _Optional[str] = ...) -> None: ...

class DeleteEnclaveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
