"""tpm2-pytss response codes become "retry later" or "refused", by layer."""

from __future__ import annotations

import pytest
from tpm2_pytss import TSS2_Exception

from licensing_common.errors import FailedPrecondition, Unavailable
from licensing_server.tpm import (
    LockoutState,
    TpmCommandFailed,
    TpmLockedOut,
    TpmUnavailable,
    translate,
)


@pytest.mark.parametrize(
    ("rc", "expected"),
    [
        (0x000A000A, TpmUnavailable),  # TCTI: IO error (swtpm gone)
        (0x000A0006, TpmUnavailable),  # TCTI: bad sequence
        (0x00070001, TpmUnavailable),  # ESAPI: general failure
        (0x00000902, TpmUnavailable),  # TPM warning: object memory full
        (0x00000922, TpmUnavailable),  # TPM warning: retry
        (0x00000100, TpmUnavailable),  # TPM: not initialised
        (0x00000921, TpmLockedOut),  # TPM warning: DA lockout
        (0x000001DF, TpmCommandFailed),  # TPM: integrity check failed (bad credential)
        (0x0000018B, TpmCommandFailed),  # TPM: wrong handle
    ],
)
def test_translate_by_layer(rc: int, expected: type) -> None:
    error = translate(TSS2_Exception(rc), "quote")
    assert type(error) is expected
    if expected is not TpmLockedOut:
        assert error.metadata["rc"] == f"0x{rc:x}"
        assert "quote" in error.message


def test_lockout_says_when_the_tpm_recovers() -> None:
    state = LockoutState(
        in_lockout=True, counter=4, max_tries=3, interval_seconds=1000, recovery_seconds=1000
    )
    error = TpmLockedOut(state)
    assert isinstance(error, TpmUnavailable)
    assert error.reason == "TPM_LOCKED_OUT"
    assert error.metadata["recovery_seconds"] == "2000"  # two tries to forgive
    assert error.metadata["retry_after_ms"] == "2000000"


def test_domain_classes() -> None:
    assert issubclass(TpmUnavailable, Unavailable)
    assert issubclass(TpmCommandFailed, FailedPrecondition)
    assert TpmUnavailable("TPM_UNAVAILABLE", "x").reason == "TPM_UNAVAILABLE"
