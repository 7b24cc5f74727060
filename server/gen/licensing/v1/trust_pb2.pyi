from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetTrustBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTrustBundleResponse(_message.Message):
    __slots__ = ("ca_certificates_pem", "jwks_json", "ak_certificate_chain_pem", "token_issuer", "token_audience")
    CA_CERTIFICATES_PEM_FIELD_NUMBER: _ClassVar[int]
    JWKS_JSON_FIELD_NUMBER: _ClassVar[int]
    AK_CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ISSUER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    ca_certificates_pem: _containers.RepeatedScalarFieldContainer[str]
    jwks_json: str
    ak_certificate_chain_pem: _containers.RepeatedScalarFieldContainer[str]
    token_issuer: str
    token_audience: str
    def __init__(self, ca_certificates_pem: _Optional[_Iterable[str]] = ..., jwks_json: _Optional[str] = ..., ak_certificate_chain_pem: _Optional[_Iterable[str]] = ..., token_issuer: _Optional[str] = ..., token_audience: _Optional[str] = ...) -> None: ...
