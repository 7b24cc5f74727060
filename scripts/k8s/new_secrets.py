"""Print the Secret manifests of a licensing deployment, in plaintext, for sops to encrypt.

Fresh secrets for an overlay (never write the plaintext to a file in the repository):

    .venv/bin/python scripts/k8s/new_secrets.py | .tools/bin/sops encrypt \\
        --filename-override k8s/overlays/OVERLAY/secrets.enc.yaml \\
        --input-type yaml --output-type yaml /dev/stdin > secrets.enc.yaml.new \\
      && mv secrets.enc.yaml.new k8s/overlays/OVERLAY/secrets.enc.yaml

Renew some and keep the rest (the current Secrets, decrypted, on stdin):

    .tools/bin/sops decrypt k8s/overlays/OVERLAY/secrets.enc.yaml \\
      | .venv/bin/python scripts/k8s/new_secrets.py --renew token-signing-key \\
      | .tools/bin/sops encrypt ... (as above)

The Secrets, and the names ``--renew`` takes:

- ``ca``: ``licensing-ca`` (type kubernetes.io/tls), twice: in ``cert-manager`` for the CA
  ClusterIssuer and in ``licensing`` for the backend. A new self-signed licensing CA made by
  the backend's own ``CertificateAuthority`` (the same key type, names and lifetime).
- ``token-signing-key``: ``licensing-token-signing-key``, the frontend's token signing key set
  (``token-signing-keys.json``: current, a pre-published next, previous). Made fresh with a
  current and a next key; renewing it *rotates* the set on stdin (next becomes current, the
  old current stays as previous for the access-token lifetime, a new next is published), or
  turns an old single-key Secret (``token-signing-key.pem``) into a set that publishes a next
  key. A next key younger than an enclave lifetime (``--enclave-ttl-seconds``) and 5 minutes
  is not promoted without ``--force``: enclaves made before it was published would refuse
  its tokens.
- ``database-password``: ``licensing-database``, URL-safe (it goes into the database URL).
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from licensing_server.layout import DataLayout
from licensing_server.pki import CertificateAuthority
from licensing_server.tokens import (
    KEY_SET_FILE,
    PROPAGATION_ALLOWANCE,
    SINGLE_KEY_FILE,
    KeySetFiles,
    RotationRefused,
    TokenKeySet,
)

CERT_MANAGER_NAMESPACE = "cert-manager"
NAMESPACE = "licensing"
Manifest = dict[str, Any]
#: A previous key outlives the access tokens it signed (LICENSING_ACCESS_TOKEN_TTL_SECONDS at
#: most 3600) plus the minutes a Secret update takes to reach every replica's files.
KEEP_PREVIOUS_FOR = dt.timedelta(seconds=3600) + PROPAGATION_ALLOWANCE


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a maker may use: the Secrets on stdin (rotation needs the old set)."""

    current: dict[tuple[str, str], Manifest]
    now: dt.datetime
    enclave_ttl: dt.timedelta = dt.timedelta(seconds=3600)
    force: bool = False
    #: A new key set, whatever is on stdin (the old one leaked).
    new_key_set: bool = False


def _secret(name: str, namespace: str, data: dict[str, str], kind: str = "Opaque") -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "licensing"},
        },
        "type": kind,
        "stringData": data,
    }


def _ca(_: Inputs) -> list[Manifest]:
    with tempfile.TemporaryDirectory() as tmp:
        layout = DataLayout(Path(tmp))
        CertificateAuthority.load_or_create(layout.ca_key, layout.ca_certificate)
        data = {"tls.crt": layout.ca_certificate.read_text(), "tls.key": layout.ca_key.read_text()}
    return [
        _secret("licensing-ca", CERT_MANAGER_NAMESPACE, data, "kubernetes.io/tls"),
        _secret("licensing-ca", NAMESPACE, dict(data), "kubernetes.io/tls"),
    ]


