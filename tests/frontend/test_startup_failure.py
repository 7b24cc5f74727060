"""A frontend whose start-up fails late closes what it had opened, and says why.

Its API address is taken by another socket: by then the database, the backend
channel, the bcrypt pool and the enrollment listener are open.
"""

from __future__ import annotations

from pathlib import Path

from licensing_server.backend.app import provision_frontend_identity
from licensing_server.config import Settings
from licensing_server.layout import DataLayout
from licensing_server.pki import CertificateAuthority
from tests.startup import (
    assert_database_unlocked,
    assert_port_free,
    assert_shut_down_cleanly,
    port_taken,
    run_module,
    sqlite_stack,
)


def test_a_frontend_that_cannot_listen_exits_and_leaves_nothing_open(tmp_path: Path) -> None:
    stack = sqlite_stack(tmp_path)
    env = stack.env()
    # What the backend would have issued (no backend runs: nothing calls it at start).
    layout = DataLayout(stack.data_dir)
    ca = CertificateAuthority.load_or_create(layout.ca_key, layout.ca_certificate)
    provision_frontend_identity(ca, layout, Settings.from_env(env))

    with port_taken(stack.api_port):
        done = run_module("licensing_server.frontend.app", env)
    output = done.stdout
    assert done.returncode == 1, output
    assert output.rstrip().splitlines()[-1] == (
        f"licensing-frontend: cannot listen on {stack.api_addr} "
        "(is another process listening there?)"
    ), output
    assert_shut_down_cleanly(output)
    assert_database_unlocked(stack.data_dir / "licensing.db")
    assert_port_free(stack.enroll_port)
    assert_port_free(stack.api_port)


def test_a_frontend_given_a_key_directory_without_a_key_exits_and_makes_none(
    tmp_path: Path,
) -> None:
    """A replica that made its own signing key would sign tokens no other replica accepts."""
    stack = sqlite_stack(tmp_path)
    empty = tmp_path / "mounted-secret"
    empty.mkdir()
    done = run_module(
        "licensing_server.frontend.app", stack.env(LICENSING_TOKEN_KEYS_DIR=str(empty))
    )
    output = done.stdout
    assert done.returncode == 1, output
    assert output.rstrip().splitlines()[-1] == (
        f"licensing-frontend: no token signing key in {empty} "
        "(token-signing-keys.json or token-signing-key.pem) (LICENSING_TOKEN_KEYS_DIR)"
    ), output
    assert_shut_down_cleanly(output)
    assert list(empty.iterdir()) == []
