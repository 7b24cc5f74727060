"""The command line grammar (argparse)."""

from __future__ import annotations

import argparse
from pathlib import Path

from licensing_client.cli import _attest_commands, _progress_commands, _workload_commands
from licensing_client.cli import _auth_commands as auth
from licensing_client.cli import _enclave_commands as enclaves
from licensing_client.cli._context import DEFAULT_API, DEFAULT_SERVER, address

_DESCRIPTION = """\
Use the licensing server: sign up, log in (your key never leaves this machine),
create enclaves, verify their TPM attestation and talk to them over mutual TLS
pinned to the attested certificate.

exit codes: 0 ok, 1 the operation failed (the server said no or could not be
reached), 2 usage error."""


def _globals(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Global flags, accepted before or after the command.

    On sub-commands their default is SUPPRESS so that a flag given before the
    command is not overwritten by the sub-command's default.
    """

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--server",
        type=address,
        default=default(None),
        metavar="HOST:PORT",
        help=f"enrollment listener (default: the logged-in session's, else {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--api",
        type=address,
        default=default(None),
        metavar="HOST:PORT",
        help=f"mutual-TLS API listener (default: the session's, else {DEFAULT_API})",
    )
    group.add_argument(
        "--ca-file",
        type=Path,
        default=default(None),
        metavar="PATH",
        help="pin this licensing CA (copied into the config dir); "
        "without it and without a pin, the CA is pinned on first use",
    )
    group.add_argument(
        "--config-dir",
        type=Path,
        default=default(None),
        metavar="PATH",
        help="where the key, certificate, pinned CA and session live (default: "
        "$LICENSING_CONFIG_DIR, else $XDG_CONFIG_HOME/licensing, else ~/.config/licensing)",
    )
    group.add_argument(
        "--output",
        choices=("text", "json"),
        default=default("text"),
        help="text for people, json (one document per line) for programs",
    )


def _command(
    parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    parser = parent.add_parser(name, help=help_text, description=help_text)
    _globals(parser, top=False)
    return parser


def _password_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("username")
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin "
        "(else $LICENSING_PASSWORD, else a prompt)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="licensing",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _globals(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    signup = _command(commands, "signup", "create an account")
    _password_flag(signup)
    signup.set_defaults(handler=auth.signup)

    login = _command(commands, "login", "log in: make a key and CSR here, store the session")
    _password_flag(login)
    login.set_defaults(handler=auth.login)

    _command(commands, "logout", "end the session on the server and remove it here").set_defaults(
        handler=auth.logout
    )
    _command(commands, "whoami", "show the logged-in user").set_defaults(handler=auth.whoami)

    enclave = _command(
        commands, "enclave", "create, watch, list, get, delete, attest and call enclaves"
    )
    actions = enclave.add_subparsers(dest="enclave_command", required=True, metavar="ACTION")

    create = _command(
        actions,
        "create",
        "create an enclave, follow it until it is attested, and verify its attestation",
    )
    create.add_argument(
        "--request-id",
        help="idempotency key (default: a fresh UUID, printed so a retry can reuse it)",
    )
    create.add_argument("--nonce-hex", help="16 to 64 bytes in hex (default: 32 random bytes)")
    create.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="do not verify the attestation against our nonce and the enclave's certificate",
    )
    create.set_defaults(handler=_progress_commands.create)

    watch = _command(actions, "watch", "follow an enclave's phase events")
    watch.add_argument("enclave_id", metavar="ID")
    watch.add_argument(
        "--from-sequence",
        type=int,
        default=0,
        metavar="N",
        help="resume after event N (default 0: all)",
    )
    # Continuous attestation (issue 13).
    watch.add_argument(
        "--attestations",
        action="store_true",
        help="go on after ATTESTED: verify and show each re-attestation round until the "
        "licence is revoked (Ctrl-C stops watching)",
    )
    watch.add_argument(
        "--nonce-hex",
        help="with --attestations: 16 to 64 bytes in hex the next round must quote over too",
    )
    watch.add_argument(
        "--rounds",
        type=int,
        default=0,
        metavar="N",
        help="with --attestations: stop after N verified rounds (default 0: never)",
    )
    watch.set_defaults(handler=_progress_commands.watch)

    listing = _command(actions, "list", "list your enclaves (every page)")
    listing.add_argument(
        "--page-size", type=int, default=0, metavar="N", help="1 to 100 per request"
    )
    listing.set_defaults(handler=enclaves.list_)

    for name, help_text, handler in (
        ("get", "show one enclave", enclaves.get),
        ("delete", "delete an enclave", enclaves.delete),
    ):
        sub = _command(actions, name, help_text)
        sub.add_argument("enclave_id", metavar="ID")
        sub.set_defaults(handler=handler)

    attest = _command(
        actions,
        "attest",
        "verify a fresh TPM attestation of an enclave's certificate and print every check",
    )
    attest.add_argument("enclave_id", metavar="ID")
    attest.set_defaults(handler=_attest_commands.attest)

    call = _command(
        actions,
        "call",
        "attest an enclave, then call its WorkloadService over mTLS pinned to the attested "
        "certificate",
    )
    call.add_argument("enclave_id", metavar="ID")
    operations = call.add_subparsers(dest="operation", required=True, metavar="OPERATION")
    operations.add_parser("identity", help="the enclave's id, owner and certificate")
    put = operations.add_parser("put-secret", help="store a secret (VALUE '-' reads stdin)")
    put.add_argument("name", metavar="NAME")
    put.add_argument("value", metavar="VALUE")
    operations.add_parser("get-secret", help="print a secret's value").add_argument(
        "name", metavar="NAME"
    )
    operations.add_parser("list-secrets", help="the names of the stored secrets")
    operations.add_parser("delete-secret", help="delete a secret").add_argument(
        "name", metavar="NAME"
    )
    operations.add_parser(
        "sign", help="sign DATA ('-' reads stdin) and verify the signature locally"
    ).add_argument("data", metavar="DATA")
    call.set_defaults(handler=_workload_commands.call)
    return parser
