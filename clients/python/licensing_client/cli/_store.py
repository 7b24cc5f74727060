"""The credential store: one directory (0700) of 0600 files, each replaced atomically.

``ca.pem``       the pinned licensing CA (from --ca-file, on first use, or from Login)
``key.pem``      the client's private key (made here, never sent anywhere)
``cert.pem``     the client certificate the server issued for that key
``session.json`` tokens, their expiry, the user and the server addresses
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from licensing_client._session import Session
from licensing_client.cli._errors import CliError, UsageError

_DIR_MODE = 0o700
_FILE_MODE = 0o600


def default_config_dir(environ: Mapping[str, str]) -> Path:
    """``$LICENSING_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/licensing``, else ``~/.config/...``."""
    if environ.get("LICENSING_CONFIG_DIR"):
        return Path(environ["LICENSING_CONFIG_DIR"]).expanduser()
    if environ.get("XDG_CONFIG_HOME"):
        return Path(environ["XDG_CONFIG_HOME"]).expanduser() / "licensing"
    return Path.home() / ".config" / "licensing"


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What ``session.json`` holds."""

    username: str
    user_id: str
    server: str
    api: str
    access_token: str
    access_token_expire_time: dt.datetime
    refresh_token: str
    refresh_token_expire_time: dt.datetime
    client_certificate_expire_time: dt.datetime

    def to_json(self) -> str:
        data = {
            key: format_time(value) if isinstance(value, dt.datetime) else value
            for key, value in asdict(self).items()
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SessionRecord:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        values: dict[str, str | dt.datetime] = {}
        for spec in fields(cls):
            value = data.get(spec.name)
            if not isinstance(value, str):
                raise ValueError(f"{spec.name} is missing")
            values[spec.name] = _parse_time(value) if spec.name.endswith("_time") else value
        return cls(**values)  # type: ignore[arg-type]


class CredentialStore:
    """The config directory. Nothing is written until ``prepare`` has vetted it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def ca_path(self) -> Path:
        return self.root / "ca.pem"

    @property
    def key_path(self) -> Path:
        return self.root / "key.pem"

    @property
    def cert_path(self) -> Path:
        return self.root / "cert.pem"

    @property
    def session_path(self) -> Path:
        return self.root / "session.json"

    def prepare(self) -> None:
        """Create the directory 0700, or tighten it to 0700 if it is ours."""
        try:
            self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            info = self.root.stat()
        except OSError as exc:
            raise UsageError(
                f"cannot use {self.root} as the config directory: {exc.strerror}"
            ) from exc
        if not stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{self.root} is not a directory")
        if info.st_uid != os.getuid():
            raise UsageError(f"{self.root} belongs to another user; refusing to keep keys there")
        if stat.S_IMODE(info.st_mode) != _DIR_MODE:
            self.root.chmod(_DIR_MODE)

    def write(self, path: Path, data: bytes) -> None:
        """Replace ``path`` atomically with a 0600 file holding ``data``."""
        self.prepare()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    # The pinned CA ---------------------------------------------------------------
    def pinned_ca(self) -> bytes | None:
        try:
            return self.ca_path.read_bytes()
        except FileNotFoundError:
            return None

    def pin_ca(self, pem: bytes) -> None:
        self.write(self.ca_path, pem)

    # The session -----------------------------------------------------------------
    def load_session(self) -> SessionRecord | None:
        try:
            text = self.session_path.read_text()
        except FileNotFoundError:
            return None
        try:
            return SessionRecord.from_json(text)
        except (ValueError, TypeError) as exc:
            raise CliError(f"{self.session_path} is damaged ({exc}); log in again") from exc

    def save_session(self, record: SessionRecord) -> None:
        self.write(self.session_path, record.to_json().encode())

    def save_credentials(self, key_pem: bytes, cert_pem: bytes) -> None:
        """The private key and the certificate the server issued for it."""
        self.write(self.cert_path, cert_pem)
        self.write(self.key_path, key_pem)

    def delete_session(self) -> None:
        """Forget the session, the key and the certificate; keep the pinned CA."""
        for path in (self.session_path, self.key_path, self.cert_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise token refreshes between CLI processes sharing this directory.

        A refresh token is single use and presenting a spent one revokes the whole
        session, so two processes must never refresh with the same one.
        """
        self.prepare()
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


#: What ``session.json`` and ``Session`` both hold (the PEMs live in files of their own).
_SHARED_FIELDS = tuple(f.name for f in fields(Session) if f.name in SessionRecord.__annotations__)


class FileSessionStore:
    """``CredentialStore`` as the client's ``SessionStore``: ``session.json`` with the key and
    certificate beside it, locked between processes (``CredentialStore.lock``)."""

    def __init__(self, store: CredentialStore, *, server: str, api: str) -> None:
        self.store = store
        self.server = server
        self.api = api

    def load(self) -> Session | None:
        record = self.store.load_session()
        if record is None:
            return None
        try:
            cert_pem = self.store.cert_path.read_bytes()
            key_pem = self.store.key_path.read_bytes()
        except FileNotFoundError:
            return None
        shared = {name: getattr(record, name) for name in _SHARED_FIELDS}
        return Session(**shared, client_certificate_pem=cert_pem, client_key_pem=key_pem)

    def save(self, session: Session) -> None:
        """The key and certificate first (if they changed), then the record naming them."""
        try:
            same = (
                self.store.cert_path.read_bytes() == session.client_certificate_pem
                and self.store.key_path.read_bytes() == session.client_key_pem
            )
        except FileNotFoundError:
            same = False
        if not same:
            self.store.save_credentials(session.client_key_pem, session.client_certificate_pem)
        shared = {name: getattr(session, name) for name in _SHARED_FIELDS}
        self.store.save_session(SessionRecord(**shared, server=self.server, api=self.api))

    def lock(self) -> contextlib.AbstractContextManager[object]:
        return self.store.lock()
