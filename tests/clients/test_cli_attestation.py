"""The ``licensing`` CLI trusts an enclave only through its TPM attestation.

``enclave attest`` verifies a fresh attestation and prints every check;
``enclave create`` verifies the ATTESTED event against the nonce it sent (unless
``--no-verify``); ``enclave call`` verifies, then pins the attested certificate.
Failures are simulated by tampering with what this process's client receives,
so those tests run the CLI in-process (``run_cli_in_process``).
"""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from licensing_client.attestation import Check
from licensing_client.cli._output import PROGRESS_PHASES, Output
from licensing_client.gen.licensing import v1
from tests.clients.attestation_support import (
    ConnectionSpy,
    flip_last_quote_byte,
    port_of,
    record_get_attestation,
    run_cli_in_process,
    tamper_created_attestation,
    tamper_get_attestation,
)
from tests.clients.cli_support import Cli
from tests.clients.test_cli_enclaves import (
    CHECKS,
    PHASES,
    assert_verified,
    certificate_sha256,
    checks_in,
    created_id,
    get_json,
    phases_in,
)
from tests.support import Stack


def _create(cli: Cli) -> dict[str, Any]:
    return get_json(cli, created_id(cli.run("enclave", "create").ok()))


def test_attest_prints_every_check_of_a_fresh_attestation(stack: Stack, tmp_path: Path) -> None:
    cli = Cli(stack, tmp_path / "config")
    cli.signup_and_login()
    enclave = _create(cli)

    text = cli.run("enclave", "attest", enclave["id"]).ok()
    assert text.stdout.startswith(
        f"attestation of enclave {enclave['id']} verified: a fresh TPM quote binds our nonce "
        "to its certificate\n"
    ), text.stdout
    assert checks_in(text.stdout) == CHECKS, text.stdout
    assert f"certificate SHA-256  {certificate_sha256(enclave['certificate_pem'])}" in (text.stdout)
    text_nonce = re.search(r"^\s+nonce\s+([0-9a-f]{64})$", text.stdout, re.MULTILINE)
    assert text_nonce, text.stdout

    first = cli.run("--output", "json", "enclave", "attest", enclave["id"]).ok().json()
    second = cli.run("enclave", "attest", enclave["id"], "--output", "json").ok().json()
    for report in (first, second):
        assert_verified(report, enclave=enclave, nonce=report["nonce_hex"])
        assert report["source"] == "GetAttestation"
        assert len(bytes.fromhex(report["nonce_hex"])) == 32
        assert "23" in report["pcr_values"]
    # Each run asks over a nonce of its own.
    assert len({first["nonce_hex"], second["nonce_hex"], text_nonce.group(1)}) == 3

    missing = cli.run("enclave", "attest", str(uuid.uuid4()))
    assert missing.returncode == 1
    assert "(NOT_FOUND" in missing.error_line()
    cli.run("enclave", "delete", enclave["id"]).ok()


