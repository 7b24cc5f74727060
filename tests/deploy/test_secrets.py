"""Secrets live in git only encrypted (sops + age): the dev overlay's decrypt with the
committed DEV key into valid Secret manifests, nothing decrypts without a key, and the
production overlay's do not decrypt with the dev key."""

from __future__ import annotations

import re
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from licensing_server.tokens import TokenKeySet
from tests.deploy.conftest import DEV_KEY, OVERLAYS, REPO, decrypt, documents

ENCRYPTED = {o: REPO / "k8s" / "overlays" / o / "secrets.enc.yaml" for o in OVERLAYS}
EXPECTED = {
    ("cert-manager", "licensing-ca"),
    ("licensing", "licensing-ca"),
    ("licensing", "licensing-token-signing-key"),
    ("licensing", "licensing-database"),
}


def _public_key_of(identity_file: Path) -> str:
    (line,) = [ln for ln in identity_file.read_text().splitlines() if "public key:" in ln]
    return line.split("public key:")[1].strip()


def _by_name(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["metadata"]["namespace"], m["metadata"]["name"]): m for m in manifests}


def test_the_dev_secrets_decrypt_with_the_committed_dev_key_into_valid_secrets(
    sops: str, tmp_path: Path
) -> None:
    done = decrypt(sops, ENCRYPTED["dev"], DEV_KEY, tmp_path)
    assert done.returncode == 0, done.stderr
    secrets = _by_name(documents(done.stdout))
    assert set(secrets) == EXPECTED
    for secret in secrets.values():
        assert secret["apiVersion"] == "v1"
        assert secret["kind"] == "Secret"
        assert "sops" not in secret

    # The CA: one self-signed CA certificate and its key, the same in both namespaces.
    ca = secrets[("licensing", "licensing-ca")]
    assert ca["type"] == "kubernetes.io/tls"
    assert ca["stringData"] == secrets[("cert-manager", "licensing-ca")]["stringData"]
    cert = x509.load_pem_x509_certificate(ca["stringData"]["tls.crt"].encode())
    key = serialization.load_pem_private_key(ca["stringData"]["tls.key"].encode(), None)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == cert.subject
    assert cert.public_key() == key.public_key()

    # The token signing key set: a current key and a pre-published next one.
    signing = secrets[("licensing", "licensing-token-signing-key")]["stringData"]
    assert set(signing) == {"token-signing-keys.json"}
    key_set = TokenKeySet.from_json(signing["token-signing-keys.json"])
    assert key_set.next is not None
    assert isinstance(key_set.signing_key.private_key, ec.EllipticCurvePrivateKey)

    # The password goes into a database URL as is: long and URL-safe.
    password = secrets[("licensing", "licensing-database")]["stringData"]["password"]
    assert len(password) >= 32
    assert set(password) <= set(string.ascii_letters + string.digits)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nothing_decrypts_without_a_key(sops: str, tmp_path: Path, overlay: str) -> None:
    done = decrypt(sops, ENCRYPTED[overlay], None, tmp_path)
    assert done.returncode != 0
    assert "Failed to get the data key" in done.stderr
    assert "BEGIN" not in done.stdout
    assert "PRIVATE KEY" not in done.stdout


def test_the_dev_key_does_not_open_the_production_secrets(sops: str, tmp_path: Path) -> None:
    done = decrypt(sops, ENCRYPTED["production"], DEV_KEY, tmp_path)
    assert done.returncode != 0
    assert "Failed to get the data key" in done.stderr
    assert "PRIVATE KEY" not in done.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_value_in_git_is_encrypted(overlay: str) -> None:
    manifests = list(yaml.safe_load_all(ENCRYPTED[overlay].read_text()))
    assert {(m["metadata"]["namespace"], m["metadata"]["name"]) for m in manifests} == EXPECTED
    for manifest in manifests:
        values = {**manifest.get("data", {}), **manifest.get("stringData", {})}
        assert values, manifest["metadata"]
        for name, value in values.items():
            assert re.fullmatch(r"ENC\[AES256_GCM,data:.+\]", value), name
        assert manifest["sops"]["mac"].startswith("ENC[")


def test_no_plaintext_key_material_anywhere_under_k8s() -> None:
    for path in (REPO / "k8s").rglob("*"):
        if path.is_file() and path != DEV_KEY:
            assert "PRIVATE KEY-----" not in path.read_text(errors="replace"), path


def test_the_sops_rules_keep_the_dev_recipient_to_the_dev_overlay() -> None:
    rules = yaml.safe_load((REPO / ".sops.yaml").read_text())["creation_rules"]
    dev_recipient = _public_key_of(DEV_KEY)
    by_path = {r["path_regex"]: r for r in rules}
    (dev_rule,) = [r for p, r in by_path.items() if "overlays/dev/" in p]
    assert dev_rule["age"] == dev_recipient
    for path, rule in by_path.items():
        if rule is not dev_rule:
            assert dev_recipient not in rule["age"], f"the dev key also opens {path}"
    # Everything is encrypted to exactly what its rule says.
    for overlay, path in ENCRYPTED.items():
        (rule,) = [r for p, r in by_path.items() if f"overlays/{overlay}/" in p]
        recipients = {
            a["recipient"] for m in yaml.safe_load_all(path.read_text()) for a in m["sops"]["age"]
        }
        assert recipients == set(rule["age"].split(","))


