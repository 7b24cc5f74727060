from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetAttestationRequest(_message.Message):
    __slots__ = ("enclave_id", "nonce")
    ENCLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    enclave_id: str
    nonce: bytes
    def __init__(self, enclave_id: _Optional[str] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class GetAttestationResponse(_message.Message):
    __slots__ = ("attestation",)
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    attestation: Attestation
    def __init__(self, attestation: _Optional[_Union[Attestation, _Mapping]] = ...) -> None: ...

class Attestation(_message.Message):
    __slots__ = ("quote", "signature", "ak_public", "ak_public_pem", "ak_certificate_chain_pem", "pcr_selection", "pcr_values", "event_log", "enclave_certificate_pem", "enclave_certificate_sha256", "nonce", "qualifying_data_derivation", "merkle_proof", "log_epoch")
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    AK_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    AK_PUBLIC_PEM_FIELD_NUMBER: _ClassVar[int]
    AK_CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    PCR_SELECTION_FIELD_NUMBER: _ClassVar[int]
    PCR_VALUES_FIELD_NUMBER: _ClassVar[int]
    EVENT_LOG_FIELD_NUMBER: _ClassVar[int]
    ENCLAVE_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    ENCLAVE_CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    QUALIFYING_DATA_DERIVATION_FIELD_NUMBER: _ClassVar[int]
    MERKLE_PROOF_FIELD_NUMBER: _ClassVar[int]
    LOG_EPOCH_FIELD_NUMBER: _ClassVar[int]
    quote: bytes
    signature: bytes
    ak_public: bytes
    ak_public_pem: str
    ak_certificate_chain_pem: _containers.RepeatedScalarFieldContainer[str]
    pcr_selection: PcrSelection
    pcr_values: _containers.RepeatedCompositeFieldContainer[PcrValue]
    event_log: _containers.RepeatedCompositeFieldContainer[MeasurementEvent]
    enclave_certificate_pem: str
    enclave_certificate_sha256: bytes
    nonce: bytes
    qualifying_data_derivation: str
    merkle_proof: MerkleProof
    log_epoch: int
    def __init__(self, quote: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., ak_public: _Optional[bytes] = ..., ak_public_pem: _Optional[str] = ..., ak_certificate_chain_pem: _Optional[_Iterable[str]] = ..., pcr_selection: _Optional[_Union[PcrSelection, _Mapping]] = ..., pcr_values: _Optional[_Iterable[_Union[PcrValue, _Mapping]]] = ..., event_log: _Optional[_Iterable[_Union[MeasurementEvent, _Mapping]]] = ..., enclave_certificate_pem: _Optional[str] = ..., enclave_certificate_sha256: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., qualifying_data_derivation: _Optional[str] = ..., merkle_proof: _Optional[_Union[MerkleProof, _Mapping]] = ..., log_epoch: _Optional[int] = ...) -> None: ...

class PcrSelection(_message.Message):
    __slots__ = ("hash_algorithm", "pcrs")
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PCRS_FIELD_NUMBER: _ClassVar[int]
    hash_algorithm: str
    pcrs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, hash_algorithm: _Optional[str] = ..., pcrs: _Optional[_Iterable[int]] = ...) -> None: ...

class PcrValue(_message.Message):
    __slots__ = ("pcr", "value")
    PCR_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    pcr: int
    value: bytes
    def __init__(self, pcr: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class MeasurementEvent(_message.Message):
    __slots__ = ("pcr", "digest", "kind", "enclave_id", "sequence")
    PCR_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENCLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    pcr: int
    digest: bytes
    kind: str
    enclave_id: str
    sequence: int
    def __init__(self, pcr: _Optional[int] = ..., digest: _Optional[bytes] = ..., kind: _Optional[str] = ..., enclave_id: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class MerkleProof(_message.Message):
    __slots__ = ("leaf_index", "leaf_count", "siblings")
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEAF_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIBLINGS_FIELD_NUMBER: _ClassVar[int]
    leaf_index: int
    leaf_count: int
    siblings: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, leaf_index: _Optional[int] = ..., leaf_count: _Optional[int] = ..., siblings: _Optional[_Iterable[bytes]] = ...) -> None: ...