def test_attest_fails_naming_the_check(
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "config"
    cli = Cli(stack, config)
    cli.signup_and_login()
    enclave = _create(cli)
    tamper_get_attestation(monkeypatch, flip_last_quote_byte)

    failed = run_cli_in_process(capsys, stack, config, "enclave", "attest", enclave["id"])
    assert failed.returncode == 1
    line = failed.error_line()
    assert line.startswith(
        f"error: enclave {enclave['id']} failed attestation check 'signature': "
    ), line
    assert "verified" not in failed.stdout

    as_json = run_cli_in_process(
        capsys, stack, config, "--output", "json", "enclave", "attest", enclave["id"]
    )
    assert as_json.returncode == 1
    assert "'signature'" in as_json.error_line()
    document = as_json.json()
    assert document["verified"] is False
    assert document["failed_check"] == Check.SIGNATURE.value
    assert document["enclave_id"] == enclave["id"]

    monkeypatch.undo()
    cli.run("enclave", "delete", enclave["id"]).ok()


def test_create_fails_when_the_attested_event_does_not_verify_unless_told_not_to(
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "config"
    cli = Cli(stack, config)
    cli.signup_and_login()
    tamper_created_attestation(monkeypatch, flip_last_quote_byte)
    fetched = record_get_attestation(monkeypatch)

    failed = run_cli_in_process(capsys, stack, config, "enclave", "create")
    assert failed.returncode == 1
    assert phases_in(failed.stdout) == PHASES  # it was created and attested, but ...
    line = failed.error_line()
    match = re.match(r"error: enclave (\S+) failed attestation check 'signature': ", line)
    assert match, line
    assert "attestation verified" not in failed.stdout
    assert " is ATTESTED" not in failed.stdout
    assert fetched == []  # the event's own attestation was judged, not a fresh one

    as_json = run_cli_in_process(capsys, stack, config, "--output", "json", "enclave", "create")
    assert as_json.returncode == 1
    lines = as_json.json_lines()
    assert "verification" in lines[-1]
    assert lines[-1]["verification"]["verified"] is False
    assert lines[-1]["verification"]["failed_check"] == "signature"
    assert not any("enclave" in doc and "event" not in doc for doc in lines)

    skipped = run_cli_in_process(capsys, stack, config, "enclave", "create", "--no-verify")
    assert skipped.returncode == 0, skipped.stderr
    assert phases_in(skipped.stdout) == PHASES
    assert "attestation: NOT verified (--no-verify)" in skipped.stderr
    assert "attestation verified" not in skipped.stdout
    assert checks_in(skipped.stdout) == []
    unverified_id = created_id(skipped)

    monkeypatch.undo()
    for enclave_id in (match.group(1), lines[-1]["verification"]["enclave_id"], unverified_id):
        cli.run("enclave", "delete", enclave_id).ok()


def test_call_attests_before_it_connects_and_never_dials_an_enclave_that_fails(
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "config"
    cli = Cli(stack, config)
    cli.signup_and_login()
    enclave = _create(cli)
    enclave_port = port_of(enclave["endpoint"])

    # Honest: GetAttestation (over a fresh nonce) comes before the enclave is dialled.
    order: list[str] = []
    original = v1.AttestationServiceStub.get_attestation

    async def logged(
        self: v1.AttestationServiceStub, request: v1.GetAttestationRequest, **kwargs: Any
    ) -> v1.GetAttestationResponse:
        order.append(f"attest {len(request.nonce)}")
        return await original(self, request, **kwargs)

    monkeypatch.setattr(v1.AttestationServiceStub, "get_attestation", logged)
    spy = ConnectionSpy(log=order).install(monkeypatch)
    called = run_cli_in_process(
        capsys, stack, config, "--output", "json", "enclave", "call", enclave["id"], "identity"
    )
    assert called.returncode == 0, called.stderr
    assert called.json()["matches_pinned_certificate"] is True
    assert f"attestation: enclave {enclave['id']} verified" in called.stderr
    assert order.count("attest 32") == 1
    assert order.count(f"dial {enclave_port}") == 1
    assert order.index("attest 32") < order.index(f"dial {enclave_port}"), order

    # Tampered: the call fails naming the check, and the enclave is never dialled.
    monkeypatch.undo()
    tamper_get_attestation(monkeypatch, flip_last_quote_byte)
    spy = ConnectionSpy().install(monkeypatch)
    refused = run_cli_in_process(
        capsys, stack, config, "enclave", "call", enclave["id"], "put-secret", "k", "v"
    )
    assert refused.returncode == 1
    line = refused.error_line()
    assert line == (
        f"error: enclave {enclave['id']} failed attestation check 'signature': "
        "the quote's signature does not verify with the AK; not connecting to it"
    ), line
    assert spy.dials, "the licensing API was dialled"
    assert enclave_port not in spy.ports()

    monkeypatch.undo()
    listed = cli.run("enclave", "call", enclave["id"], "list-secrets").ok()
    assert listed.stdout.strip() == "no secrets"  # the refused put never arrived
    cli.run("enclave", "delete", enclave["id"]).ok()


def test_the_progress_bar_ends_with_attesting_and_attested() -> None:
    assert PROGRESS_PHASES[-3:] == (v1.Phase.READY, v1.Phase.ATTESTING, v1.Phase.ATTESTED)
    stdout = io.StringIO()
    steps: dict[str, tuple[float, float] | None] = {}
    with Output("text", stdout=stdout, stderr=io.StringIO()).events("creating enclave") as view:
        assert view.progress == (0, len(PHASES))
        for sequence, number in enumerate(PROGRESS_PHASES, start=1):
            phase = v1.Phase(number)
            view.show(
                v1.CreateEnclaveResponse(
                    enclave_id="e", phase=phase, message=f"now {phase.name}", sequence=sequence
                )
            )
            steps[phase.name or ""] = view.progress
        # A failure after READY leaves the bar where it was.
        view.show(
            v1.CreateEnclaveResponse(enclave_id="e", phase=v1.Phase(v1.Phase.FAILED), sequence=8)
        )
        assert view.progress == (len(PHASES), len(PHASES))
    assert steps == {name: (index, len(PHASES)) for index, name in enumerate(PHASES, start=1)}
    assert phases_in(stdout.getvalue()) == [*PHASES, "FAILED"]
