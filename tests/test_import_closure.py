"""Each process imports only what it uses: proven on a fresh interpreter's ``sys.modules``.

The frontend faces the internet and must not load the TPM stack; the enclave and the
client ship without the server, so they must not import it at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PRINT_MODULES = (
    "import importlib, json, sys; importlib.import_module(sys.argv[1]); "
    "print(json.dumps(sorted(sys.modules)))"
)
#: Third-party packages only the backend's storage, TPM and Kubernetes code need. (bcrypt is
#: not here: cryptography's SSH key support imports it whenever it is installed, as it is in
#: the server's venv; test_client_install proves the client and enclave do not install it.)
_SERVER_ONLY = ("sqlalchemy", "tpm2_pytss", "kubernetes", "alembic")


def closure(module: str) -> list[str]:
    """Every module a fresh interpreter holds after importing ``module``."""
    out = subprocess.run(
        [sys.executable, "-c", _PRINT_MODULES, module],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    names: list[str] = json.loads(out)
    return names


def under(names: list[str], *packages: str) -> list[str]:
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in packages)]


def test_the_frontend_never_loads_the_tpm_stack() -> None:
    names = closure("licensing_server.frontend.app")
    assert "licensing_server.frontend.app" in names
    assert under(names, "tpm2_pytss", "kubernetes") == []
    assert (
        under(
            names,
            "licensing_server.tpm",
            "licensing_server.attestation",
            "licensing_server.runtimes",
            "licensing_server.provisioning",
        )
        == []
    )
    assert under(names, "licensing_client", "licensing_enclave") == []


def test_the_backend_does_not_import_the_client() -> None:
    names = closure("licensing_server.backend.app")
    assert "licensing_server.tpm" in names  # the backend is where the TPM lives
    assert under(names, "licensing_client", "licensing_enclave") == []


@pytest.mark.parametrize("entry", ["licensing_enclave.__main__", "licensing_enclave.forkserver"])
def test_the_enclave_imports_no_server_code(entry: str) -> None:
    names = closure(entry)
    assert entry in names
    assert "licensing_common.rpc.guard" in names
    assert under(names, "licensing_server", "licensing_client", "licensing") == []
    assert under(names, *_SERVER_ONLY) == []


def test_the_client_imports_no_server_package() -> None:
    names = closure("licensing_client.cli")
    assert "licensing_client.cli" in names
    assert under(names, "licensing_server", "licensing_enclave", "licensing", "enclave") == []
    assert under(names, *_SERVER_ONLY) == []


def test_the_shared_package_imports_nothing_else_of_ours() -> None:
    """All of ``licensing_common`` at once: only its own modules and its four dependencies."""
    names = closure("tests.common_everything")
    assert "licensing_common.rpc.guard" in names
    assert under(names, "licensing_server", "licensing_client", "licensing_enclave") == []
    assert under(names, "licensing", "enclave") == []  # no generated stubs either
    assert under(names, *_SERVER_ONLY, "grpclib", "betterproto", "rich", "setproctitle") == []
