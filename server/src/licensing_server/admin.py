"""``licensing-admin``: operator commands that act on the database, the TPM or key files directly.

It runs where the server's configuration is (the same ``LICENSING_*`` variables),
with the database credentials; it is not an API and needs no token.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys

from licensing_common.errors import DomainError
from licensing_server.auth import normalise_username
from licensing_server.config import Settings
from licensing_server.process import load_settings
from licensing_server.storage import Database, EnclaveStore, Limits, UserStore, run_migrations
from licensing_server.tokens import (
    PROPAGATION_ALLOWANCE,
    KeySetFiles,
    KeySetMissing,
    RotationRefused,
)
from licensing_server.tpm import LockoutState, TpmDevice


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="licensing-admin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    entitlement = sub.add_parser("entitlement", help="per-user licence overrides")
    actions = entitlement.add_subparsers(dest="action", required=True)
    set_cmd = actions.add_parser("set", help="override a user's limits")
    set_cmd.add_argument("username")
    set_cmd.add_argument("--max-enclaves", type=int, help="enclaves the user may hold at once")
    set_cmd.add_argument("--enclave-ttl-seconds", type=int, help="how long an enclave lives")
    show = actions.add_parser("show", help="a user's effective limits")
    show.add_argument("username")
    reset = actions.add_parser("reset", help="back to the configured defaults")
    reset.add_argument("username")
    tpm = sub.add_parser("tpm", help="the TPM's dictionary-attack lockout")
    tpm_actions = tpm.add_subparsers(dest="action", required=True)
    tpm_actions.add_parser("status", help="lockout state, counter and limits")
    tpm_actions.add_parser(
        "clear-lockout", help="reset the lockout of the embedded swtpm (its lockout auth is empty)"
    )
    keys = sub.add_parser("token-keys", help="the access-token signing key set")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("show", help="kids and times of current, next and previous keys")
    rotate = key_actions.add_parser(
        "rotate", help="promote next to current, keep current as previous, make a new next"
    )
    rotate.add_argument(
        "--force",
        action="store_true",
        help="promote a next key younger than LICENSING_ENCLAVE_TTL_SECONDS + 5 min anyway "
        "(enclaves older than it then refuse new tokens)",
    )
    rotate.add_argument(
        "--discard-previous",
        action="store_true",
        help="drop every previous key, the old current included (it leaked): "
        "tokens it signed are refused at once",
    )
    return parser


def _token_keys(args: argparse.Namespace, settings: Settings) -> dict[str, object]:
    """Show or rotate the key set in the frontend's files; replicas re-read them."""
    files = KeySetFiles(settings.effective_token_keys_dir, create=False)
    try:
        if args.action == "show":
            return files.load().describe()
        with files.locked():
            before = files.load()
            after = before.rotated(
                dt.datetime.now(dt.UTC),
                keep_previous_for=dt.timedelta(seconds=settings.access_token_ttl_seconds)
                + PROPAGATION_ALLOWANCE,
                # An enclave made by a replica that had not yet seen the last rotation
                # lives up to one allowance longer than one made right before it.
                min_next_age=dt.timedelta(seconds=settings.enclave_ttl_seconds)
                + PROPAGATION_ALLOWANCE,
                force=args.force,
                discard_previous=args.discard_previous,
            )
            files.save(after)
    except RotationRefused as exc:
        raise SystemExit(f"licensing-admin: not rotated: {exc}") from exc
    except (KeySetMissing, ValueError) as exc:
        raise SystemExit(f"licensing-admin: {exc}") from exc
    except OSError as exc:
        raise SystemExit(
            f"licensing-admin: cannot rotate the key set in {files.directory} ({exc}); a "
            "mounted Secret is rotated with scripts/k8s/new_secrets.py --renew token-signing-key"
        ) from exc
    promoted = before.next is not None
    return {
        "rotated": promoted,
        "note": "next promoted to current"
        if promoted
        else "a single key had no next: one was published, the current key still signs",
        **after.describe(),
    }


def _lockout_json(state: LockoutState) -> dict[str, object]:
    return {
        "in_lockout": state.in_lockout,
        "lockout_counter": state.counter,
        "max_auth_fail": state.max_tries,
        "lockout_interval_seconds": state.interval_seconds,
        "recovery_seconds": state.seconds_until_recovery,
    }


async def _tpm(args: argparse.Namespace, settings: Settings) -> dict[str, object]:
    """Read or clear the DA lockout; the server keeps running (swtpm serves both)."""
    if args.action == "clear-lockout" and settings.tpm_tcti:
        # A hardware TPM's lockout authorization is not ours to guess: a wrong one
        # locks the lockout hierarchy itself for TPM2_PT_LOCKOUT_RECOVERY seconds.
        raise SystemExit(
            "licensing-admin: clear-lockout is for the embedded swtpm; for LICENSING_TPM_TCTI "
            "use tpm2_dictionarylockout --clear-lockout with the TPM's lockout authorization"
        )
    async with TpmDevice(
        settings.effective_tpm_tcti,
        command_timeout=settings.tpm_command_timeout_seconds,
        shutdown_on_close=False,
    ) as tpm:
        if args.action == "clear-lockout":
            await tpm.clear_lockout()
        return _lockout_json(await tpm.lockout_state())


async def _run(args: argparse.Namespace, settings: Settings) -> dict[str, object]:
    if args.command == "tpm":
        return await _tpm(args, settings)
    if args.command == "token-keys":
        return _token_keys(args, settings)
    url = settings.effective_database_url
    await asyncio.to_thread(run_migrations, url)
    database = Database.connect(url)
    try:
        enclaves, users = EnclaveStore(database), UserStore(database)
        username = normalise_username(args.username)
        now = dt.datetime.now(dt.UTC)
        if args.action == "set":
            for flag, value in (
                ("--max-enclaves", args.max_enclaves),
                ("--enclave-ttl-seconds", args.enclave_ttl_seconds),
            ):
                if value is not None and value < (0 if flag == "--max-enclaves" else 10):
                    raise SystemExit(f"licensing-admin: {flag} is too small")
            await enclaves.set_entitlement(
                username, args.max_enclaves, args.enclave_ttl_seconds, now
            )
        elif args.action == "reset":
            await enclaves.set_entitlement(username, None, None, now, replace=True)
        user = await users.find_user_by_name(username)
        if user is None:
            raise SystemExit(f"licensing-admin: no user named {username!r}")
        limits = await enclaves.limits(
            user.id,
            Limits(settings.max_enclaves, dt.timedelta(seconds=settings.enclave_ttl_seconds)),
        )
        return {
            "username": username,
            "user_id": user.id,
            "max_enclaves": limits.max_enclaves,
            "enclave_ttl_seconds": int(limits.enclave_ttl.total_seconds()),
        }
    finally:
        await database.close()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = load_settings()
    try:
        result = asyncio.run(_run(args, settings))
    except DomainError as exc:
        print(f"licensing-admin: {exc.message} ({exc.reason})", file=sys.stderr)
        raise SystemExit(1) from exc
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
