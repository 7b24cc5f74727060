"""A private PostgreSQL server that a test may stop, kill and start again.

The shared server (``scripts/postgres.sh``, port 5432) is used by everyone on the
machine and must never be stopped; tests of database outages run their own, in a
temporary directory on a free port. PostgreSQL refuses to run as root, so as root
its programs run as the ``postgres`` OS user, which owns the directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port


def _bin_dir() -> Path:
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*") if (p / "bin" / "pg_ctl").exists()),
        key=lambda p: int(p.name) if p.name.isdigit() else 0,
    )
    if not versions:
        raise RuntimeError("PostgreSQL is not installed; run scripts/postgres.sh")
    return versions[-1] / "bin"


@dataclass
class PostgresServer:
    """One cluster: ``start``, ``stop`` (``immediate`` is a crash) and ``start`` again."""

    directory: Path
    port: int
    bin_dir: Path

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def admin_url(self) -> str:
        """What ``tests.support.start_stack`` takes: it makes a database per stack."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @classmethod
    def create(cls) -> PostgresServer:
        # Not under pytest's tmp_path: the postgres user cannot enter root's 0700 dirs.
        directory = Path(tempfile.mkdtemp(prefix="licensing-pg-"))
        directory.chmod(0o700)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        server = cls(directory, free_port(), _bin_dir())
        server._run(
            "initdb",
            "-D",
            str(server.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        return server

    def _run(self, program: str, *args: str, check: bool = True) -> int:
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr}")
        return result.returncode

    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False) == 0

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.directory / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
        )

    def stop(self, mode: str = "fast") -> None:
        """``immediate``: every server process exits at once, as in a crash."""
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "server.log").read_text(errors="replace")
        return ""

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PostgresServer]:
    """A started private server, removed afterwards."""
    server = PostgresServer.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()
