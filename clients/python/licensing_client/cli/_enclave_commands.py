"""enclave list | get | delete, and how an enclave is shown."""

from __future__ import annotations

import argparse

from licensing_client.cli._context import Context
from licensing_client.cli._errors import UsageError
from licensing_client.cli._output import Json, enclave_json, enclave_table, enclave_text
from licensing_client.gen.licensing import v1


def show_final(ctx: Context, enclave: v1.Enclave, headline: str) -> None:
    """The enclave as a command ends with it: a JSON document, or the headline and details."""
    ctx.output.document({"enclave": enclave_json(enclave)})
    ctx.output.text(f"{headline}\n{enclave_text(enclave)}")


async def list_(ctx: Context, args: argparse.Namespace) -> int:
    page_size: int = args.page_size or 0
    if not 0 <= page_size <= 100:
        raise UsageError("--page-size must be 1 to 100")
    async with ctx.session() as connection:
        with connection.explain("listing enclaves"):
            enclaves = [e async for e in connection.client.list_enclaves(page_size)]
    data: Json = {"enclaves": [enclave_json(e) for e in enclaves]}
    ctx.output.result(enclave_table(enclaves), data)
    return 0


async def get(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as connection:
        with connection.explain(f"getting enclave {args.enclave_id}"):
            enclave = await connection.client.get_enclave(args.enclave_id)
    ctx.output.result(enclave_text(enclave), enclave_json(enclave))
    return 0


async def delete(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as connection:
        with connection.explain(f"deleting enclave {args.enclave_id}"):
            await connection.client.delete_enclave(args.enclave_id)
    ctx.output.result(
        f"deleted enclave {args.enclave_id}", {"enclave_id": args.enclave_id, "deleted": True}
    )
    return 0
