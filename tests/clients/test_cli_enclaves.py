"""A person creates an enclave with the ``licensing`` CLI, uses it, and deletes it.

The whole story: provisioning phases in order with a live bar up to ATTESTED, the
attestation verified against the nonce the CLI sent, list/get, secrets and
signatures over mutual TLS pinned to the attested certificate, then deletion.
"""

from __future__ import annotations

import base64
import hashlib
import re
import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from licensing_client import bearer, enclave_channel
from licensing_client.attestation import Check, verify_attestation
from licensing_client.gen.enclave import v1 as workload
from licensing_client.gen.licensing import v1
from tests.clients.cli_support import Cli, Result
from tests.support import Stack

PHASES = [
    "ACCEPTED",
    "SCHEDULED",
    "RUNNING",
    "CERTIFICATE_ISSUED",
    "READY",
    "ATTESTING",
    "ATTESTED",
]
CHECKS = [check.value for check in Check]
_ID = re.compile(r"^enclave (\S+) is ATTESTED$", re.MULTILINE)


def phases_in(text: str) -> list[str]:
    """The phase column of the event lines the CLI prints, in order."""
    names = "|".join([*PHASES, "FAILED", "DELETED"])
    return re.findall(rf"^\s*\d+\s+({names})\b", text, re.MULTILINE)


def created_id(result: Result) -> str:
    match = _ID.search(result.stdout)
    assert match, result.stdout
    return match.group(1)


def checks_in(text: str) -> list[str]:
    """The checks the CLI printed as passed (``    <check>  ok  <detail>``), in order."""
    names = "|".join(CHECKS)
    return re.findall(rf"^\s+({names})\s+ok\s+\S", text, re.MULTILINE)


def certificate_sha256(certificate_pem: str) -> str:
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def assert_verified(verification: dict[str, Any], *, enclave: dict[str, Any], nonce: str) -> None:
    """A JSON verification report: every check passed, over our nonce and its certificate."""
    assert verification["verified"] is True
    assert verification["enclave_id"] == enclave["id"]
    assert verification["nonce_hex"] == nonce
    assert verification["certificate_sha256"] == certificate_sha256(enclave["certificate_pem"])
    assert [c["check"] for c in verification["checks"]] == CHECKS
    assert all(c["result"] == "ok" and c["detail"] for c in verification["checks"])


def get_json(cli: Cli, enclave_id: str) -> dict[str, Any]:
    data: dict[str, Any] = cli.run("--output", "json", "enclave", "get", enclave_id).ok().json()
    return data


