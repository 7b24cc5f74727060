"""The few TPM 2.0 structures a verifier reads, parsed in pure Python.

Clients should not need the TSS native libraries to check a quote, so the
wire formats (TPM 2.0 Part 2) are decoded here directly and strictly: any
trailing or missing byte is an error.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA256 = 0x000B
TPM_ALG_ECC = 0x0023
TPM_ALG_ECDSA = 0x0018
TPM_ALG_NULL = 0x0010
TPM_ECC_NIST_P256 = 0x0003

ATTR_FIXED_TPM = 0x00000002
ATTR_FIXED_PARENT = 0x00000010
ATTR_SENSITIVE_DATA_ORIGIN = 0x00000020
ATTR_USER_WITH_AUTH = 0x00000040
ATTR_RESTRICTED = 0x00010000
ATTR_DECRYPT = 0x00020000
ATTR_SIGN_ENCRYPT = 0x00040000


class StructureError(ValueError):
    """The bytes are not the TPM structure they claim to be."""


class _Reader:
    def __init__(self, data: bytes):
        self._data = data
        self._at = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self._at + n > len(self._data):
            raise StructureError("truncated structure")
        chunk = self._data[self._at : self._at + n]
        self._at += n
        return chunk

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def sized(self) -> bytes:
        return self.take(self.u16())

    def end(self) -> None:
        if self._at != len(self._data):
            raise StructureError("trailing bytes after structure")


@dataclass(frozen=True, slots=True)
class PcrSelection:
    hash_alg: int
    pcrs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Attest:
    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_selections: tuple[PcrSelection, ...]
    pcr_digest: bytes


def parse_attest(data: bytes) -> Attest:
    """TPMS_ATTEST (the quote bytes that the AK signed)."""
    r = _Reader(data)
    magic, kind = r.u32(), r.u16()
    signer, extra = r.sized(), r.sized()
    clock, reset_count, restart_count, safe = r.u64(), r.u32(), r.u32(), r.u8()
    firmware = r.u64()
    if kind != TPM_ST_ATTEST_QUOTE:
        # Other attestation types have other bodies; the caller reports the type.
        return Attest(
            magic,
            kind,
            signer,
            extra,
            clock,
            reset_count,
            restart_count,
            bool(safe),
            firmware,
            (),
            b"",
        )
    selections = []
    for _ in range(r.u32()):
        hash_alg = r.u16()
        bitmap = r.take(r.u8())
        pcrs = tuple(
            byte * 8 + bit
            for byte, bits in enumerate(bitmap)
            for bit in range(8)
            if bits & (1 << bit)
        )
        selections.append(PcrSelection(hash_alg, pcrs))
    digest = r.sized()
    r.end()
    return Attest(
        magic,
        kind,
        signer,
        extra,
        clock,
        reset_count,
        restart_count,
        bool(safe),
        firmware,
        tuple(selections),
        digest,
    )


@dataclass(frozen=True, slots=True)
class EcdsaSignature:
    sig_alg: int
    hash_alg: int
    r: int
    s: int


def parse_signature(data: bytes) -> EcdsaSignature:
    """TPMT_SIGNATURE; only ECDSA is accepted (that is what our AK makes)."""
    r = _Reader(data)
    sig_alg = r.u16()
    if sig_alg != TPM_ALG_ECDSA:
        raise StructureError(f"signature algorithm 0x{sig_alg:04x} is not ECDSA")
    hash_alg = r.u16()
    sig_r, sig_s = r.sized(), r.sized()
    r.end()
    return EcdsaSignature(
        sig_alg, hash_alg, int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big")
    )


@dataclass(frozen=True, slots=True)
class EccPublicArea:
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric_alg: int
    scheme: int
    scheme_hash: int
    curve: int
    x: bytes
    y: bytes
    #: The TPMT_PUBLIC bytes, from which the TPM name is computed.
    raw: bytes

    @property
    def name(self) -> bytes:
        """TPM2B_NAME content: nameAlg || H_nameAlg(TPMT_PUBLIC)."""
        if self.name_alg != TPM_ALG_SHA256:
            raise StructureError("only SHA-256 names are supported")
        return struct.pack(">H", self.name_alg) + hashlib.sha256(self.raw).digest()


def parse_public(data: bytes) -> EccPublicArea:
    """TPM2B_PUBLIC of an ECC key (the attestation key)."""
    outer = _Reader(data)
    raw = outer.sized()
    outer.end()
    r = _Reader(raw)
    kind = r.u16()
    if kind != TPM_ALG_ECC:
        raise StructureError(f"key type 0x{kind:04x} is not ECC")
    name_alg, attributes, policy = r.u16(), r.u32(), r.sized()
    symmetric = r.u16()
    if symmetric != TPM_ALG_NULL:
        r.u16()  # keyBits
        r.u16()  # mode
    scheme = r.u16()
    scheme_hash = r.u16() if scheme != TPM_ALG_NULL else TPM_ALG_NULL
    curve = r.u16()
    kdf = r.u16()
    if kdf != TPM_ALG_NULL:
        r.u16()
    x, y = r.sized(), r.sized()
    r.end()
    return EccPublicArea(
        name_alg, attributes, policy, symmetric, scheme, scheme_hash, curve, x, y, raw
    )
