"""The shared attestation vectors: the Python verifier reaches every expected verdict.

clients/testdata/attestation-vectors.json is what every client's verifier (Python, Go,
TypeScript) must agree with, check for check; scripts/make-attestation-vectors.py writes
it from a real stack.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from licensing.v1 import attestation_pb2

from licensing_client.attestation import AttestationError, Check, verify_attestation
from tests.support import REPO

VECTORS = REPO / "clients" / "testdata" / "attestation-vectors.json"
GENERATOR = REPO / "scripts" / "make-attestation-vectors.py"

#: The tampering classes every client must be tested against (issue 11 item 3).
REQUIRED = {
    "good",
    "good_batched",
    "quote_byte_flipped",
    "signature_byte_flipped",
    "old_nonce",
    "other_enclave_attestation",
    "signed_by_another_key_claimed_as_ak",
    "ak_certificate_from_another_ca",
    "pcr_value_tampered",
    "event_log_without_certificate_hash",
    "qualifying_data_proof_sibling_flipped",
    "measurement_proof_sibling_flipped",
}


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def verdict(vector: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """What the Python verifier says, in the file's ``expected`` shape."""
    # ParseDict refuses unknown fields: a vector that no longer matches the contract fails.
    attestation = json_format.ParseDict(vector["attestation"], attestation_pb2.Attestation())
    try:
        verify_attestation(
            attestation,
            nonce=base64.b64decode(vector["nonce"], validate=True),
            expected_certificate_pem=vector["expected_certificate_pem"],
            trusted_ca_pem=document["trusted_ca_pem"],
            now=dt.datetime.fromisoformat(document["verify_at"]),
        )
    except AttestationError as failed:
        return {"valid": False, "failed_check": str(failed.check)}
    return {"valid": True}


COMMITTED = load(VECTORS)


@pytest.mark.parametrize("vector", COMMITTED["vectors"], ids=lambda v: str(v["name"]))
def test_the_python_verifier_agrees_with_every_vector(vector: dict[str, Any]) -> None:
    assert verdict(vector, COMMITTED) == vector["expected"], vector["description"]


def test_the_vectors_cover_every_tampering_class() -> None:
    assert COMMITTED["format"] == 1
    names = [v["name"] for v in COMMITTED["vectors"]]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED
    batched = next(v for v in COMMITTED["vectors"] if v["name"] == "good_batched")
    assert batched["attestation"]["merkle_proof"]["siblings"]
    named = {v["expected"].get("failed_check") for v in COMMITTED["vectors"]} - {None}
    assert named <= {str(c) for c in Check}
    # Every check has a vector that fails it.
    assert named == {str(c) for c in Check}


def test_a_vector_outside_the_certificates_validity_fails_the_chain() -> None:
    """verify_at matters: the same good vector a year later is refused."""
    good = next(v for v in COMMITTED["vectors"] if v["name"] == "good")
    later = dict(COMMITTED)
    later["verify_at"] = (
        dt.datetime.fromisoformat(COMMITTED["verify_at"]) + dt.timedelta(days=3650)
    ).isoformat()
    assert verdict(good, later) == {"valid": False, "failed_check": "ak_certificate_chain"}


def test_the_generator_still_writes_vectors_that_parse_and_agree(tmp_path: Path) -> None:
    """A fresh run against a real stack: same vectors, same verdicts as the committed file."""
    output = tmp_path / "vectors.json"
    subprocess.run(
        [sys.executable, str(GENERATOR), "--output", str(output)],
        check=True,
        cwd=REPO,
        timeout=300,
    )
    fresh = load(output)
    assert fresh["format"] == COMMITTED["format"]
    assert [(v["name"], v["expected"]) for v in fresh["vectors"]] == [
        (v["name"], v["expected"]) for v in COMMITTED["vectors"]
    ]
    for vector in fresh["vectors"]:
        assert verdict(vector, fresh) == vector["expected"], vector["name"]


def _self_signed_ca_pem(name: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = dt.datetime.fromisoformat(COMMITTED["verify_at"]) - dt.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_a_cached_chain_answers_only_for_its_ca_set_and_only_while_valid() -> None:
    """The chain cache skips the signature walk, never the CA set or the clock."""
    from licensing_client.attestation import _verify

    good = next(v for v in COMMITTED["vectors"] if v["name"] == "good")
    _verify._chains.clear()
    assert verdict(good, COMMITTED) == {"valid": True}
    assert verdict(good, COMMITTED) == {"valid": True}  # now from the cache
    assert len(_verify._chains._items) == 1

    another_ca = dict(COMMITTED, trusted_ca_pem=[_self_signed_ca_pem("not the licensing CA")])
    assert verdict(good, another_ca) == {"valid": False, "failed_check": "ak_certificate_chain"}

    for days in (3650, -3650):
        moved = dict(COMMITTED)
        moved["verify_at"] = (
            dt.datetime.fromisoformat(COMMITTED["verify_at"]) + dt.timedelta(days=days)
        ).isoformat()
        assert verdict(good, moved) == {"valid": False, "failed_check": "ak_certificate_chain"}

    # A refused chain is not cached: only the good one is there.
    assert len(_verify._chains._items) == 1
    tampered = next(
        v for v in COMMITTED["vectors"] if v["name"] == "ak_certificate_from_another_ca"
    )
    assert verdict(tampered, COMMITTED) == tampered["expected"]
    assert verdict(tampered, COMMITTED) == tampered["expected"]
    assert len(_verify._chains._items) == 1
