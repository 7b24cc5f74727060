"""Tools of the deployment tests: kubectl from the Kubernetes cache, sops and age from
scripts/setup.sh (.tools/bin), and the rendered overlays."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "production")
DEV_KEY = REPO / "k8s" / "overlays" / "dev" / "DEV-ONLY-age-key.txt"


def tool(name: str) -> str:
    """``name`` from .tools/bin (scripts/setup.sh), else PATH; a missing one fails the test."""
    local = REPO / ".tools" / "bin" / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed; run scripts/setup.sh")
    return found


@pytest.fixture(scope="session")
def kubectl() -> str:
    """The kubectl built with the test control plane (scripts/kube/build.sh prints its folder;
    instant once built)."""
    folder = subprocess.run(
        [str(REPO / "scripts" / "kube" / "build.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    return str(Path(folder) / "kubectl")


@pytest.fixture(scope="session")
def sops() -> str:
    return tool("sops")


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """Each overlay as ``kubectl kustomize`` renders it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for overlay in OVERLAYS:
        done = subprocess.run(
            [kubectl, "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"kubectl kustomize {overlay}: {done.stderr}"
        out[overlay] = documents(done.stdout)
    return out


def decrypt(
    sops: str, path: Path, key_file: Path | None, home: Path
) -> subprocess.CompletedProcess[str]:
    """``sops decrypt path`` with only ``key_file`` (or no key at all) to decrypt with: the
    test's own environment and home (where sops also looks for keys) are left out."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    if key_file is not None:
        env["SOPS_AGE_KEY_FILE"] = str(key_file)
    return subprocess.run(
        [sops, "decrypt", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
