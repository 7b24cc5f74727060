"""Where the key set lives: one file, replaced atomically, or the old single-key file.

``token-signing-keys.json`` holds the whole set in one file so that a reader never sees
half a rotation (three files read one by one could mix two generations). A directory
with only ``token-signing-key.pem`` (every deployment before key sets) is read as a set
of that one key, unchanged; the first rotation writes the set file and removes it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from licensing_server.pki import write_private_file
from licensing_server.tokens._keyset import TokenKeySet
from licensing_server.tokens._signing import SigningKey

KEY_SET_FILE = "token-signing-keys.json"
SINGLE_KEY_FILE = "token-signing-key.pem"
_LOCK_FILE = ".token-signing-keys.lock"

_log = logging.getLogger(__name__)

#: What identifies the file's content without reading it: a Kubernetes Secret update
#: swaps a symlink (new inode), an atomic replace makes a new inode too.
Stamp = tuple[str, int, int, int] | None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class KeySetMissing(Exception):
    """A directory given to us holds no key: a replica must never make its own."""


class KeySetFiles:
    """The key set in ``directory``; ``create`` lets a first start make one there."""

    def __init__(
        self,
        directory: Path,
        *,
        create: bool,
        clock: Callable[[], dt.datetime] = _utcnow,
    ):
        self.directory = directory
        self._create = create
        self._clock = clock

    @property
    def set_path(self) -> Path:
        return self.directory / KEY_SET_FILE

    @property
    def single_key_path(self) -> Path:
        return self.directory / SINGLE_KEY_FILE

    def stamp(self) -> Stamp:
        """Changes whenever the file we would read changes (compared by the key ring)."""
        for path in (self.set_path, self.single_key_path):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                return (path.name, st.st_ino, st.st_mtime_ns, st.st_size)
        return None

    def read(self) -> TokenKeySet:
        """The set file, else the single key; never makes one (``KeySetMissing``)."""
        with contextlib.suppress(FileNotFoundError):
            return TokenKeySet.from_json(self.set_path.read_text())
        with contextlib.suppress(FileNotFoundError):
            return TokenKeySet.single(self._single_key(), self._since(self.single_key_path))
        raise KeySetMissing(
            f"no token signing key in {self.directory} ({KEY_SET_FILE} or {SINGLE_KEY_FILE})"
        )

    def load(self) -> TokenKeySet:
        """What ``read`` finds, else (``create``: a first start) a fresh set written here."""
        try:
            return self.read()
        except KeySetMissing:
            if not self._create:
                raise
        with self.locked():
            if self.set_path.exists():  # another process made it first
                return TokenKeySet.from_json(self.set_path.read_text())
            key_set = TokenKeySet.fresh(self._clock())
            self.save(key_set)
            _log.info("created token signing key set %s", self.set_path)
            return key_set

    def save(self, key_set: TokenKeySet) -> None:
        """Replace the set atomically (0600); the single-key file it supersedes goes."""
        write_private_file(self.set_path, key_set.to_json().encode())
        with contextlib.suppress(FileNotFoundError):
            self.single_key_path.unlink()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise writers (two rotations at once would lose one's next key)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _single_key(self) -> SigningKey:
        key = serialization.load_pem_private_key(self.single_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.single_key_path} is not an EC private key")
        if self._create:  # our own data directory (a mounted Secret is read-only)
            self.single_key_path.chmod(0o600)
        return SigningKey(key)

    @staticmethod
    def _since(path: Path) -> dt.datetime:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