def test_the_dev_key_file_says_what_it_is_in_big_letters() -> None:
    head = DEV_KEY.read_text().splitlines()[:3]
    assert any("DEV ONLY" in line and "PUBLIC" in line for line in head)


def _new_secrets(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "k8s" / "new_secrets.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def _key_set(manifests: str) -> TokenKeySet:
    signing = _by_name(documents(manifests))[("licensing", "licensing-token-signing-key")]
    return TokenKeySet.from_json(signing["stringData"]["token-signing-keys.json"])


def test_renewing_the_signing_key_rotates_the_set_and_a_young_next_key_waits(
    sops: str, tmp_path: Path
) -> None:
    """Renewal is a rotation: next signs, the old current stays published as previous."""
    current = decrypt(sops, ENCRYPTED["dev"], DEV_KEY, tmp_path)
    assert current.returncode == 0, current.stderr
    before = _key_set(current.stdout)
    assert before.next is not None
    # The committed next key is younger than an enclave lifetime of ten years.
    refused = _new_secrets(
        "--renew", "token-signing-key", "--enclave-ttl-seconds", str(10 * 365 * 86400),
        stdin=current.stdout,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "not rotated" in refused.stderr
    assert "PRIVATE KEY" not in refused.stdout + refused.stderr
    rotated = _new_secrets("--renew", "token-signing-key", "--force", stdin=current.stdout)
    assert rotated.returncode == 0, rotated.stderr
    after = _key_set(rotated.stdout)
    assert after.signing_key.kid == before.next.key.kid
    assert [p.key.kid for p in after.previous] == [before.signing_key.kid]
    assert after.next is not None
    assert after.next.key.kid not in {k.kid for k in before.published()}
    # The old keys leaked: a new set shares none of them.
    replaced = _new_secrets(
        "--renew", "token-signing-key", "--new-token-key-set", stdin=current.stdout
    )
    assert replaced.returncode == 0, replaced.stderr
    fresh = _key_set(replaced.stdout)
    assert {k.kid for k in fresh.published()}.isdisjoint(k.kid for k in before.published())


def test_an_old_single_key_secret_is_renewed_into_a_set_that_publishes_a_next_key() -> None:
    """A Secret from before key sets: its key keeps signing, a next key is published."""
    old_key = ec.generate_private_key(ec.SECP256R1())
    pem = old_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    fresh = _new_secrets(stdin="")
    assert fresh.returncode == 0, fresh.stderr
    manifests = documents(fresh.stdout)
    for manifest in manifests:
        if manifest["metadata"]["name"] == "licensing-token-signing-key":
            manifest["stringData"] = {"token-signing-key.pem": pem}
    renewed = _new_secrets(
        "--renew", "token-signing-key", stdin=yaml.safe_dump_all(manifests)
    )  # a single key has no next to wait for: no --force
    assert renewed.returncode == 0, renewed.stderr
    key_set = _key_set(renewed.stdout)
    assert key_set.signing_key.private_key.private_numbers() == old_key.private_numbers()
    assert key_set.next is not None
    assert key_set.previous == ()


def test_an_operator_renews_the_signing_key_and_keeps_the_rest(sops: str, tmp_path: Path) -> None:
    """The runbook's rotation: decrypt, renew one Secret, encrypt by the rules in .sops.yaml."""
    current = decrypt(sops, ENCRYPTED["dev"], DEV_KEY, tmp_path)
    assert current.returncode == 0, current.stderr
    renewed = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "k8s" / "new_secrets.py"),
            "--renew",
            "token-signing-key",
            "--force",  # the committed next key is younger than an enclave lifetime
        ],
        input=current.stdout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    encrypted = subprocess.run(
        [
            sops,
            "encrypt",
            "--filename-override",
            "k8s/overlays/dev/secrets.enc.yaml",
            "--input-type",
            "yaml",
            "--output-type",
            "yaml",
            "/dev/stdin",
        ],
        input=renewed,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert "PRIVATE KEY" not in encrypted
    new_file = tmp_path / "secrets.enc.yaml"
    new_file.write_text(encrypted)
    after = decrypt(sops, new_file, DEV_KEY, tmp_path)
    assert after.returncode == 0, after.stderr
    before, now = _by_name(documents(current.stdout)), _by_name(documents(after.stdout))
    signing = ("licensing", "licensing-token-signing-key")
    assert now[signing]["stringData"] != before[signing]["stringData"]
    for key in EXPECTED - {signing}:
        assert now[key]["stringData"] == before[key]["stringData"], key
