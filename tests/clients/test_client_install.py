"""The client and the enclave install on their own, from their own ``pyproject.toml``.

Each goes into a fresh venv from a copy of the tree (so builds leave nothing behind
in the checkout), pinned by ``constraints.txt``; the packages index must be reachable.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What the two distributions build from: their own folders and what they bundle.
_SOURCES = ["clients/python", "enclave", "server/src/licensing_common", "server/gen/enclave"]
_SERVER_DISTRIBUTIONS = {"sqlalchemy", "bcrypt", "tpm2-pytss", "kubernetes", "alembic", "licensing"}
_IGNORE = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
_INSTALL_TIMEOUT = 900


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for part in _SOURCES:
        shutil.copytree(ROOT / part, root / part, ignore=_IGNORE)
    shutil.copy(ROOT / "constraints.txt", root / "constraints.txt")
    return root


def install(tree: Path, venv: Path, part: str) -> Path:
    """A fresh venv with only ``part`` (and its dependencies) installed; returns its bin/."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    subprocess.run(
        [str(bin_dir / "pip"), "install", "-q", "-c", "constraints.txt", f"./{part}"],
        cwd=tree,
        check=True,
        timeout=_INSTALL_TIMEOUT,
    )
    return bin_dir


def installed(bin_dir: Path) -> set[str]:
    out = subprocess.run(
        [str(bin_dir / "pip"), "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line.split("==")[0].lower().replace("_", "-") for line in out.splitlines() if line}


def test_the_client_installs_alone_and_its_cli_runs(tree: Path, tmp_path: Path) -> None:
    bin_dir = install(tree, tmp_path / "venv", "clients/python")
    done = subprocess.run(
        [str(bin_dir / "licensing"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: licensing")
    packages = installed(bin_dir)
    assert "licensing-client" in packages
    assert packages & _SERVER_DISTRIBUTIONS == set()


def test_the_enclave_installs_alone_and_starts(tree: Path, tmp_path: Path) -> None:
    bin_dir = install(tree, tmp_path / "venv", "enclave")
    done = subprocess.run(
        [str(bin_dir / "licensing-enclave"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: licensing-enclave")
    # The fork server imports everything an enclave serves with (its stubs, the guard).
    imported = subprocess.run(
        [str(bin_dir / "python"), "-c", "import licensing_enclave.forkserver"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    packages = installed(bin_dir)
    assert "licensing-enclave" in packages
    assert packages & (_SERVER_DISTRIBUTIONS | {"grpclib", "betterproto", "rich"}) == set()
