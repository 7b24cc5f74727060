"""PCR 23 extend/reset/read and quotes checked the way a verifier checks them."""

from __future__ import annotations

import hashlib
import secrets
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tpm2_pytss.constants import TPM2_ALG, TPM2_GENERATED, TPM2_ST
from tpm2_pytss.types import TPM2B_NAME, TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE
from tpm2_pytss.utils import make_credential

from licensing_server.tpm import AttestationKeyInfo, QuoteResult, TpmDevice

PCR = 23
QUOTED = [0, 1, 2, 3, 4, 5, 6, 7, PCR]  # nine PCRs: more than one PCR_Read returns


def _verify(quote: QuoteResult, ak: AttestationKeyInfo, qualifying_data: bytes) -> None:
    """Signature by the AK over the attest bytes, then the attest's own claims."""
    key = serialization.load_pem_public_key(ak.public_pem.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    signature, used = TPMT_SIGNATURE.unmarshal(quote.signature)
    assert used == len(quote.signature)
    assert signature.sigAlg == TPM2_ALG.ECDSA
    ecdsa = signature.signature.ecdsa
    der = encode_dss_signature(
        int.from_bytes(bytes(ecdsa.signatureR), "big"),
        int.from_bytes(bytes(ecdsa.signatureS), "big"),
    )
    key.verify(der, quote.attest, ec.ECDSA(hashes.SHA256()))

    attest, used = TPMS_ATTEST.unmarshal(quote.attest)
    assert used == len(quote.attest)
    assert attest.magic == TPM2_GENERATED.VALUE
    assert attest.type == TPM2_ST.ATTEST_QUOTE
    assert bytes(attest.extraData) == qualifying_data
    assert attest.clockInfo.resetCount == quote.reset_count
    assert attest.clockInfo.restartCount == quote.restart_count
    expected = hashlib.sha256(b"".join(quote.pcr_values[p] for p in sorted(quote.pcr_values)))
    assert bytes(attest.attested.quote.pcrDigest) == expected.digest()


async def test_extend_is_sha256_of_old_value_and_digest(device: TpmDevice) -> None:
    await device.reset_pcr(PCR)
    assert await device.read_pcrs([PCR]) == {PCR: bytes(32)}
    value = bytes(32)
    for event in (b"first certificate", b"second certificate"):
        digest = hashlib.sha256(event).digest()
        await device.extend_pcr(PCR, digest)
        value = hashlib.sha256(value + digest).digest()
        assert await device.read_pcrs([PCR]) == {PCR: value}
    await device.reset_pcr(PCR)
    assert await device.read_pcrs([PCR]) == {PCR: bytes(32)}


async def test_read_pcrs_returns_every_requested_pcr(device: TpmDevice) -> None:
    values = await device.read_pcrs(list(range(24)))
    assert sorted(values) == list(range(24))
    assert all(len(v) == 32 for v in values.values())


async def test_quote_verifies_with_the_ak_and_covers_the_returned_pcrs(device: TpmDevice) -> None:
    ak = await device.attestation_key()
    await device.reset_pcr(PCR)
    await device.extend_pcr(PCR, hashlib.sha256(b"enclave certificate").digest())
    qualifying = hashlib.sha256(b"licensing-attest-v1" + secrets.token_bytes(16)).digest()
    quote = await device.quote(qualifying, QUOTED)
    _verify(quote, ak, qualifying)
    assert sorted(quote.pcr_values) == QUOTED
    assert (
        quote.pcr_values[PCR]
        == hashlib.sha256(bytes(32) + hashlib.sha256(b"enclave certificate").digest()).digest()
    )
    assert (quote.reset_count, quote.restart_count) == await device.clock_info()


async def test_quote_accepts_64_bytes_and_refuses_more(device: TpmDevice) -> None:
    ak = await device.attestation_key()
    _verify(await device.quote(b"\x01" * 64, [PCR]), ak, b"\x01" * 64)
    with pytest.raises(ValueError, match="at most 64"):
        await device.quote(b"\x01" * 65, [PCR])


async def test_two_thousand_quotes_without_leaking(device: TpmDevice) -> None:
    """keylime#656: TPM users that leak handles stop quoting after a while."""
    ak = await device.attestation_key()
    count = 2000
    started = time.perf_counter()
    quote = None
    for i in range(count):
        quote = await device.quote(i.to_bytes(32, "big"), QUOTED)
    elapsed = time.perf_counter() - started
    print(f"\n{count} quotes over {len(QUOTED)} PCRs in {elapsed:.2f} s: {count / elapsed:.0f}/s")
    assert quote is not None
    _verify(quote, ak, (count - 1).to_bytes(32, "big"))
    ek_public = await device.ek_public()
    for _ in range(20):  # each activation loads an EK and a policy session
        secret = secrets.token_bytes(32)
        blob, encrypted = make_credential(
            TPM2B_PUBLIC.unmarshal(ek_public)[0], secret, TPM2B_NAME(ak.name)
        )
        assert await device.activate_credential(blob.marshal(), encrypted.marshal()) == secret
    assert await device.loaded_handle_count() == 0
