"""Verifying an enclave attestation before trusting its certificate.

Every check is run in a fixed order and named; the first failure raises
``AttestationError`` naming it, and the caller must then not connect.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import hmac
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from licensing_client.attestation._tpm_structures import (
    ATTR_DECRYPT,
    ATTR_FIXED_PARENT,
    ATTR_FIXED_TPM,
    ATTR_RESTRICTED,
    ATTR_SENSITIVE_DATA_ORIGIN,
    ATTR_SIGN_ENCRYPT,
    TPM_ALG_ECDSA,
    TPM_ALG_SHA256,
    TPM_ECC_NIST_P256,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    StructureError,
    parse_attest,
    parse_public,
    parse_signature,
)
from licensing_common.binding import (
    AK_CERTIFICATE_IDENTITY,
    MEASUREMENT_PCR,
    merkle_root_from_proof,
    qualifying_value,
)

_ZERO = bytes(32)


class Check(enum.StrEnum):
    MAGIC = "magic"
    TYPE = "type"
    AK_ATTRIBUTES = "ak_attributes"
    AK_CERTIFICATE_CHAIN = "ak_certificate_chain"
    SIGNATURE = "signature"
    CERTIFICATE = "certificate"
    QUALIFYING_DATA = "qualifying_data"
    PCR_DIGEST = "pcr_digest"
    EVENT_LOG = "event_log"
    MEASUREMENT_PROOF = "measurement_proof"


class AttestationError(Exception):
    """The attestation failed ``check``; do not connect to the enclave."""

    def __init__(self, check: Check, detail: str):
        super().__init__(f"attestation check '{check}' failed: {detail}")
        self.check = check
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: Check
    detail: str


@dataclass(frozen=True, slots=True)
class VerificationReport:
    enclave_certificate_sha256: bytes
    reset_count: int
    pcr_values: dict[int, bytes]
    checks: list[CheckResult] = field(default_factory=list)


class AttestationLike(Protocol):
    """The ``licensing.v1.Attestation`` fields we read (betterproto or protobuf message)."""

    @property
    def quote(self) -> bytes: ...
    @property
    def signature(self) -> bytes: ...
    @property
    def ak_public(self) -> bytes: ...
    @property
    def ak_certificate_chain_pem(self) -> Any: ...
    @property
    def pcr_selection(self) -> Any: ...
    @property
    def pcr_values(self) -> Any: ...
    @property
    def event_log(self) -> Any: ...
    @property
    def enclave_certificate_pem(self) -> str: ...
    @property
    def enclave_certificate_sha256(self) -> bytes: ...
    @property
    def nonce(self) -> bytes: ...
    @property
    def merkle_proof(self) -> Any: ...
    @property
    def measurement_proof(self) -> Any: ...


def _fail(check: Check, detail: str) -> AttestationError:
    return AttestationError(check, detail)


def _pem_der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True, slots=True)
class _VerifiedChain:
    """What the chain's checks that need no clock proved, so a repeat skips the parse and walk.

    ``not_before``/``not_after`` intersect every certificate's validity: checking ``now``
    against them is checking each certificate at ``now``, which runs on every call.
    """

    detail: str
    leaf_key: ec.EllipticCurvePublicNumbers | None
    not_before: dt.datetime
    not_after: dt.datetime


class _ChainCache:
    """A small LRU of verified chains, keyed by SHA-256 over the chain's and the CA set's DERs.

    The key covers the trusted CAs, so a chain verified against one CA set never
    answers for another. Only chains that passed are stored.
    """

    def __init__(self, size: int = 256):
        self._size = size
        self._items: OrderedDict[bytes, _VerifiedChain] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> _VerifiedChain | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: bytes, verified: _VerifiedChain) -> None:
        with self._lock:
            self._items[key] = verified
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_chains = _ChainCache()

_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"


def _strict_pem_der(pem: str) -> bytes | None:
    """The DER of a PEM holding exactly one certificate and nothing else; None otherwise.

    None sends the chain down the uncached path, where cryptography's PEM reader decides,
    so what is accepted never depends on the cache.
    """
    text = pem.strip()
    if not (text.startswith(_PEM_BEGIN) and text.endswith(_PEM_END)):
        return None
    body = text[len(_PEM_BEGIN) : -len(_PEM_END)]
    if "-" in body:
        return None
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except ValueError:
        return None


def _chain_key(chain_der: Sequence[bytes], anchors_der: Sequence[bytes]) -> bytes:
    """SHA-256 over the chain's DERs, then the CA set's, each length-prefixed (no ambiguity)."""
    digest = hashlib.sha256()
    for part, ders in ((b"chain", chain_der), (b"trusted", anchors_der)):
        digest.update(part + len(ders).to_bytes(4, "big"))
        for der in ders:
            digest.update(len(der).to_bytes(4, "big") + der)
    return digest.digest()


def _check_chain(
    chain_pem: Sequence[str],
    trusted_pem: Sequence[str],
    ak_numbers: ec.EllipticCurvePublicNumbers,
    now: dt.datetime,
) -> str:
    decoded = [_strict_pem_der(p) for p in [*chain_pem, *trusted_pem]]
    ders = [d for d in decoded if d is not None]
    key = None
    cached = None
    if len(ders) == len(decoded):
        chain_der, anchors_der = ders[: len(chain_pem)], ders[len(chain_pem) :]
        key = _chain_key(chain_der, anchors_der)
        cached = _chains.get(key)
    if cached is None:
        try:
            if key is not None:  # parse exactly the DERs the key was made of
                chain = [x509.load_der_x509_certificate(d) for d in chain_der]
                anchors = [x509.load_der_x509_certificate(d) for d in anchors_der]
            else:
                chain = [x509.load_pem_x509_certificate(p.encode()) for p in chain_pem]
                anchors = [x509.load_pem_x509_certificate(p.encode()) for p in trusted_pem]
        except ValueError as exc:
            raise _fail(Check.AK_CERTIFICATE_CHAIN, "a certificate does not parse") from exc
        if not chain:
            raise _fail(Check.AK_CERTIFICATE_CHAIN, "no AK certificate")
        leaf_key = _ak_leaf_key(chain[0])
        not_before = max(cert.not_valid_before_utc for cert in chain)
        not_after = min(cert.not_valid_after_utc for cert in chain)
    else:
        leaf_key, not_before, not_after = cached.leaf_key, cached.not_before, cached.not_after
    # Never cached: the AK is this attestation's and the time is this call's.
    if leaf_key != ak_numbers:
        raise _fail(Check.AK_CERTIFICATE_CHAIN, "the AK certificate is for another key")
    if not not_before <= now <= not_after:
        raise _fail(Check.AK_CERTIFICATE_CHAIN, "a certificate is outside its validity")
    if cached is not None:
        return cached.detail
    detail = _walk_chain(chain, anchors)
    if key is not None:
        _chains.put(key, _VerifiedChain(detail, leaf_key, not_before, not_after))
    return detail


def _ak_leaf_key(leaf: x509.Certificate) -> ec.EllipticCurvePublicNumbers | None:
    """The leaf's EC key, once it is known to be an attestation key certificate."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except ValueError as exc:
        raise _fail(Check.AK_CERTIFICATE_CHAIN, "the AK certificate does not parse") from exc
    if uris != [AK_CERTIFICATE_IDENTITY]:
        raise _fail(Check.AK_CERTIFICATE_CHAIN, "the leaf is not an attestation key certificate")
    leaf_key = leaf.public_key()
    return leaf_key.public_numbers() if isinstance(leaf_key, ec.EllipticCurvePublicKey) else None


