"""Key templates and the checks that a key is what we think it is.

The AK template is fixed by the attestation design (restricted ECC P-256
signing key, FACTS.md); the EK templates are the TCG low-range ones whose
certificates TPM vendors and swtpm_setup store in NV.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC, TPML_PCR_SELECTION

__all__ = [
    "AK_ATTRIBUTES",
    "AK_REQUIRED_ATTRIBUTES",
    "DEFAULT_AK_HANDLE",
    "EK_CANDIDATES",
    "PCR_COUNT",
    "EkCandidate",
    "ak_lacks_noda",
    "ak_problem",
    "ak_template",
    "check_ak_handle",
    "check_pcrs",
    "ecc_public_pem",
    "pcr_digest",
    "pcr_selection",
]

# In the TCG endorsement-key range of owner-persistent handles, clear of the
# EKs swtpm_setup and vendors persist (0x81010001, 0x81010002, 0x81010016).
DEFAULT_AK_HANDLE = 0x81010010
_OWNER_PERSISTENT = range(0x81000000, 0x81800000)

#: What makes a key an AK whose quotes verifiers may trust.
AK_REQUIRED_ATTRIBUTES = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)
#: The AK's authorization is empty, so dictionary-attack protection guards nothing;
#: without ``noDA`` every disorderly TPM stop after a use counts as a failed try, and
#: three of them lock the AK out (swtpm's defaults: 3 tries, 1000 s interval).
AK_ATTRIBUTES = AK_REQUIRED_ATTRIBUTES | TPMA_OBJECT.NODA

PCR_COUNT = 24


@dataclass(frozen=True, slots=True)
class EkCandidate:
    """An EK type understood by ``tpm2_pytss.utils.create_ek_template``."""

    ektype: str
    cert_index: int


# Low range only: their policy is PolicySecret(TPM_RH_ENDORSEMENT), which is all
# ActivateCredential needs. swtpm 0.7.1 writes RSA at 0x01c00002 and its ECC EK
# as P-384 in the high range (0x01c00016), so the RSA one is used there.
EK_CANDIDATES = (
    EkCandidate("EK-RSA2048", 0x01C00002),
    EkCandidate("EK-ECC256", 0x01C0000A),
)


def ak_template() -> TPM2B_PUBLIC:
    """A restricted P-256 ECDSA-SHA256 signing key; restricted keys need a NULL symmetric."""
    return TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=AK_ATTRIBUTES)


def check_ak_handle(handle: int) -> None:
    """Refuse handles EvictControl with owner auth cannot use."""
    if handle not in _OWNER_PERSISTENT:
        raise ValueError(f"0x{handle:08x} is not an owner persistent handle")


def ak_problem(public: TPM2B_PUBLIC) -> str | None:
    """Why the object at the AK handle is not an AK we would make, or None if it is.

    A persistent handle can hold anything someone evicted there; quoting with a
    key that is not restricted would give attestations verifiers must reject.
    """
    area = public.publicArea
    if area.type != TPM2_ALG.ECC or area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256:
        return "not an ECC P-256 key"
    if area.nameAlg != TPM2_ALG.SHA256:
        return "name algorithm is not SHA-256"
    required = int(AK_REQUIRED_ATTRIBUTES)
    if int(area.objectAttributes) & required != required:
        return "missing restricted/sign/fixedTPM attributes"
    if int(area.objectAttributes) & int(TPMA_OBJECT.DECRYPT):
        return "is a decryption key"
    scheme = area.parameters.eccDetail.scheme
    if scheme.scheme != TPM2_ALG.ECDSA or scheme.details.ecdsa.hashAlg != TPM2_ALG.SHA256:
        return "scheme is not ECDSA-SHA256"
    return None


def ak_lacks_noda(public: TPM2B_PUBLIC) -> bool:
    """True for an AK made before ``noDA`` was set (it is replaced: see ``AK_ATTRIBUTES``)."""
    return not int(public.publicArea.objectAttributes) & int(TPMA_OBJECT.NODA)


def ecc_public_pem(public: TPM2B_PUBLIC) -> str:
    """The ECC P-256 public key as a PEM SubjectPublicKeyInfo."""
    point = public.publicArea.unique.ecc
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(bytes(point.x), "big"), int.from_bytes(bytes(point.y), "big"), ec.SECP256R1()
    )
    pem = numbers.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode("ascii")


def check_pcrs(pcrs: Iterable[int]) -> list[int]:
    """The PCRs sorted and deduplicated, or ValueError for an index the TPM lacks."""
    ordered = sorted(set(pcrs))
    if not ordered:
        raise ValueError("no PCRs selected")
    bad = [p for p in ordered if not 0 <= p < PCR_COUNT]
    if bad:
        raise ValueError(f"PCR indices out of range: {bad}")
    return ordered


def pcr_selection(pcrs: Iterable[int]) -> TPML_PCR_SELECTION:
    """A sha256-bank selection of ``pcrs`` (indices below 24, see ``check_pcrs``).

    Built from its wire form: one bank, hash algorithm, a 3-byte bitmap.
    ``TPML_PCR_SELECTION.parse`` does the same from a string at ten times the cost.
    """
    bitmap = bytearray(PCR_COUNT // 8)
    for pcr in pcrs:
        bitmap[pcr // 8] |= 1 << (pcr % 8)
    wire = (1).to_bytes(4, "big") + int(TPM2_ALG.SHA256).to_bytes(2, "big")
    selection, _ = TPML_PCR_SELECTION.unmarshal(wire + bytes([len(bitmap)]) + bytes(bitmap))
    return selection


def pcr_digest(values: Mapping[int, bytes]) -> bytes:
    """What a quote's pcrDigest must be: SHA-256 over the values in ascending PCR order."""
    return hashlib.sha256(b"".join(values[p] for p in sorted(values))).digest()
