"""Print fresh Secret manifests for a licensing deployment, in plaintext, for sops to encrypt.

    .venv/bin/python scripts/k8s/new_secrets.py | \\
      .tools/bin/sops encrypt --filename-override k8s/overlays/OVERLAY/secrets.enc.yaml \\
        --input-type yaml --output-type yaml /dev/stdin > k8s/overlays/OVERLAY/secrets.enc.yaml

Never write the output to a file in the repository unencrypted. The Secrets:

- ``licensing-ca`` (type kubernetes.io/tls), twice: in ``cert-manager`` for the CA
  ClusterIssuer, and in ``licensing`` for the backend. A new self-signed licensing CA, made by
  the backend's own ``CertificateAuthority`` (the same key type, names and lifetime).
- ``licensing-token-signing-key``: the frontend's token signing key (``SigningKey``).
- ``licensing-database``: the PostgreSQL password (URL-safe: it goes into the database URL).

``--ca-dir DIR`` reuses an existing CA (``ca.pem`` and ``backend/ca-key.pem``, the server's data
directory layout) instead of making one, e.g. when only the signing key is being rotated.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from licensing_server.layout import DataLayout
from licensing_server.pki import CertificateAuthority
from licensing_server.tokens import SigningKey

CERT_MANAGER_NAMESPACE = "cert-manager"
NAMESPACE = "licensing"


def _secret(
    name: str, namespace: str, data: dict[str, str], kind: str = "Opaque"
) -> dict[str, Any]:
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


def manifests(ca_dir: Path | None) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        layout = DataLayout(ca_dir or Path(tmp))
        CertificateAuthority.load_or_create(layout.ca_key, layout.ca_certificate)
        ca = {
            "tls.crt": layout.ca_certificate.read_text(),
            "tls.key": layout.ca_key.read_text(),
        }
        signing = Path(tmp) / "token-signing-key.pem"
        SigningKey.load_or_create(signing)
        return [
            _secret("licensing-ca", CERT_MANAGER_NAMESPACE, ca, "kubernetes.io/tls"),
            _secret("licensing-ca", NAMESPACE, ca, "kubernetes.io/tls"),
            _secret(
                "licensing-token-signing-key",
                NAMESPACE,
                {"token-signing-key.pem": signing.read_text()},
            ),
            _secret("licensing-database", NAMESPACE, {"password": secrets.token_hex(24)}),
        ]


#: A SafeDumper writing PEM blocks as literal ``|`` scalars, readable once decrypted.
_Dumper: Any = type("_Dumper", (yaml.SafeDumper,), {})


def _str(dumper: Any, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ca-dir", type=Path, help="reuse this data directory's CA")
    args = parser.parse_args(argv)
    if args.ca_dir is not None and not (args.ca_dir / "ca.pem").is_file():
        parser.error(f"{args.ca_dir / 'ca.pem'} does not exist")
    yaml.dump_all(manifests(args.ca_dir), sys.stdout, Dumper=_Dumper, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
