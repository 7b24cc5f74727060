"""TPM failures in domain terms: "try again later" versus "the TPM said no".

tpm2-pytss raises one exception type for everything from a dead socket to a
rejected credential; callers need to know whether retrying can help, so the
response code's layer decides, here and nowhere else.
"""

from __future__ import annotations

from tpm2_pytss import TSS2_Exception

from licensing_common.errors import FailedPrecondition, Unavailable
from licensing_server.tpm._results import LockoutState

__all__ = ["TpmCommandFailed", "TpmLockedOut", "TpmUnavailable", "translate"]

TPM_UNAVAILABLE = "TPM_UNAVAILABLE"
TPM_LOCKED_OUT = "TPM_LOCKED_OUT"
TPM_COMMAND_FAILED = "TPM_COMMAND_FAILED"

_LAYER_MASK = 0xFF << 16
_TPM_LAYER = 0
_RESMGR_TPM_LAYER = 12 << 16  # a TPM response code relayed by a resource manager
_FMT1 = 0x080
_WARNING = 0x800  # format-zero codes with this bit are warnings: busy, out of memory, ...
_INITIALIZE = 0x100  # the TPM has not received TPM2_Startup
_LOCKOUT = 0x921  # TPM_RC_LOCKOUT: DA-protected authorizations refused for now


class TpmUnavailable(Unavailable):
    """The TPM did not answer, or answered "not now": retrying later may succeed.

    The reason is ``TPM_UNAVAILABLE``. A call that timed out may still complete on
    the TPM afterwards (an extend may land), so callers that track PCR contents
    must re-read them after this error.
    """


class TpmLockedOut(TpmUnavailable):
    """The TPM is in dictionary-attack lockout: it recovers by itself, or an operator clears it.

    The metadata says when: ``recovery_seconds`` (an upper bound), with the
    counter and limit it was computed from, and ``retry_after_ms`` for RetryInfo.
    """

    def __init__(self, state: LockoutState | None = None) -> None:
        message = "the TPM is in dictionary-attack lockout"
        metadata: dict[str, str] = {}
        if state is not None:
            seconds = state.seconds_until_recovery
            message += (
                f" ({state.counter} of {state.max_tries} failed tries); it recovers within"
                f" {seconds} s, or when an operator clears it"
            )
            metadata = {
                "recovery_seconds": str(seconds),
                "lockout_counter": str(state.counter),
                "max_auth_fail": str(state.max_tries),
                "retry_after_ms": str(seconds * 1000),
            }
        super().__init__(TPM_LOCKED_OUT, message, metadata)
        self.state = state


class TpmCommandFailed(FailedPrecondition):
    """The TPM executed the command and refused it; retrying unchanged will not help.

    ``rc`` is the TPM response code, or ``None`` when the refusal is ours (for
    example the EK certificate is missing).
    """

    def __init__(self, reason: str, message: str, rc: int | None = None) -> None:
        super().__init__(reason, message, {"rc": f"0x{rc:x}"} if rc is not None else None)
        self.rc = rc


def is_tpm_refusal(exc: TSS2_Exception) -> bool:
    """True when the TPM itself answered with an error (not a warning)."""
    rc = int(exc.rc)
    if rc & _LAYER_MASK not in (_TPM_LAYER, _RESMGR_TPM_LAYER):
        return False
    rc &= 0xFFFF
    if rc & _FMT1:
        return True
    return not rc & _WARNING and rc != _INITIALIZE


def is_lockout(exc: TSS2_Exception) -> bool:
    """True for TPM_RC_LOCKOUT (format-zero warning 0x921)."""
    rc = int(exc.rc)
    return rc & _LAYER_MASK in (_TPM_LAYER, _RESMGR_TPM_LAYER) and rc & 0xFFFF == _LOCKOUT


def is_out_of_memory(exc: TSS2_Exception) -> bool:
    """True for TPM_RC_OBJECT_MEMORY / SESSION_MEMORY / MEMORY: slots are full."""
    rc = int(exc.rc)
    return rc & _LAYER_MASK in (_TPM_LAYER, _RESMGR_TPM_LAYER) and rc & 0xFFFF in (
        0x902,
        0x903,
        0x904,
    )


def translate(exc: TSS2_Exception, action: str) -> TpmUnavailable | TpmCommandFailed:
    """Map a tpm2-pytss failure of ``action`` (e.g. "quote") to a domain error.

    Only the response code goes into the metadata; the library's text stays in
    the log through the exception chain.
    """
    rc = int(exc.rc)
    if is_lockout(exc):
        return TpmLockedOut()
    if is_tpm_refusal(exc):
        return TpmCommandFailed(TPM_COMMAND_FAILED, f"the TPM refused {action}", rc)
    unavailable = TpmUnavailable(TPM_UNAVAILABLE, f"the TPM is unavailable ({action} failed)")
    unavailable.metadata["rc"] = f"0x{rc:x}"
    return unavailable
