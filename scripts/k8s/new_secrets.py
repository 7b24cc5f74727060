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
- ``token-signing-key``: ``licensing-token-signing-key``, the frontend's ``SigningKey``.
- ``database-password``: ``licensing-database``, URL-safe (it goes into the database URL).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from licensing_server.layout import DataLayout
from licensing_server.pki import CertificateAuthority
from licensing_server.tokens import SigningKey

CERT_MANAGER_NAMESPACE = "cert-manager"
NAMESPACE = "licensing"
Manifest = dict[str, Any]


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


def _ca() -> list[Manifest]:
    with tempfile.TemporaryDirectory() as tmp:
        layout = DataLayout(Path(tmp))
        CertificateAuthority.load_or_create(layout.ca_key, layout.ca_certificate)
        data = {"tls.crt": layout.ca_certificate.read_text(), "tls.key": layout.ca_key.read_text()}
    return [
        _secret("licensing-ca", CERT_MANAGER_NAMESPACE, data, "kubernetes.io/tls"),
        _secret("licensing-ca", NAMESPACE, dict(data), "kubernetes.io/tls"),
    ]


def _token_signing_key() -> list[Manifest]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "token-signing-key.pem"
        SigningKey.load_or_create(path)
        data = {"token-signing-key.pem": path.read_text()}
    return [_secret("licensing-token-signing-key", NAMESPACE, data)]


def _database_password() -> list[Manifest]:
    return [_secret("licensing-database", NAMESPACE, {"password": secrets.token_hex(24)})]


#: What --renew names, in the order the manifests are printed.
MAKERS: dict[str, Callable[[], list[Manifest]]] = {
    "ca": _ca,
    "token-signing-key": _token_signing_key,
    "database-password": _database_password,
}


def _key(manifest: Manifest) -> tuple[str, str]:
    return manifest["metadata"]["namespace"], manifest["metadata"]["name"]


def manifests(renew: set[str], current: list[Manifest]) -> list[Manifest]:
    """Every Secret: freshly made if named in ``renew``, else taken from ``current``."""
    have = {_key(m): m for m in current}
    out: list[Manifest] = []
    for name, make in MAKERS.items():
        fresh = make()
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
    args = parser.parse_args(argv)
    renew = set(args.renew or MAKERS)
    current = [] if renew == set(MAKERS) else [d for d in yaml.safe_load_all(sys.stdin) if d]
    for manifest in current:
        manifest.pop("sops", None)
    yaml.dump_all(manifests(renew, current), sys.stdout, Dumper=_Dumper, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
