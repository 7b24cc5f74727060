"""The token signing key set: ``current`` signs, ``next`` is pre-published, ``previous`` lingers.

Every verifier accepts every published key by ``kid``; the signer uses ``current`` only.
Rotation promotes ``next`` to ``current`` and keeps the old ``current`` as ``previous``
for at least the access-token lifetime, so no token anyone holds stops verifying, and
a verifier given the JWKS before the rotation (an enclave) already knows the new
signing key. Pure data: files are ``_keyfiles``, the live copy ``_keyring``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from licensing_server.tokens._signing import SigningKey

#: The stored form's version; anything else is refused rather than half-read.
FORMAT = "licensing-token-signing-keys/v1"
#: How long replicas may take to see a rotated set: their poll (10 s by default) plus, in
#: Kubernetes, the kubelet's update of a mounted Secret (a minute or two). Both the time a
#: previous key stays and the time a next key waits before it signs include it.
PROPAGATION_ALLOWANCE = dt.timedelta(minutes=5)


class RotationRefused(Exception):
    """Rotating now would make tokens fail somewhere (``--force`` overrides)."""


@dataclass(frozen=True, slots=True)
class KeyInRole:
    """A key and when it entered its role (published, promoted or retired)."""

    key: SigningKey
    since: dt.datetime


def _pem(key: SigningKey) -> str:
    return key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _from_pem(pem: str) -> SigningKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("a token signing key is not an EC private key")
    return SigningKey(key)


def new_key() -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()))


def _time(text: object) -> dt.datetime:
    if not isinstance(text, str):
        raise ValueError("a key's 'since' is not a time")
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("a key's 'since' has no time zone")
    return moment


@dataclass(frozen=True, slots=True)
class TokenKeySet:
    current: KeyInRole
    next: KeyInRole | None = None
    previous: tuple[KeyInRole, ...] = field(default=())

    @classmethod
    def fresh(cls, now: dt.datetime) -> TokenKeySet:
        """A new set: a current key and, published from the start, its successor."""
        return cls(current=KeyInRole(new_key(), now), next=KeyInRole(new_key(), now))

    @classmethod
    def single(cls, key: SigningKey, since: dt.datetime) -> TokenKeySet:
        """What a deployment with one key file has: that key signs, nothing else."""
        return cls(current=KeyInRole(key, since))

    @property
    def signing_key(self) -> SigningKey:
        return self.current.key

    def published(self) -> list[SigningKey]:
        """Every key verifiers must accept: previous (oldest first), current, next."""
        roles = [*self.previous, self.current, *([self.next] if self.next else [])]
        return [r.key for r in roles]

    def public_keys(self) -> dict[str, ec.EllipticCurvePublicKey]:
        return {k.kid: k.private_key.public_key() for k in self.published()}

    def jwks_json(self) -> str:
        return json.dumps({"keys": [k.public_jwk for k in self.published()]}, sort_keys=True)

    def rotated(
        self,
        now: dt.datetime,
        *,
        keep_previous_for: dt.timedelta,
        min_next_age: dt.timedelta = dt.timedelta(0),
        force: bool = False,
        discard_previous: bool = False,
    ) -> TokenKeySet:
        """The set after one rotation.

        Without a ``next`` (a single-key deployment) the rotation only publishes one:
        promoting a key nobody was given would break every enclave made before. A
        ``next`` younger than ``min_next_age`` (the enclave lifetime) is not promoted
        unless ``force``: enclaves made before it was published would refuse its tokens.
        Previous keys retired longer than ``keep_previous_for`` ago are dropped (all of
        them, the old current included, with ``discard_previous``: a compromised key).
        """
        kept = tuple(p for p in self.previous if now - p.since < keep_previous_for)
        if self.next is None:
            return replace(self, next=KeyInRole(new_key(), now), previous=kept)
        ready_at = self.next.since + min_next_age
        if now < ready_at and not force:
            raise RotationRefused(
                f"the next key {self.next.key.kid} was published at "
                f"{self.next.since.isoformat()}: enclaves provisioned before then do not "
                f"know it; rotate after {ready_at.isoformat()} (or force it)"
            )
        previous = () if discard_previous else (*kept, KeyInRole(self.current.key, now))
        return TokenKeySet(
            current=KeyInRole(self.next.key, now),
            next=KeyInRole(new_key(), now),
            previous=previous,
        )

    # The stored form ----------------------------------------------------------------
    def to_json(self) -> str:
        def role(r: KeyInRole) -> dict[str, str]:
            return {"kid": r.key.kid, "since": r.since.isoformat(), "private_key_pem": _pem(r.key)}

        document: dict[str, Any] = {
            "format": FORMAT,
            "current": role(self.current),
            "next": role(self.next) if self.next else None,
            "previous": [role(p) for p in self.previous],
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TokenKeySet:
        document = json.loads(text)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"not a token key set of format {FORMAT}")

        def role(entry: object) -> KeyInRole:
            if not isinstance(entry, dict) or not isinstance(entry.get("private_key_pem"), str):
                raise ValueError("a key of the set has no private_key_pem")
            return KeyInRole(_from_pem(entry["private_key_pem"]), _time(entry.get("since")))

        previous = document.get("previous") or []
        if not isinstance(previous, list):
            raise ValueError("'previous' is not a list")
        next_entry = document.get("next")
        key_set = cls(
            current=role(document.get("current")),
            next=role(next_entry) if next_entry is not None else None,
            previous=tuple(role(p) for p in previous),
        )
        kids = [k.kid for k in key_set.published()]
        if len(set(kids)) != len(kids):
            raise ValueError("a key appears twice in the set")
        return key_set

    def describe(self) -> dict[str, object]:
        """Roles, kids and times; never key material (``licensing-admin token-keys``)."""

        def role(r: KeyInRole) -> dict[str, str]:
            return {"kid": r.key.kid, "since": r.since.isoformat()}

        return {
            "current": role(self.current),
            "next": role(self.next) if self.next else None,
            "previous": [role(p) for p in self.previous],
        }
