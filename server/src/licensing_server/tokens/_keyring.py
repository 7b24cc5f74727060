"""The frontend's live key set: read again when its file changes, or at once on SIGHUP.

Replicas share the set through their files (the data directory, or a mounted Secret
that the kubelet updates in place some time after the Secret changes); each one
notices within ``interval`` seconds. A file that cannot be read keeps the set in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec

from licensing_server.tokens._keyfiles import KeySetFiles, KeySetMissing
from licensing_server.tokens._keyset import TokenKeySet
from licensing_server.tokens._signing import SigningKey

_log = logging.getLogger(__name__)


class TokenKeyRing:
    def __init__(self, files: KeySetFiles):
        self._files = files
        self._stamp = files.stamp()
        self._set = files.load()
        if self._stamp is None:  # we just created it
            self._stamp = files.stamp()
        self._jwks = self._set.jwks_json()
        self._listeners: list[Callable[[TokenKeySet], None]] = []
        self._wake = asyncio.Event()
        _log.info("token signing keys: %s", self._set.describe())

    @property
    def key_set(self) -> TokenKeySet:
        return self._set

    def signing_key(self) -> SigningKey:
        return self._set.signing_key

    def jwks_json(self) -> str:
        return self._jwks

    def public_keys(self) -> dict[str, ec.EllipticCurvePublicKey]:
        return self._set.public_keys()

    def on_change(self, listener: Callable[[TokenKeySet], None]) -> None:
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Read the files again if they changed; True if the set in use changed."""
        stamp = self._files.stamp()
        if stamp == self._stamp:
            return False
        try:
            # Never a new set here: a file gone missing is an operator's mistake to report,
            # not a reason to sign with a key no other replica knows.
            key_set = self._files.read()
        except (OSError, ValueError, KeySetMissing) as exc:
            # Kept: signing on with a known key beats refusing every login.
            _log.error("token signing keys in %s unreadable, kept: %s", self._files.directory, exc)
            return False
        self._stamp = stamp
        if key_set.jwks_json() == self._jwks and key_set.signing_key.kid == self.signing_key().kid:
            return False
        self._set, self._jwks = key_set, key_set.jwks_json()
        _log.info("token signing keys reloaded: %s", key_set.describe())
        for listener in self._listeners:
            listener(key_set)
        return True

    def request_reload(self) -> None:
        """For the SIGHUP handler: reload now rather than at the next poll."""
        self._wake.set()

    async def watch(self, interval: float) -> None:
        """Poll the files every ``interval`` seconds (sooner when woken); runs until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            self.reload()
