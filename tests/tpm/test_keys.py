"""EK certificate and EK public, the persistent AK, and credential activation, on swtpm."""

from __future__ import annotations

import hashlib
import secrets

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tpm2_pytss.constants import TPM2_ALG, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_NAME, TPM2B_PUBLIC
from tpm2_pytss.utils import make_credential

from licensing_server.tpm import AttestationKeyInfo, SwtpmSimulator, TpmCommandFailed, TpmDevice


def _public(marshalled: bytes) -> TPM2B_PUBLIC:
    public, used = TPM2B_PUBLIC.unmarshal(marshalled)
    assert used == len(marshalled)
    return public


async def test_ek_certificate_chains_to_the_manufacturer_ca(
    device: TpmDevice, swtpm: SwtpmSimulator
) -> None:
    ek_cert = x509.load_der_x509_certificate(await device.ek_certificate_der())
    cas = {
        c.subject: c for c in x509.load_pem_x509_certificates(swtpm.manufacturer_ca_pem().encode())
    }
    issuer = cas[ek_cert.issuer]
    ek_cert.verify_directly_issued_by(issuer)
    root = cas[issuer.issuer]
    issuer.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    assert len(cas) == 2


async def test_ek_public_is_the_certified_key(device: TpmDevice) -> None:
    certified = x509.load_der_x509_certificate(await device.ek_certificate_der()).public_key()
    area = _public(await device.ek_public()).publicArea
    if area.type == TPM2_ALG.RSA:
        assert isinstance(certified, rsa.RSAPublicKey)
        assert certified.public_numbers().n == int.from_bytes(bytes(area.unique.rsa), "big")
    else:
        assert isinstance(certified, ec.EllipticCurvePublicKey)
        assert certified.public_numbers().x == int.from_bytes(bytes(area.unique.ecc.x), "big")
    assert await device.loaded_handle_count() == 0


async def test_attestation_key_is_a_restricted_p256_signing_key(device: TpmDevice) -> None:
    ak = await device.attestation_key()
    area = _public(ak.public).publicArea
    attributes = int(area.objectAttributes)
    for required in (TPMA_OBJECT.RESTRICTED, TPMA_OBJECT.SIGN_ENCRYPT, TPMA_OBJECT.FIXEDTPM):
        assert attributes & int(required)
    assert not attributes & int(TPMA_OBJECT.DECRYPT)
    # The name is nameAlg || H(public area): what MakeCredential binds to.
    assert ak.name == b"\x00\x0b" + hashlib.sha256(ak.public[2:]).digest()
    pem_key = serialization.load_pem_public_key(ak.public_pem.encode())
    assert isinstance(pem_key, ec.EllipticCurvePublicKey)
    assert isinstance(pem_key.curve, ec.SECP256R1)
    assert pem_key.public_numbers().x == int.from_bytes(bytes(area.unique.ecc.x), "big")


async def test_attestation_key_is_reused_by_a_new_device(
    device: TpmDevice, swtpm: SwtpmSimulator
) -> None:
    first = await device.attestation_key()
    async with TpmDevice(swtpm.tcti) as again:
        assert await again.attestation_key() == first


async def test_attestation_key_survives_a_tpm_restart(
    device: TpmDevice, swtpm: SwtpmSimulator
) -> None:
    before = await device.attestation_key()
    swtpm.stop()
    swtpm.start(swtpm.port)
    async with TpmDevice(swtpm.tcti) as again:
        assert await again.attestation_key() == before


async def test_a_persistent_handle_holding_something_else_is_refused(device: TpmDevice) -> None:
    # 0x81010001 is where swtpm_setup persisted the RSA EK: not an AK.
    with pytest.raises(TpmCommandFailed) as caught:
        await device.attestation_key(0x81010001)
    assert caught.value.reason == "TPM_AK_HANDLE_CONFLICT"


def _credential(ek_public: bytes, secret: bytes, name: bytes) -> tuple[bytes, bytes]:
    """What the backend does in software: MakeCredential(EK public, secret, AK name)."""
    blob, encrypted = make_credential(_public(ek_public), secret, TPM2B_NAME(name))
    return bytes(blob.marshal()), bytes(encrypted.marshal())


async def test_activate_credential_returns_the_secret(device: TpmDevice) -> None:
    ak: AttestationKeyInfo = await device.attestation_key()
    secret = secrets.token_bytes(32)
    blob, encrypted = _credential(await device.ek_public(), secret, ak.name)
    assert await device.activate_credential(blob, encrypted) == secret
    assert await device.loaded_handle_count() == 0


async def test_a_credential_for_another_name_is_rejected(device: TpmDevice) -> None:
    ak = await device.attestation_key()
    other = ak.name[:2] + hashlib.sha256(b"some other key").digest()
    blob, encrypted = _credential(await device.ek_public(), secrets.token_bytes(32), other)
    with pytest.raises(TpmCommandFailed) as caught:
        await device.activate_credential(blob, encrypted)
    assert caught.value.reason == "TPM_CREDENTIAL_REJECTED"
    # The EK and the policy session were flushed on the failure path too.
    assert await device.loaded_handle_count() == 0


async def test_malformed_credential_input_is_a_value_error(device: TpmDevice) -> None:
    ak = await device.attestation_key()
    blob, encrypted = _credential(await device.ek_public(), b"s" * 16, ak.name)
    with pytest.raises(ValueError, match="trailing"):
        await device.activate_credential(blob + b"\x00", encrypted)
