"""What the TPM hands back, as plain bytes: callers never touch tpm2-pytss types."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AttestationKeyInfo", "LockoutState", "QuoteResult"]


@dataclass(frozen=True, slots=True)
class AttestationKeyInfo:
    """The AK as a verifier sees it.

    ``public`` is the marshalled TPM2B_PUBLIC (its attributes prove restricted,
    sign, fixedTPM); ``name`` is the TPM2B_NAME content (nameAlg || digest), which
    MakeCredential binds the credential to; ``public_pem`` is the same key as a
    SubjectPublicKeyInfo for X.509 and signature checks.
    """

    public: bytes
    name: bytes
    public_pem: str


@dataclass(frozen=True, slots=True)
class QuoteResult:
    """A quote and the PCR values it covers, read back to back on the TPM thread.

    ``attest`` is the marshalled TPMS_ATTEST exactly as signed; ``signature`` a
    marshalled TPMT_SIGNATURE; ``pcr_values`` maps each quoted PCR (sha256 bank)
    to its value, and SHA-256 over the values in ascending PCR order equals the
    quote's pcrDigest. The counters come from the quote's clockInfo.
    """

    attest: bytes
    signature: bytes
    pcr_values: dict[int, bytes] = field(hash=False)
    reset_count: int
    restart_count: int


@dataclass(frozen=True, slots=True)
class LockoutState:
    """The TPM's dictionary-attack state, from GetCapability(TPM_PROPERTIES).

    ``counter`` is TPM2_PT_LOCKOUT_COUNTER (failed tries, including disorderly
    shutdowns after a DA-protected use); at ``max_tries`` the TPM refuses every
    DA-protected authorization, and it forgives one try per ``interval_seconds``
    of TPM uptime.
    """

    in_lockout: bool
    counter: int
    max_tries: int
    interval_seconds: int
    recovery_seconds: int  # TPM2_PT_LOCKOUT_RECOVERY: after a failed lockoutAuth

    @property
    def seconds_until_recovery(self) -> int:
        """An upper bound: the TPM does not say how far into the current interval it is."""
        if not self.in_lockout:
            return 0
        return max(1, self.counter - self.max_tries + 1) * self.interval_seconds
