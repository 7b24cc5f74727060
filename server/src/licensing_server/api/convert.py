"""Small conversions between domain values and protobuf well-known types."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2
from licensing.v1 import enclave_pb2

from licensing_server.storage import EnclaveRecord, Phase


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(dt.UTC))
    return stamp


def phase_number(phase: Phase) -> enclave_pb2.Phase.ValueType:
    return enclave_pb2.Phase.Value(f"PHASE_{phase.value}")


def enclave_message(record: EnclaveRecord) -> enclave_pb2.Enclave:
    return enclave_pb2.Enclave(
        id=record.id,
        owner=record.owner_id,
        phase=phase_number(record.phase),
        endpoint=record.endpoint,
        tls_server_name=record.tls_server_name,
        certificate_pem=record.certificate_pem,
        create_time=timestamp(record.created_at),
        expire_time=timestamp(record.expires_at),
        request_id=record.request_id,
        failure_reason=record.failure_reason,
    )


def wrapped(field_one: bytes) -> bytes:
    """``field_one`` as field 1 (length-delimited) of an enclosing message, serialized.

    ``QuoteResponse`` and ``GetAttestationResponse`` hold just the attestation as
    field 1: this makes either from an attestation's bytes without parsing them.
    """
    size = len(field_one)
    varint = bytearray()
    while True:
        byte = size & 0x7F
        size >>= 7
        if size:
            varint.append(byte | 0x80)
        else:
            varint.append(byte)
            return b"\x0a" + bytes(varint) + field_one
