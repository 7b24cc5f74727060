import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from licensing.v1 import attestation_pb2 as _attestation_pb2
from licensing.v1 import enclave_pb2 as _enclave_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignUserCertificateRequest(_message.Message):
    __slots__ = ("user_id", "username", "csr_pem", "lifetime_seconds")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    username: str
    csr_pem: str
    lifetime_seconds: int
    def __init__(self, user_id: _Optional[str] = ..., username: _Optional[str] = ..., csr_pem: _Optional[str] = ..., lifetime_seconds: _Optional[int] = ...) -> None: ...

class SignUserCertificateResponse(_message.Message):
    __slots__ = ("certificate_pem", "certificate_sha256", "expire_time", "ca_certificates_pem")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATES_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    certificate_sha256: bytes
    expire_time: _timestamp_pb2.Timestamp
    ca_certificates_pem: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, certificate_pem: _Optional[str] = ..., certificate_sha256: _Optional[bytes] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ca_certificates_pem: _Optional[_Iterable[str]] = ...) -> None: ...

class GetCaCertificatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCaCertificatesResponse(_message.Message):
    __slots__ = ("ca_certificates_pem", "ak_certificate_chain_pem")
    CA_CERTIFICATES_PEM_FIELD_NUMBER: _ClassVar[int]
    AK_CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    ca_certificates_pem: _containers.RepeatedScalarFieldContainer[str]
    ak_certificate_chain_pem: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ca_certificates_pem: _Optional[_Iterable[str]] = ..., ak_certificate_chain_pem: _Optional[_Iterable[str]] = ...) -> None: ...

class ProvisionRequest(_message.Message):
    __slots__ = ("enclave_id", "owner", "nonce", "expire_time")
    ENCLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    enclave_id: str
    owner: str
    nonce: bytes
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, enclave_id: _Optional[str] = ..., owner: _Optional[str] = ..., nonce: _Optional[bytes] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ProvisionResponse(_message.Message):
    __slots__ = ("enclave_id", "phase", "message", "sequence", "time", "enclave", "attestation")
    ENCLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ENCLAVE_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    enclave_id: str
    phase: _enclave_pb2.Phase
    message: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    enclave: _enclave_pb2.Enclave
    attestation: _attestation_pb2.Attestation
    def __init__(self, enclave_id: _Optional[str] = ..., phase: _Optional[_Union[_enclave_pb2.Phase, str]] = ..., message: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., enclave: _Optional[_Union[_enclave_pb2.Enclave, _Mapping]] = ..., attestation: _Optional[_Union[_attestation_pb2.Attestation, _Mapping]] = ...) -> None: ...

class DeprovisionRequest(_message.Message):
    __slots__ = ("enclave_id",)
    ENCLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    enclave_id: str
    def __init__(self, enclave_id: _Optional[str] = ...) -> None: ...

class DeprovisionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QuoteRequest(_message.Message):
    __slots__ = ("enclave_id", "nonce")
    ENCLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    enclave_id: str
    nonce: bytes
    def __init__(self, enclave_id: _Optional[str] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class QuoteResponse(_message.Message):
    __slots__ = ("attestation",)
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    attestation: _attestation_pb2.Attestation
    def __init__(self, attestation: _Optional[_Union[_attestation_pb2.Attestation, _Mapping]] = ...) -> None: ...