def test_create_use_and_delete_an_enclave(stack: Stack, tmp_path: Path) -> None:
    cli = Cli(stack, tmp_path / "config")
    cli.signup_and_login()
    user_id = cli.session()["user_id"]

    created = cli.run("enclave", "create").ok()
    # The request id is printed first, so an interrupted create can be retried safely.
    first_line = created.stdout.splitlines()[0]
    assert re.match(r"request id [0-9a-f-]{36} ", first_line), first_line
    assert phases_in(created.stdout) == PHASES, created.stdout
    enclave_id = created_id(created)
    # The ATTESTED event's attestation was verified against the nonce the CLI sent.
    assert (
        f"attestation verified (ATTESTED event): a TPM quote binds our nonce to the "
        f"certificate of enclave {enclave_id}" in created.stdout
    )
    assert checks_in(created.stdout) == CHECKS, created.stdout
    assert "NOT verified" not in created.stderr

    listed = cli.run("enclave", "list").ok()
    assert enclave_id in listed.stdout
    listed_json = cli.run("--output", "json", "enclave", "list").ok().json()
    assert enclave_id in [e["id"] for e in listed_json["enclaves"]]

    enclave = get_json(cli, enclave_id)
    assert enclave["phase"] == "ATTESTED"
    assert enclave["owner"] == user_id
    assert enclave["endpoint"]
    assert enclave["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
    text = cli.run("enclave", "get", enclave_id).ok().stdout
    assert enclave_id in text
    assert enclave["endpoint"] in text

    called = cli.run("--output", "json", "enclave", "call", enclave_id, "identity").ok()
    identity = called.json()
    assert identity["enclave_id"] == enclave_id
    assert identity["owner"] == user_id
    assert identity["matches_pinned_certificate"] is True
    assert identity["certificate_sha256"] == certificate_sha256(enclave["certificate_pem"])
    # Every call attests the enclave afresh before pinning its certificate.
    assert f"attestation: enclave {enclave_id} verified ({len(CHECKS)} checks" in called.stderr

    cli.run("enclave", "call", enclave_id, "put-secret", "db-password", "hunter2").ok()
    got = cli.run("enclave", "call", enclave_id, "get-secret", "db-password").ok()
    assert got.stdout == "hunter2"
    names = cli.run("enclave", "call", enclave_id, "list-secrets").ok()
    assert "db-password" in names.stdout.split()

    signed = cli.run("enclave", "call", enclave_id, "sign", "license #42").ok()
    assert "verified            ECDSA P-256/SHA-256 by the attested, pinned certificate" in (
        signed.stdout
    )
    signed_json = (
        cli.run("--output", "json", "enclave", "call", enclave_id, "sign", "license #42")
        .ok()
        .json()
    )
    assert signed_json["verified"] is True
    # Check it here too, independently of the CLI, against the certificate the server reported.
    certificate = x509.load_pem_x509_certificate(enclave["certificate_pem"].encode())
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(
        base64.b64decode(signed_json["signature_base64"]),
        b"license #42",
        ec.ECDSA(hashes.SHA256()),
    )

    cli.run("enclave", "call", enclave_id, "delete-secret", "db-password").ok()
    missing = cli.run("enclave", "call", enclave_id, "get-secret", "db-password")
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.error_line()

    deleted = cli.run("enclave", "delete", enclave_id).ok()
    assert enclave_id in deleted.stdout
    gone = cli.run("enclave", "get", enclave_id)
    assert gone.returncode == 1
    line = gone.error_line()
    assert line.startswith(f"error: getting enclave {enclave_id} failed: ")
    assert "(NOT_FOUND" in line


def test_create_as_json_lines_then_watch_and_retry_by_request_id(
    stack: Stack, tmp_path: Path
) -> None:
    cli = Cli(stack, tmp_path / "config")
    cli.signup_and_login()
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    nonce = "ab" * 32

    created = cli.run(
        "--output", "json", "enclave", "create", "--request-id", request_id, "--nonce-hex", nonce
    ).ok()
    lines = created.json_lines()
    events = [line["event"] for line in lines if "event" in line]
    finals = [line["enclave"] for line in lines if "enclave" in line and "event" not in line]
    verifications = [line["verification"] for line in lines if "verification" in line]
    assert [e["phase"] for e in events] == PHASES
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == len(sequences)
    assert sequences[0] == 1
    assert all(e["message"] for e in events)
    assert len(finals) == 1
    assert lines[-1] == {"enclave": finals[0]}
    enclave = finals[0]
    assert enclave["request_id"] == request_id
    assert enclave["phase"] == "ATTESTED"
    enclave_id = enclave["id"]
    assert {e["enclave_id"] for e in events} == {enclave_id}
    # The verification report comes just before the enclave; it checked the event's own
    # attestation against our nonce.
    assert len(verifications) == 1
    assert lines[-2] == {"verification": verifications[0]}
    assert_verified(verifications[0], enclave=enclave, nonce=nonce)
    assert verifications[0]["source"] == "ATTESTED event"
    # Only the ATTESTED event carries the attestation, and it verifies here independently.
    assert [e["phase"] for e in events if e["attestation"]] == ["ATTESTED"]
    attestation = v1.Attestation().from_dict(events[-1]["attestation"])
    report = verify_attestation(
        attestation,
        nonce=bytes.fromhex(nonce),
        expected_certificate_pem=enclave["certificate_pem"],
        trusted_ca_pem=[stack.ca_pem.decode()],
    )
    assert [r.check.value for r in report.checks] == CHECKS

    # Watching from a sequence replays only what came after it.
    watched = cli.run(
        "--output", "json", "enclave", "watch", enclave_id, "--from-sequence", "2"
    ).ok()
    watched_events = [line["event"] for line in watched.json_lines() if "event" in line]
    assert watched_events
    assert all(e["sequence"] > 2 for e in watched_events)
    assert [e["phase"] for e in watched_events] == PHASES[2:]

    # The same request id again is the same enclave, not a second one; its replayed
    # attestation is over the same nonce, so it verifies as it is.
    again = cli.run(
        "--output", "json", "enclave", "create", "--request-id", request_id, "--nonce-hex", nonce
    ).ok()
    again_lines = again.json_lines()
    assert again_lines[-1]["enclave"]["id"] == enclave_id
    assert again_lines[-2]["verification"]["source"] == "ATTESTED event"
    assert_verified(again_lines[-2]["verification"], enclave=enclave, nonce=nonce)

    # A retry with another nonce (as `--request-id` alone makes) replays an attestation
    # over the first nonce: a fresh one is fetched over the new nonce and verified.
    other_nonce = "cd" * 32
    retried = cli.run(
        "--output",
        "json",
        "enclave",
        "create",
        "--request-id",
        request_id,
        "--nonce-hex",
        other_nonce,
    ).ok()
    retried_lines = retried.json_lines()
    assert retried_lines[-1]["enclave"]["id"] == enclave_id
    assert retried_lines[-2]["verification"]["source"] == "GetAttestation"
    assert_verified(retried_lines[-2]["verification"], enclave=enclave, nonce=other_nonce)
    assert "replay" in retried.stderr
    listed = cli.run("--output", "json", "enclave", "list", "--page-size", "1").ok().json()
    assert [e["id"] for e in listed["enclaves"]].count(enclave_id) == 1

    cli.run("enclave", "delete", enclave_id).ok()


async def test_the_enclave_channel_trusts_only_the_pinned_certificate(
    stack: Stack, tmp_path: Path
) -> None:
    """Another enclave's certificate, from the same CA, fails the handshake before any token."""
    config = tmp_path / "config"
    cli = Cli(stack, config)
    cli.signup_and_login()
    first = created_id(cli.run("enclave", "create").ok())
    second = created_id(cli.run("enclave", "create").ok())
    cli.run("whoami").ok()  # a fresh token for the calls below
    token = cli.session()["access_token"]
    a, b = get_json(cli, first), get_json(cli, second)

    def channel_to_a(pinned_pem: str) -> Any:
        return enclave_channel(
            a["endpoint"],
            tls_server_name=a["tls_server_name"],
            pinned_certificate_pem=pinned_pem,
            cert_file=config / "cert.pem",
            key_file=config / "key.pem",
        )

    good = channel_to_a(a["certificate_pem"])
    try:
        identity = await workload.WorkloadServiceStub(good).get_identity(
            workload.GetIdentityRequest(), metadata=bearer(token), timeout=30
        )
        assert identity.enclave_id == first
    finally:
        good.close()

    wrong = channel_to_a(b["certificate_pem"])
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await workload.WorkloadServiceStub(wrong).get_identity(
                workload.GetIdentityRequest(), metadata=bearer(token), timeout=30
            )
    finally:
        wrong.close()

    for enclave_id in (first, second):
        cli.run("enclave", "delete", enclave_id).ok()
