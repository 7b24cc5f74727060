#!/usr/bin/env python3
"""Write clients/testdata/attestation-vectors.json from a real stack and a real swtpm.

Every client verifier (Python, Go, TypeScript) runs these vectors and must reach the
same verdict, check for check. Run by hand from the repository root, after
scripts/setup.sh, when the attestation format changes:

    .venv/bin/python scripts/make-attestation-vectors.py [--output PATH]

The file holds only public material: CA and AK certificates, enclave certificates,
quotes and signatures. The keys used to forge the tampered vectors are thrown away.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PATH"] = f"{REPO / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from licensing.v1 import (  # noqa: E402
    attestation_pb2,
    attestation_pb2_grpc,
    enclave_pb2,
    enclave_pb2_grpc,
)

from licensing_client.attestation import (  # noqa: E402
    AK_CERTIFICATE_IDENTITY,
    AttestationError,
    Check,
    MerkleTree,
    verify_attestation,
)
from licensing_server.pki import CertificateAuthority  # noqa: E402
from tests.support import LoggedIn, Stack, start_stack  # noqa: E402

FORMAT = 1
DEFAULT_OUTPUT = REPO / "clients" / "testdata" / "attestation-vectors.json"


@dataclass
class Enclave:
    user: LoggedIn
    enclave: enclave_pb2.Enclave
    nonce: bytes
    attestation: attestation_pb2.Attestation

    @property
    def certificate_pem(self) -> str:
        return str(self.enclave.certificate_pem)


@dataclass
class Vector:
    name: str
    description: str
    attestation: attestation_pb2.Attestation
    nonce: bytes
    expected_certificate_pem: str
    failed_check: Check | None = None

    def to_json(self) -> dict[str, Any]:
        expected: dict[str, Any] = (
            {"valid": True}
            if self.failed_check is None
            else {"valid": False, "failed_check": str(self.failed_check)}
        )
        return {
            "name": self.name,
            "description": self.description,
            "attestation": json_format.MessageToDict(
                self.attestation, preserving_proto_field_name=True
            ),
            "nonce": base64.b64encode(self.nonce).decode(),
            "expected_certificate_pem": self.expected_certificate_pem,
            "expected": expected,
        }


def create(stack: Stack, user: LoggedIn) -> Enclave:
    nonce = os.urandom(32)
    stub = enclave_pb2_grpc.EnclaveServiceStub(stack.user_channel(user))
    events = list(
        stub.CreateEnclave(
            enclave_pb2.CreateEnclaveRequest(request_id=uuid.uuid4().hex, nonce=nonce),
            metadata=user.bearer,
            timeout=120,
        )
    )
    if events[-1].phase != enclave_pb2.PHASE_ATTESTED:
        raise RuntimeError(f"enclave ended in {enclave_pb2.Phase.Name(events[-1].phase)}")
    return Enclave(user, events[-1].enclave, nonce, events[-1].attestation)


def quote(stack: Stack, enclave: Enclave, nonce: bytes) -> attestation_pb2.Attestation:
    stub = attestation_pb2_grpc.AttestationServiceStub(stack.user_channel(enclave.user))
    reply = stub.GetAttestation(
        attestation_pb2.GetAttestationRequest(enclave_id=enclave.enclave.id, nonce=nonce),
        metadata=enclave.user.bearer,
        timeout=60,
    )
    return reply.attestation


def batched_quote(stack: Stack, enclave: Enclave) -> tuple[bytes, attestation_pb2.Attestation]:
    """A quote shared by concurrent requests: its merkle_proof has siblings."""
    for _ in range(5):
        with ThreadPoolExecutor(max_workers=32) as pool:
            nonces = [os.urandom(32) for _ in range(32)]
            replies = list(pool.map(lambda n: (n, quote(stack, enclave, n)), nonces))
        shared = [(n, r) for n, r in replies if r.merkle_proof.leaf_count > 2]
        if shared:  # an odd leaf index: its first sibling is on the left
            return max(
                shared,
                key=lambda p: (p[1].merkle_proof.leaf_index % 2, p[1].merkle_proof.leaf_index),
            )
    raise RuntimeError("no concurrent request shared a quote")


def flip(data: bytes, index: int) -> bytes:
    mutable = bytearray(data)
    mutable[index] ^= 0x01
    return bytes(mutable)


def tpm_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """A TPMT_SIGNATURE (ECDSA, SHA-256) over ``data`` by ``key``."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return (
        b"\x00\x18\x00\x0b"
        + (32).to_bytes(2, "big")
        + r.to_bytes(32, "big")
        + (32).to_bytes(2, "big")
        + s.to_bytes(32, "big")
    )


