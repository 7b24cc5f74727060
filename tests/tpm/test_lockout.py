"""Dictionary-attack lockout: noDA attestation keys, orderly shutdown, lockout state and reset."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import pytest
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC

from licensing_server.tpm import SwtpmSimulator, TpmDevice
from tests.tpm.da import (
    clear_lockout,
    lockout_counter,
    old_attestation_key,
    provoke_lockout,
    use_da_protected_key,
)

OLD_AK_HANDLE = 0x81010011  # clear of the default handle the other tests use


def _attributes(marshalled: bytes) -> int:
    public, _ = TPM2B_PUBLIC.unmarshal(marshalled)
    return int(public.publicArea.objectAttributes)


@pytest.fixture
def unlocked(swtpm: SwtpmSimulator) -> Iterator[None]:
    """Leave the session's swtpm as found: lockout counter back to zero."""
    clear_lockout(swtpm.tcti)
    yield
    clear_lockout(swtpm.tcti)


async def test_the_attestation_key_is_exempt_from_dictionary_attack(device: TpmDevice) -> None:
    ak = await device.attestation_key()
    assert _attributes(ak.public) & int(TPMA_OBJECT.NODA)


async def test_an_attestation_key_without_noda_is_replaced(
    device: TpmDevice, swtpm: SwtpmSimulator
) -> None:
    old = old_attestation_key(swtpm.tcti, OLD_AK_HANDLE)
    assert not _attributes(old) & int(TPMA_OBJECT.NODA)
    try:
        new = await device.attestation_key(OLD_AK_HANDLE)
        assert new.public != old
        assert _attributes(new.public) & int(TPMA_OBJECT.NODA)
        # Persisted in its place: a fresh connection finds the new key there.
        async with TpmDevice(swtpm.tcti) as other:
            assert (await other.attestation_key(OLD_AK_HANDLE)).public == new.public
    finally:
        with closing(ESAPI(swtpm.tcti)) as esapi:
            esapi.evict_control(
                ESYS_TR.OWNER, esapi.tr_from_tpmpublic(OLD_AK_HANDLE), OLD_AK_HANDLE
            )


async def test_lockout_is_read_and_cleared(device: TpmDevice, unlocked: None) -> None:
    assert not (await device.lockout_state()).in_lockout
    tries = provoke_lockout(device.tcti)
    state = await device.lockout_state()
    assert state.in_lockout
    assert state.counter == state.max_tries == tries - 1
    assert state.seconds_until_recovery == state.interval_seconds > 0
    await device.clear_lockout()
    state = await device.lockout_state()
    assert not state.in_lockout
    assert state.counter == 0


def _restart(swtpm: SwtpmSimulator) -> None:
    """Stop swtpm (SIGTERM: the TPM itself is not told) and start it again on its port."""
    port = swtpm.port
    swtpm.stop()
    swtpm.start(port)


@pytest.mark.parametrize("orderly", [True, False])
async def test_closing_the_device_shuts_the_tpm_down_in_order(
    swtpm: SwtpmSimulator, unlocked: None, orderly: bool
) -> None:
    """After a DA-protected use, only a TPM2_Shutdown keeps the next start from counting."""
    use_da_protected_key(swtpm.tcti)
    device = TpmDevice(swtpm.tcti, shutdown_on_close=None if orderly else False)
    await device.read_pcrs([0])
    await device.close()
    _restart(swtpm)
    assert lockout_counter(swtpm.tcti) == (0 if orderly else 1)