def _walk_chain(chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]) -> str:
    """The signatures from the leaf up lead to a trusted CA (the expensive part)."""
    current = chain[0]
    for issuer in [*chain[1:], None]:
        for anchor in anchors:
            try:
                current.verify_directly_issued_by(anchor)
                return f"issued by trusted CA '{anchor.subject.rfc4514_string()}'"
            except (ValueError, TypeError, InvalidSignature):
                continue
        if issuer is None:
            break
        try:
            current.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise _fail(Check.AK_CERTIFICATE_CHAIN, "the chain is broken") from exc
        current = issuer
    raise _fail(Check.AK_CERTIFICATE_CHAIN, "the AK certificate does not chain to a trusted CA")


def verify_attestation(
    attestation: AttestationLike,
    *,
    nonce: bytes,
    expected_certificate_pem: str,
    trusted_ca_pem: Sequence[str],
    now: dt.datetime | None = None,
) -> VerificationReport:
    """Check everything the brief lists; return the report or raise ``AttestationError``.

    ``nonce`` is the one *we* sent and ``expected_certificate_pem`` the
    certificate we are about to pin; neither is taken from the attestation.
    """
    moment = now or dt.datetime.now(dt.UTC)
    results: list[CheckResult] = []

    try:
        attest = parse_attest(bytes(attestation.quote))
    except StructureError as exc:
        raise _fail(Check.MAGIC, f"the quote does not parse ({exc})") from exc
    if attest.magic != TPM_GENERATED_VALUE:
        raise _fail(Check.MAGIC, f"magic is 0x{attest.magic:08x}, not TPM_GENERATED")
    results.append(CheckResult(Check.MAGIC, "TPM_GENERATED"))
    if attest.type != TPM_ST_ATTEST_QUOTE:
        raise _fail(Check.TYPE, f"type is 0x{attest.type:04x}, not TPM_ST_ATTEST_QUOTE")
    results.append(CheckResult(Check.TYPE, "TPM_ST_ATTEST_QUOTE"))

    try:
        ak = parse_public(bytes(attestation.ak_public))
    except StructureError as exc:
        raise _fail(Check.AK_ATTRIBUTES, f"the AK public area does not parse ({exc})") from exc
    required = ATTR_RESTRICTED | ATTR_SIGN_ENCRYPT | ATTR_FIXED_TPM | ATTR_FIXED_PARENT
    required |= ATTR_SENSITIVE_DATA_ORIGIN
    if ak.attributes & required != required or ak.attributes & ATTR_DECRYPT:
        raise _fail(Check.AK_ATTRIBUTES, f"attributes 0x{ak.attributes:08x} are not an AK's")
    if ak.curve != TPM_ECC_NIST_P256 or ak.scheme != TPM_ALG_ECDSA:
        raise _fail(Check.AK_ATTRIBUTES, "the AK is not an ECDSA P-256 key")
    ak_numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(ak.x, "big"), int.from_bytes(ak.y, "big"), ec.SECP256R1()
    )
    try:
        ak_key = ak_numbers.public_key()
    except ValueError as exc:
        raise _fail(Check.AK_ATTRIBUTES, "the AK point is not on P-256") from exc
    results.append(CheckResult(Check.AK_ATTRIBUTES, "restricted, sign, fixedTPM, fixedParent"))

    detail = _check_chain(
        list(attestation.ak_certificate_chain_pem), trusted_ca_pem, ak_numbers, moment
    )
    results.append(CheckResult(Check.AK_CERTIFICATE_CHAIN, detail))

    try:
        signature = parse_signature(bytes(attestation.signature))
    except StructureError as exc:
        raise _fail(Check.SIGNATURE, f"the signature does not parse ({exc})") from exc
    if signature.hash_alg != TPM_ALG_SHA256:
        raise _fail(Check.SIGNATURE, "the signature is not over SHA-256")
    try:
        ak_key.verify(
            encode_dss_signature(signature.r, signature.s),
            bytes(attestation.quote),
            ec.ECDSA(hashes.SHA256()),
        )
    except InvalidSignature as exc:
        raise _fail(Check.SIGNATURE, "the quote's signature does not verify with the AK") from exc
    results.append(CheckResult(Check.SIGNATURE, "ECDSA P-256 by the certified AK"))

    try:
        expected_der = _pem_der(expected_certificate_pem)
        attested_der = _pem_der(attestation.enclave_certificate_pem)
    except ValueError as exc:
        raise _fail(Check.CERTIFICATE, "a certificate does not parse") from exc
    cert_hash = hashlib.sha256(expected_der).digest()
    if not hmac.compare_digest(attested_der, expected_der) or not hmac.compare_digest(
        bytes(attestation.enclave_certificate_sha256), cert_hash
    ):
        raise _fail(Check.CERTIFICATE, "the attestation is about another certificate")
    results.append(CheckResult(Check.CERTIFICATE, f"SHA-256 {cert_hash.hex()}"))

    value = qualifying_value(nonce, cert_hash)
    proof = attestation.merkle_proof
    siblings = [bytes(s) for s in (proof.siblings if proof is not None else [])]
    leaf_count = int(proof.leaf_count) if proof is not None else 0
    if leaf_count > 1:
        try:
            value = merkle_root_from_proof(value, int(proof.leaf_index), leaf_count, siblings)
        except (ValueError, StopIteration) as exc:
            raise _fail(Check.QUALIFYING_DATA, "the Merkle proof is malformed") from exc
    if not hmac.compare_digest(attest.extra_data, value):
        raise _fail(
            Check.QUALIFYING_DATA, "qualifying data does not bind our nonce to this certificate"
        )
    batch = f" (leaf {int(proof.leaf_index)} of {leaf_count})" if leaf_count > 1 else ""
    results.append(CheckResult(Check.QUALIFYING_DATA, f"nonce and certificate bound{batch}"))

    values = {int(v.pcr): bytes(v.value) for v in attestation.pcr_values}
    selected = [p for s in attest.pcr_selections if s.hash_alg == TPM_ALG_SHA256 for p in s.pcrs]
    if any(s.hash_alg != TPM_ALG_SHA256 for s in attest.pcr_selections) or sorted(values) != sorted(
        selected
    ):
        raise _fail(Check.PCR_DIGEST, "the returned PCRs are not the quoted selection")
    digest = hashlib.sha256(b"".join(values[p] for p in selected)).digest()
    if not hmac.compare_digest(digest, attest.pcr_digest):
        raise _fail(Check.PCR_DIGEST, "the PCR values do not match the quoted digest")
    results.append(CheckResult(Check.PCR_DIGEST, f"PCRs {selected}"))

    if MEASUREMENT_PCR not in values:
        raise _fail(Check.EVENT_LOG, f"PCR {MEASUREMENT_PCR} is not quoted")
    replayed, root = _ZERO, None
    for event in sorted(attestation.event_log, key=lambda e: int(e.sequence)):
        if int(event.pcr) != MEASUREMENT_PCR:
            continue
        root = bytes(event.digest)
        replayed = hashlib.sha256(replayed + root).digest()
    if not hmac.compare_digest(replayed, values[MEASUREMENT_PCR]):
        raise _fail(Check.EVENT_LOG, f"the event log does not replay to PCR {MEASUREMENT_PCR}")
    if root is None:
        raise _fail(Check.EVENT_LOG, f"nothing was measured into PCR {MEASUREMENT_PCR}")
    results.append(
        CheckResult(Check.EVENT_LOG, f"replays to PCR {MEASUREMENT_PCR}; set root {root.hex()}")
    )

    # The last extend is the root of the tree over the live certificates: the
    # certificate must be one of its leaves.
    measured = attestation.measurement_proof
    count = int(measured.leaf_count) if measured is not None else 0
    if count < 1:
        raise _fail(Check.MEASUREMENT_PROOF, "no proof that the certificate was measured")
    index = int(measured.leaf_index)
    try:
        computed = merkle_root_from_proof(
            cert_hash, index, count, [bytes(s) for s in measured.siblings]
        )
    except (ValueError, StopIteration) as exc:
        raise _fail(Check.MEASUREMENT_PROOF, "the measurement proof is malformed") from exc
    if not hmac.compare_digest(computed, root):
        raise _fail(
            Check.MEASUREMENT_PROOF,
            f"the certificate is not in the set measured into PCR {MEASUREMENT_PCR}",
        )
    results.append(
        CheckResult(Check.MEASUREMENT_PROOF, f"leaf {index} of {count} live certificates")
    )
    return VerificationReport(cert_hash, attest.reset_count, values, results)