def tampered(
    attestation: attestation_pb2.Attestation,
    change: Callable[[attestation_pb2.Attestation], None],
) -> attestation_pb2.Attestation:
    forged = copy.deepcopy(attestation)
    change(forged)
    return forged


def build_vectors(stack: Stack, work: Path) -> tuple[list[Vector], dt.datetime]:
    user = stack.new_user()
    mine = create(stack, user)
    other = create(stack, user)  # two live enclaves: the measurement proof has a sibling
    nonce = os.urandom(32)
    good = quote(stack, mine, nonce)
    batch_nonce, batched = batched_quote(stack, mine)
    pem = mine.certificate_pem

    def vector(
        name: str,
        description: str,
        attestation: attestation_pb2.Attestation,
        failed: Check | None,
        *,
        with_nonce: bytes = nonce,
        certificate_pem: str = pem,
    ) -> Vector:
        return Vector(name, description, attestation, with_nonce, certificate_pem, failed)

    # Another key signs the quote; then that key's point is claimed as the AK.
    mallory = ec.generate_private_key(ec.SECP256R1())
    resigned = tampered(good, lambda a: setattr(a, "signature", tpm_signature(mallory, a.quote)))

    def claim_mallory_as_ak(a: attestation_pb2.Attestation) -> None:
        numbers = mallory.public_key().public_numbers()
        public = bytearray(a.ak_public)
        public[-66:-34] = numbers.x.to_bytes(32, "big")
        public[-32:] = numbers.y.to_bytes(32, "big")
        a.ak_public = bytes(public)

    # The real AK's public key, certified by a CA nobody trusts.
    rogue = CertificateAuthority.load_or_create(work / "rogue.key", work / "rogue.pem")
    ak_cert = x509.load_pem_x509_certificate(good.ak_certificate_chain_pem[0].encode())
    rogue_ak = rogue.issue(
        ak_cert.public_key(),
        common_name="licensing attestation key",
        lifetime=ak_cert.not_valid_after_utc - ak_cert.not_valid_before_utc,
        uris=[AK_CERTIFICATE_IDENTITY],
    )

    def rogue_chain(a: attestation_pb2.Attestation) -> None:
        del a.ak_certificate_chain_pem[:]
        a.ak_certificate_chain_pem.extend([rogue_ak.pem, rogue.ca_certificates_pem[0]])

    def user_certificate_as_ak(a: attestation_pb2.Attestation) -> None:
        del a.ak_certificate_chain_pem[:]
        a.ak_certificate_chain_pem.append(user.cert_pem.decode())

    def pcr_flipped(a: attestation_pb2.Attestation) -> None:
        a.pcr_values[0].value = flip(a.pcr_values[0].value, 0)

    def log_of(digests: list[bytes]) -> Callable[[attestation_pb2.Attestation], None]:
        forged_set = MerkleTree([good.enclave_certificate_sha256, os.urandom(32)])

        def change(a: attestation_pb2.Attestation) -> None:
            del a.event_log[:]
            for sequence, digest in enumerate(digests or [forged_set.root], start=1):
                a.event_log.add(
                    pcr=23, digest=digest, kind="enclave-certificate-set", sequence=sequence
                )
            a.measurement_proof.CopyFrom(
                attestation_pb2.MerkleProof(
                    leaf_index=0, leaf_count=2, siblings=forged_set.proof(0)
                )
            )

        return change

    def swap_other_certificate_in(a: attestation_pb2.Attestation) -> None:
        a.enclave_certificate_pem = pem
        a.enclave_certificate_sha256 = good.enclave_certificate_sha256

    other_quote = quote(stack, other, nonce)

    vectors = [
        vector(
            "good",
            "A quote taken for this one request (no batch); two enclaves are live, so the"
            " measurement proof has a sibling.",
            good,
            None,
        ),
        vector(
            "good_batched",
            "A quote shared by concurrent requests: merkle_proof leads from this request's"
            " qualifying value to the quoted one.",
            batched,
            None,
            with_nonce=batch_nonce,
        ),
        vector(
            "quote_byte_flipped",
            "The last byte of the quote is flipped: the TPM signed other bytes.",
            tampered(good, lambda a: setattr(a, "quote", flip(a.quote, len(a.quote) - 1))),
            Check.SIGNATURE,
        ),
        vector(
            "quote_magic_flipped",
            "The first byte of the quote is flipped: it is not TPM_GENERATED.",
            tampered(good, lambda a: setattr(a, "quote", flip(a.quote, 0))),
            Check.MAGIC,
        ),
        vector(
            "quote_type_flipped",
            "The last byte of the quote's type is flipped: it is not TPM_ST_ATTEST_QUOTE.",
            tampered(good, lambda a: setattr(a, "quote", flip(a.quote, 5))),
            Check.TYPE,
        ),
        vector(
            "ak_not_restricted",
            "The restricted bit of the AK's objectAttributes is cleared: not an AK.",
            # TPM2B_PUBLIC: size (2), type (2), nameAlg (2), then objectAttributes (4);
            # restricted is bit 16, in the second attribute byte.
            tampered(good, lambda a: setattr(a, "ak_public", flip(a.ak_public, 7))),
            Check.AK_ATTRIBUTES,
        ),
        vector(
            "signature_byte_flipped",
            "The last byte of the signature is flipped.",
            tampered(
                good, lambda a: setattr(a, "signature", flip(a.signature, len(a.signature) - 1))
            ),
            Check.SIGNATURE,
        ),
        vector(
            "old_nonce",
            "A genuine attestation replayed for a new nonce of ours.",
            good,
            Check.QUALIFYING_DATA,
            with_nonce=os.urandom(32),
        ),
        vector(
            "other_enclave_attestation",
            "A genuine attestation of another enclave, checked against this enclave's certificate.",
            other_quote,
            Check.CERTIFICATE,
        ),
        vector(
            "other_enclave_certificate_swapped_in",
            "Another enclave's attestation with this enclave's certificate swapped in:"
            " the quote binds the other certificate.",
            tampered(other_quote, swap_other_certificate_in),
            Check.QUALIFYING_DATA,
        ),
        vector(
            "signed_by_another_key",
            "The quote re-signed by a key that is not the AK.",
            resigned,
            Check.SIGNATURE,
        ),
        vector(
            "signed_by_another_key_claimed_as_ak",
            "The quote re-signed by another key, and ak_public changed to that key: the AK"
            " certificate is for the real AK.",
            tampered(resigned, claim_mallory_as_ak),
            Check.AK_CERTIFICATE_CHAIN,
        ),
        vector(
            "ak_certificate_from_another_ca",
            "The real AK's key, certified by a CA that is not trusted.",
            tampered(good, rogue_chain),
            Check.AK_CERTIFICATE_CHAIN,
        ),
        vector(
            "user_certificate_as_ak_certificate",
            "A client certificate from the trusted CA offered as the AK certificate.",
            tampered(good, user_certificate_as_ak),
            Check.AK_CERTIFICATE_CHAIN,
        ),
        vector(
            "pcr_value_tampered",
            "One bit of a returned PCR value is flipped.",
            tampered(good, pcr_flipped),
            Check.PCR_DIGEST,
        ),
        vector(
            "event_log_forged_set_root",
            "The event log replaced by a forged set root holding the certificate hash:"
            " it does not replay to PCR 23.",
            tampered(good, log_of([])),
            Check.EVENT_LOG,
        ),
        vector(
            "event_log_certificate_hash_directly",
            "The event log holds the certificate hash itself (as older servers logged it):"
            " it does not replay to PCR 23.",
            tampered(good, log_of([good.enclave_certificate_sha256])),
            Check.EVENT_LOG,
        ),
        vector(
            "event_log_without_certificate_hash",
            "No event measures the certificate (the log is emptied): it does not replay to PCR 23.",
            tampered(good, lambda a: a.ClearField("event_log")),
            Check.EVENT_LOG,
        ),
        vector(
            "qualifying_data_proof_sibling_flipped",
            "A batched quote whose merkle_proof has one sibling bit flipped.",
            tampered(
                batched,
                lambda a: a.merkle_proof.siblings.__setitem__(
                    0, flip(a.merkle_proof.siblings[0], 0)
                ),
            ),
            Check.QUALIFYING_DATA,
            with_nonce=batch_nonce,
        ),
        vector(
            "qualifying_data_proof_other_leaf",
            "A batched quote whose merkle_proof names the neighbouring leaf.",
            tampered(
                batched,
                lambda a: setattr(a.merkle_proof, "leaf_index", 1 ^ a.merkle_proof.leaf_index),
            ),
            Check.QUALIFYING_DATA,
            with_nonce=batch_nonce,
        ),
        vector(
            "measurement_proof_sibling_flipped",
            "The measurement proof has one sibling bit flipped: it does not lead to the"
            " measured set root.",
            tampered(
                good,
                lambda a: a.measurement_proof.siblings.__setitem__(
                    0, flip(a.measurement_proof.siblings[0], 0)
                ),
            ),
            Check.MEASUREMENT_PROOF,
        ),
        vector(
            "measurement_proof_other_leaf",
            "The measurement proof names the other enclave's leaf.",
            tampered(
                good,
                lambda a: setattr(
                    a.measurement_proof, "leaf_index", 1 ^ a.measurement_proof.leaf_index
                ),
            ),
            Check.MEASUREMENT_PROOF,
        ),
        vector(
            "measurement_proof_missing",
            "No measurement proof at all.",
            tampered(good, lambda a: a.ClearField("measurement_proof")),
            Check.MEASUREMENT_PROOF,
        ),
    ]
    return vectors, inside_every_validity(
        vectors, rogue.ca_certificates_pem[0], stack.ca_pem.decode()
    )


