#!/usr/bin/env python3
"""The whole story with the Python client: sign up, log in, create an enclave (printing its
progress), verify its attestation, and use it: store a secret, read it back, sign.

Against a running server (``make run``, which writes .licensing/ca.pem):

    .venv/bin/python clients/python/examples/whole_story.py \\
        --enroll 127.0.0.1:8443 --api 127.0.0.1:9443 --ca .licensing/ca.pem

Exits 0 only if every step worked and every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from licensing_client import (
    Created,
    FetchingAttestation,
    LicensingClient,
    LicensingError,
    Progress,
    Reconnecting,
)

STORED_NAME = "db-password"


async def whole_story(
    enroll_addr: str, api_addr: str, ca_pem: bytes, username: str, password: str
) -> None:
    async with LicensingClient.connect(enroll_addr, api_addr, ca_pem=ca_pem) as client:
        account = await client.sign_up(username, password)
        print(f"signed up {account.username} ({account.user_id})")
        session = await client.log_in(username, password)  # the key never leaves this process
        print(f"logged in; access token valid until {session.access_token_expire_time}")

        enclave = None
        async for event in client.create_enclave():
            if isinstance(event, Progress):
                print(f"  [{event.sequence}] {event.phase.name}: {event.message}")
            elif isinstance(event, Reconnecting):
                print(f"  stream dropped ({event.error}); resuming in {event.delay:.1f} s")
            elif isinstance(event, FetchingAttestation):
                print(f"  fetching a fresh attestation: {event.why}")
            elif isinstance(event, Created):
                enclave = event.enclave
                assert event.attestation is not None  # verify=True: it was verified
                print(f"created enclave {enclave.id}; attestation verified:")
                for result in event.attestation.report.checks:
                    print(f"    {result.check}: {result.detail}")
        if enclave is None:
            raise LicensingError("the create stream ended without an enclave")

        # A fresh attestation over a nonce of ours, verified before anything connects.
        report = (await client.attest(enclave.id)).report
        print(f"fresh attestation verified: {len(report.checks)} checks passed")

        workload = await client.open_enclave(enclave.id)  # attested again, then pinned
        value = secrets.token_bytes(16)
        await workload.put_secret(STORED_NAME, value)
        if await workload.get_secret(STORED_NAME) != value:
            raise LicensingError("the enclave returned another value for the secret")
        print(f"stored and read back secret {STORED_NAME!r}")

        message = b"license #42 for " + username.encode()
        signed = await workload.sign(message)  # verified by the client against the pin
        # The same check by hand: ECDSA P-256 / SHA-256 by the attested certificate's key.
        public_key = x509.load_pem_x509_certificate(signed.certificate_pem.encode()).public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        try:
            public_key.verify(signed.signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise LicensingError("the enclave's signature does not verify") from exc
        print(f"signature verified against the attested certificate ({len(signed.signature)} B)")

        await client.delete_enclave(enclave.id)
        print(f"deleted enclave {enclave.id}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enroll", default="127.0.0.1:8443", help="enrollment listener")
    parser.add_argument("--api", default="127.0.0.1:9443", help="API listener (mutual TLS)")
    parser.add_argument("--ca", type=Path, default=Path(".licensing/ca.pem"), help="CA to trust")
    parser.add_argument("--username", default=f"example-{secrets.token_hex(4)}")
    parser.add_argument("--password", help="default: asked, or $LICENSING_PASSWORD")
    args = parser.parse_args()
    password = args.password or os.environ.get("LICENSING_PASSWORD") or getpass.getpass()
    try:
        asyncio.run(
            whole_story(args.enroll, args.api, args.ca.read_bytes(), args.username, password)
        )
    except LicensingError as exc:
        reason = f" ({exc.reason})" if exc.reason else ""
        print(f"failed: {exc}{reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
