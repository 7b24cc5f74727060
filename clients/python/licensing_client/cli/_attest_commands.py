"""enclave attest, and the verification report that ``attest`` and ``create`` print.

Trust in an enclave comes from its TPM attestation: ``create`` verifies the ATTESTED
event's attestation against the nonce it sent, ``attest`` verifies a fresh one, and
``call`` connects only to an attested enclave (verify, then pin).
"""

from __future__ import annotations

import argparse

from licensing_client import AttestationFailedError, EnclaveAttestation, EnclaveNotReady
from licensing_client.cli._context import Context
from licensing_client.cli._errors import CliError
from licensing_client.cli._output import (
    Json,
    verification_failure_json,
    verification_json,
    verification_text,
)


def not_ready(exc: EnclaveNotReady, enclave_id: str, verb: str) -> CliError:
    return CliError(f"enclave {exc.enclave.id or enclave_id} cannot be {verb}: it is {exc.phase}")


def failure_document(exc: AttestationFailedError) -> dict[str, Json]:
    return verification_failure_json(
        exc.error, enclave_id=exc.enclave_id, nonce=exc.nonce, source=exc.source
    )


def show_created_verification(ctx: Context, verified: EnclaveAttestation, source: str) -> None:
    """The report of the attestation ``create`` verified (from the event, or fetched)."""
    enclave_id, nonce = verified.enclave.id, verified.nonce
    ctx.output.document(
        {
            "verification": verification_json(
                verified.report, enclave_id=enclave_id, nonce=nonce, source=source
            )
        }
    )
    ctx.output.text(
        verification_text(
            verified.report,
            headline=f"attestation verified ({source}): a TPM quote binds our nonce "
            f"to the certificate of enclave {enclave_id}",
            nonce=nonce,
        )
    )


async def attest(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as connection:
        try:
            with connection.explain(f"attesting enclave {args.enclave_id}"):
                verified = await connection.client.attest(args.enclave_id)
        except EnclaveNotReady as exc:
            raise not_ready(exc, args.enclave_id, "attested") from exc
        except AttestationFailedError as exc:
            ctx.output.document(failure_document(exc))
            raise CliError(f"{exc.message}; do not trust it") from exc
    enclave = verified.enclave
    ctx.output.result(
        verification_text(
            verified.report,
            headline=f"attestation of enclave {enclave.id} verified: a fresh TPM quote binds "
            "our nonce to its certificate",
            nonce=verified.nonce,
        ),
        verification_json(
            verified.report, enclave_id=enclave.id, nonce=verified.nonce, source="GetAttestation"
        ),
    )
    return 0