def inside_every_validity(vectors: list[Vector], *extra_pem: str) -> dt.datetime:
    """A whole second a minute after the last certificate's start, before any ends."""
    pems = {*extra_pem}
    for v in vectors:
        pems.update([v.expected_certificate_pem, v.attestation.enclave_certificate_pem])
        pems.update(v.attestation.ak_certificate_chain_pem)
    certificates = [x509.load_pem_x509_certificate(p.encode()) for p in pems if p]
    start = max(c.not_valid_before_utc for c in certificates)
    moment = (start + dt.timedelta(minutes=1)).replace(microsecond=0)
    if moment >= min(c.not_valid_after_utc for c in certificates):
        raise RuntimeError("the certificates share no validity window")
    return moment


def self_check(vectors: list[Vector], trusted: list[str], verify_at: dt.datetime) -> None:
    """The Python verifier must agree with every expectation before the file is written."""
    for v in vectors:
        try:
            verify_attestation(
                v.attestation,
                nonce=v.nonce,
                expected_certificate_pem=v.expected_certificate_pem,
                trusted_ca_pem=trusted,
                now=verify_at,
            )
            got: Check | None = None
        except AttestationError as exc:
            got = exc.check
        if got != v.failed_check:
            raise SystemExit(f"vector {v.name}: expected {v.failed_check}, verifier said {got}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attestation-vectors-") as tmp:
        stacks = start_stack("sqlite", Path(tmp), None)
        stack = next(stacks)
        try:
            trusted = [stack.ca_pem.decode()]
            vectors, verify_at = build_vectors(stack, Path(tmp))
        finally:
            for _ in stacks:  # start_stack's clean-up: stop the servers
                pass
    self_check(vectors, trusted, verify_at)
    document = {
        "format": FORMAT,
        "verify_at": verify_at.isoformat().replace("+00:00", "Z"),
        "trusted_ca_pem": trusted,
        "vectors": [v.to_json() for v in vectors],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {len(vectors)} vectors to {args.output}")


if __name__ == "__main__":
    main()