def _token_signing_key(inputs: Inputs) -> list[Manifest]:
    """The set on stdin rotated (read as the frontend reads it), else a fresh one."""
    old = inputs.current.get((NAMESPACE, "licensing-token-signing-key"), {}).get("stringData")
    if old and not inputs.new_key_set and (KEY_SET_FILE in old or SINGLE_KEY_FILE in old):
        with tempfile.TemporaryDirectory() as tmp:
            for name in (KEY_SET_FILE, SINGLE_KEY_FILE):
                if name in old:
                    (Path(tmp) / name).write_text(old[name])
            before = KeySetFiles(Path(tmp), create=False, clock=lambda: inputs.now).load()
        try:
            key_set = before.rotated(
                inputs.now,
                keep_previous_for=KEEP_PREVIOUS_FOR,
                min_next_age=inputs.enclave_ttl + PROPAGATION_ALLOWANCE,
                force=inputs.force,
            )
        except RotationRefused as exc:
            raise SystemExit(f"new_secrets.py: not rotated: {exc}") from exc
    else:
        key_set = TokenKeySet.fresh(inputs.now)
    data = {KEY_SET_FILE: key_set.to_json()}
    return [_secret("licensing-token-signing-key", NAMESPACE, data)]


def _database_password(_: Inputs) -> list[Manifest]:
    return [_secret("licensing-database", NAMESPACE, {"password": secrets.token_hex(24)})]


#: What --renew names, in the order the manifests are printed.
MAKERS: dict[str, Callable[[Inputs], list[Manifest]]] = {
    "ca": _ca,
    "token-signing-key": _token_signing_key,
    "database-password": _database_password,
}


def _key(manifest: Manifest) -> tuple[str, str]:
    return manifest["metadata"]["namespace"], manifest["metadata"]["name"]


def manifests(
    renew: set[str],
    current: list[Manifest],
    *,
    enclave_ttl: dt.timedelta = dt.timedelta(seconds=3600),
    force: bool = False,
    new_key_set: bool = False,
) -> list[Manifest]:
    """Every Secret: made (or rotated) if named in ``renew``, else taken from ``current``."""
    have = {_key(m): m for m in current}
    now = dt.datetime.now(dt.UTC)
    out: list[Manifest] = []
    for name, make in MAKERS.items():
        # Only what is renewed sees stdin (a rotation); the rest is made just for its names.
        inputs = Inputs(have if name in renew else {}, now, enclave_ttl, force, new_key_set)
        fresh = make(inputs)
        if name in renew:
            out.extend(fresh)
            continue
        for manifest in fresh:
            if _key(manifest) not in have:
                raise SystemExit(f"new_secrets.py: {_key(manifest)} is not on stdin; renew {name}")
            out.append(have[_key(manifest)])
    return out


#: A SafeDumper writing PEM blocks as literal ``|`` scalars, readable once decrypted.
_Dumper: Any = type("_Dumper", (yaml.SafeDumper,), {})


def _str(dumper: Any, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--renew",
        action="append",
        choices=sorted(MAKERS),
        help="renew only this (repeatable); the others are read from stdin, decrypted",
    )
    parser.add_argument(
        "--enclave-ttl-seconds",
        type=int,
        default=3600,
        help="the longest enclave lifetime (LICENSING_ENCLAVE_TTL_SECONDS and entitlements): "
        "a next key younger than this is not promoted",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="promote the next key however young (enclaves older than it then refuse tokens)",
    )
    parser.add_argument(
        "--new-token-key-set",
        action="store_true",
        help="renew token-signing-key as a new set, not a rotation (the old keys leaked: "
        "every token and enclave of them is refused)",
    )
    args = parser.parse_args(argv)
    renew = set(args.renew or MAKERS)
    current = [] if renew == set(MAKERS) else [d for d in yaml.safe_load_all(sys.stdin) if d]
    for manifest in current:
        manifest.pop("sops", None)
    made = manifests(
        renew,
        current,
        enclave_ttl=dt.timedelta(seconds=args.enclave_ttl_seconds),
        force=args.force,
        new_key_set=args.new_token_key_set,
    )
    yaml.dump_all(made, sys.stdout, Dumper=_Dumper, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
