"""``licensing enclave watch ID --attestations``: each re-attestation, verified as it comes.

A stack of its own re-attests every 2 s. The person asks for their own nonce and two
rounds; each is verified against the certificate pinned when the watch began, and one
binds the nonce they chose. When the licence is revoked the watch says so and fails.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.cli_support import Cli
from tests.provisioning.streams import enclave_processes
from tests.support import Stack, start_stack

_ID = re.compile(r"^enclave (\S+) is ATTESTED$", re.MULTILINE)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack(
        "sqlite",
        tmp_path_factory.mktemp("cli-reattest"),
        None,
        LICENSING_REATTEST_INTERVAL_SECONDS="2",
    )


def _create(cli: Cli) -> str:
    created = cli.run("enclave", "create").ok()
    match = _ID.search(created.stdout)
    assert match, created.stdout
    return match.group(1)


def test_watch_shows_each_verified_round_and_the_persons_own_nonce(
    stack: Stack, tmp_path: Path
) -> None:
    cli = Cli(stack, tmp_path / "config")
    cli.signup_and_login()
    enclave_id = _create(cli)
    nonce = os.urandom(32).hex()

    watched = cli.run(
        "--output", "json", "enclave", "watch", enclave_id,
        "--attestations", "--nonce-hex", nonce, "--rounds", "3",
    ).ok()  # fmt: skip
    rounds = [line["reattestation"] for line in watched.json_lines() if "reattestation" in line]
    assert len(rounds) == 3
    assert all(r["verified"] for r in rounds)
    assert [r["round"] for r in rounds] == sorted(r["round"] for r in rounds)
    assert len({r["certificate_sha256"] for r in rounds}) == 1
    assert any(r["requested"] and r["nonce_hex"] == nonce for r in rounds)

    text = cli.run("enclave", "watch", enclave_id, "--attestations", "--rounds", "1").ok()
    assert re.search(r"round \d+: verified \(TPM quote over a fresh server nonce", text.stdout)

    usage = cli.run("enclave", "watch", enclave_id, "--rounds", "1")
    assert usage.returncode != 0
    assert "--attestations" in usage.stderr


def test_watch_fails_when_the_licence_is_revoked(stack: Stack, tmp_path: Path) -> None:
    cli = Cli(stack, tmp_path / "config")
    cli.signup_and_login()
    enclave_id = _create(cli)
    watching = cli.popen("enclave", "watch", enclave_id, "--attestations")
    try:
        (process,) = [  # the enclave's process, not the watching CLI's
            p
            for p in enclave_processes(stack, [enclave_id])
            if enclave_id in " ".join(p.argv) and "licensing_client.cli" not in p.argv
        ]
        os.kill(process.pid, 9)
        _, stderr = watching.communicate(timeout=60)
    finally:
        watching.kill()
    assert watching.returncode != 0
    assert "licence is revoked" in stderr, stderr
    assert "WORKLOAD_LOST" in stderr, stderr
