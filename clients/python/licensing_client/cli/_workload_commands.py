"""enclave call: attest the enclave, then call its WorkloadService pinned to the attested
certificate (``LicensingClient.open_enclave``)."""

from __future__ import annotations

import argparse
import base64
from collections.abc import Awaitable, Callable

from cryptography import x509

from licensing_client import (
    AttestationFailedError,
    EnclaveNotReady,
    EnclaveSession,
    SignatureInvalidError,
)
from licensing_client._client import certificate_sha256
from licensing_client._keys import fingerprint
from licensing_client.cli._attest_commands import not_ready
from licensing_client.cli._context import Context
from licensing_client.cli._errors import CliError, explain

Operation = Callable[[Context, argparse.Namespace, EnclaveSession], Awaitable[None]]


def _bytes_argument(ctx: Context, value: str) -> bytes:
    """The argument as UTF-8, or stdin's bytes for ``-``."""
    if value == "-":
        return ctx.stdin.buffer.read()
    return value.encode()


async def _identity(ctx: Context, args: argparse.Namespace, enclave: EnclaveSession) -> None:
    identity = await enclave.get_identity()
    matches = identity.matches_pinned_certificate
    ctx.output.result(
        "\n".join(
            [
                f"enclave             {identity.enclave_id}",
                f"owner               {identity.owner}",
                f"certificate sha256  {identity.certificate_sha256.hex()}",
                "pinned certificate  " + ("matches" if matches else "DIFFERS"),
            ]
        ),
        {
            "enclave_id": identity.enclave_id,
            "owner": identity.owner,
            "certificate_sha256": identity.certificate_sha256.hex(),
            "certificate_pem": identity.certificate_pem,
            "matches_pinned_certificate": matches,
        },
    )


async def _put_secret(ctx: Context, args: argparse.Namespace, enclave: EnclaveSession) -> None:
    await enclave.put_secret(args.name, _bytes_argument(ctx, args.value))
    ctx.output.result(
        f"stored secret {args.name} in enclave {enclave.enclave.id}",
        {"enclave_id": enclave.enclave.id, "name": args.name, "stored": True},
    )


async def _get_secret(ctx: Context, args: argparse.Namespace, enclave: EnclaveSession) -> None:
    value = await enclave.get_secret(args.name)
    if not ctx.output.json:
        ctx.output.write_bytes(value)
        return
    try:
        text: str | None = value.decode()
    except UnicodeDecodeError:
        text = None
    ctx.output.document(
        {
            "enclave_id": enclave.enclave.id,
            "name": args.name,
            "value": text,
            "value_base64": base64.b64encode(value).decode(),
        }
    )


async def _list_secrets(ctx: Context, args: argparse.Namespace, enclave: EnclaveSession) -> None:
    names = await enclave.list_secrets()
    ctx.output.result(
        "\n".join(names) if names else "no secrets",
        {"enclave_id": enclave.enclave.id, "names": names},
    )


async def _delete_secret(ctx: Context, args: argparse.Namespace, enclave: EnclaveSession) -> None:
    await enclave.delete_secret(args.name)
    ctx.output.result(
        f"deleted secret {args.name} from enclave {enclave.enclave.id}",
        {"enclave_id": enclave.enclave.id, "name": args.name, "deleted": True},
    )


async def _sign(ctx: Context, args: argparse.Namespace, enclave: EnclaveSession) -> None:
    try:
        signed = await enclave.sign(_bytes_argument(ctx, args.data))
    except SignatureInvalidError as exc:
        raise CliError(exc.message) from exc
    pinned = x509.load_pem_x509_certificate(signed.certificate_pem.encode())
    signature_b64 = base64.b64encode(signed.signature).decode()
    ctx.output.result(
        "\n".join(
            [
                f"signature (base64)  {signature_b64}",
                f"signature (hex)     {signed.signature.hex()}",
                f"verified            ECDSA P-256/SHA-256 by the attested, pinned certificate "
                f"of enclave {enclave.enclave.id} (SHA-256 fingerprint {fingerprint(pinned)})",
            ]
        ),
        {
            "enclave_id": enclave.enclave.id,
            "signature_base64": signature_b64,
            "signature_hex": signed.signature.hex(),
            "verified": True,
            "certificate_sha256": certificate_sha256(signed.certificate_pem).hex(),
        },
    )


OPERATIONS: dict[str, Operation] = {
    "identity": _identity,
    "put-secret": _put_secret,
    "get-secret": _get_secret,
    "list-secrets": _list_secrets,
    "delete-secret": _delete_secret,
    "sign": _sign,
}


async def call(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as connection:
        # Verify a fresh attestation, then pin exactly the attested certificate.
        try:
            with connection.explain(f"attesting enclave {args.enclave_id}"):
                session = await connection.client.open_enclave(args.enclave_id)
        except EnclaveNotReady as exc:
            raise not_ready(exc, args.enclave_id, "called") from exc
        except AttestationFailedError as exc:
            raise CliError(f"{exc.message}; not connecting to it") from exc
        enclave = session.enclave
        pinned = x509.load_pem_x509_certificate(enclave.certificate_pem.encode())
        ctx.output.notice(
            f"attestation: enclave {enclave.id} verified ({len(session.report.checks)} checks "
            f"over a fresh nonce); calling it pinned to the attested certificate "
            f"(SHA-256 fingerprint {fingerprint(pinned)})"
        )
        with explain(
            f"{args.operation} on enclave {enclave.id}",
            peer=f"enclave {enclave.id} at {enclave.endpoint}",
            trust=(
                "it is not the attested certificate of this enclave, "
                "so the connection was dropped before anything was sent"
            ),
        ):
            await OPERATIONS[args.operation](ctx, args, session)
    return 0
