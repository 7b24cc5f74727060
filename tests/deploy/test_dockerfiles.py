"""The images' Dockerfiles keep their promises. No container engine runs here (nor in CI), so
the files are read, not built: multi-stage, pinned bases, a numeric non-root USER, no build
secrets, and the enclave image without any server code."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.deploy.dockerfiles import parse, problems

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "docker" / "server.Dockerfile"
ENCLAVE = REPO / "docker" / "enclave.Dockerfile"


@pytest.mark.parametrize("path", [SERVER, ENCLAVE], ids=lambda p: p.name)
def test_each_image_is_multi_stage_pinned_non_root_and_without_secrets(path: Path) -> None:
    assert problems(path.read_text()) == []


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("FROM python:3.11\nUSER 10001\n", "not multi-stage"),
        ("FROM python:latest AS b\nFROM b\nUSER 10001\n", "is not pinned"),
        ("FROM python AS b\nFROM b\nUSER 10001\n", "is not pinned"),
        ("FROM python:3.11 AS b\nFROM b\nUSER 10001\n", "is not pinned"),
        ("FROM a:1.2.3 AS b\nFROM a:1.2.3\n", "sets no USER"),
        ("FROM a:1.2.3 AS b\nFROM a:1.2.3\nUSER app\n", "is not numeric"),
        ("FROM a:1.2.3 AS b\nFROM a:1.2.3\nUSER 0:0\n", "is root"),
        ("ARG DB_PASSWORD\nFROM a:1.2.3 AS b\nFROM a:1.2.3\nUSER 1\n", "looks like a secret"),
        ("FROM a:1.2.3 AS b\nENV SIGNING_KEY=x\nFROM a:1.2.3\nUSER 1\n", "looks like a secret"),
        (
            "FROM a:1.2.3 AS b\nRUN --mount=type=secret,id=t make\nFROM a:1.2.3\nUSER 1\n",
            "build secret",
        ),
        ("FROM a:1.2.3 AS b\nCOPY .licensing/ca-key.pem /x\nFROM a:1.2.3\nUSER 1\n", "key"),
        ("FROM a:1.2.3 AS b\nCOPY . /src\nFROM a:1.2.3\nUSER 1\n", "whole build context"),
    ],
)
def test_the_checker_catches_each_broken_promise(text: str, complaint: str) -> None:
    found = problems(text)
    assert any(complaint in p for p in found), found


def test_the_enclave_image_carries_no_server_code() -> None:
    _, stages = parse(ENCLAVE.read_text())
    *builders, final = stages
    copied = [
        w
        for stage in builders
        for i in stage.all("COPY")
        if "from" not in i.flags
        for w in i.words[:-1]
    ]
    # Only the enclave package and the two folders of server/ it bundles.
    assert sorted(copied) == sorted(
        ["constraints.txt", "enclave", "server/src/licensing_common", "server/gen/enclave"]
    )
    assert not any("licensing_server" in w or w in ("server", "server/src") for w in copied)
    # The image keeps only the installed environment, from the build stage.
    for instruction in final.all("COPY") + final.all("ADD"):
        assert instruction.keyword == "COPY"
        assert instruction.flags.get("from") == builders[0].name
    assert final.all("ENTRYPOINT")[-1].words == ["licensing-enclave"]


def test_every_copied_path_exists_in_the_repository() -> None:
    for path in (SERVER, ENCLAVE):
        _, stages = parse(path.read_text())
        for stage in stages:
            for i in stage.all("COPY"):
                if "from" in i.flags:
                    continue
                for source in i.words[:-1]:
                    assert (REPO / source).exists(), f"{path.name}: COPY {source} is missing"


def test_the_server_image_has_every_program_the_manifests_run() -> None:
    """The manifests run licensing-frontend, licensing-backend, python (swtpm), sh and
    grpc_health_probe (probes): the scripts are the package's, the probe is copied in."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"licensing-frontend", "licensing-backend", "licensing-server"} <= set(scripts)
    text = SERVER.read_text()
    _, stages = parse(text)
    final = stages[-1]
    assert any(
        i.words[-1] == "/usr/local/bin/grpc_health_probe" and "from" in i.flags
        for i in final.all("COPY")
    )
    probe_stage = next(s for s in stages if s.name == "probe")
    (install,) = [i for i in probe_stage.all("RUN") if "go install" in i.args]
    assert "github.com/grpc-ecosystem/grpc-health-probe@v" in install.args
    # The swtpm sidecar (dev overlay) runs from this image too.
    assert "swtpm" in " ".join(i.args for i in final.all("RUN"))


def test_the_build_context_leaves_out_state_and_history() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".licensing", ".tools"} <= ignored
