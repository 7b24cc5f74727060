"""The capability catalog: configured names resolve to backends; unknown names stop start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from licensing_server.catalog import (
    CERTIFICATE_ISSUERS,
    ENCLAVE_LAUNCHERS,
    ENCLAVE_RUNTIMES,
    TPM_TRANSPORTS,
)
from licensing_server.config import ConfigError, Settings
from licensing_server.issuers import BuiltinCaIssuer, EnclaveCertificateRequest
from licensing_server.layout import DataLayout
from licensing_server.pki import CertificateAuthority
from licensing_server.registry import UnknownBackend
from licensing_server.runtimes import ExecLauncher, ForkServer, LocalProcessRuntime
from licensing_server.tpm import DeviceTransport, SwtpmTransport
from tests.support import make_csr, new_key


def test_the_defaults_name_registered_backends() -> None:
    settings = Settings.from_env({})
    assert settings.enclave_runtime == "local"
    assert settings.certificate_issuer == "builtin"
    assert settings.enclave_launcher == "fork-server"
    assert settings.tpm_transport == "swtpm"


def test_unknown_names_are_reported_together_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(
            {
                "LICENSING_ENCLAVE_RUNTIME": "nomad",
                "LICENSING_CERTIFICATE_ISSUER": "vault",
                "LICENSING_ENCLAVE_LAUNCHER": "spawn",
                "LICENSING_TPM_TCTI": "tabrmd:bus_type=session",
                "LICENSING_BCRYPT_COST": "many",
            }
        )
    assert raised.value.problems == [
        "LICENSING_BCRYPT_COST='many' is not an integer",
        "LICENSING_ENCLAVE_RUNTIME='nomad' is not a known enclave runtime; "
        "valid: 'kubernetes', 'local'",
        "LICENSING_CERTIFICATE_ISSUER='vault' is not a known certificate issuer; "
        "valid: 'builtin', 'cert-manager'",
        "LICENSING_ENCLAVE_LAUNCHER='spawn' is not a known enclave launcher; "
        "valid: 'exec', 'fork-server'",
        "LICENSING_TPM_TCTI='tabrmd' is not a known TPM transport (TCTI); "
        "valid: 'device', 'swtpm' (from 'tabrmd:bus_type=session')",
    ]


def test_resolving_an_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownBackend, match=r"valid: 'kubernetes', 'local'$"):
        ENCLAVE_RUNTIMES.resolve("nomad")


@pytest.mark.parametrize(
    ("environ", "launcher"),
    [
        ({}, ForkServer),
        ({"LICENSING_ENCLAVE_LAUNCHER": "exec"}, ExecLauncher),
        ({"LICENSING_ENCLAVE_COMMAND": "/bin/true"}, ExecLauncher),
    ],
)
async def test_the_local_runtime_starts_and_closes_its_launcher(
    tmp_path: Path, environ: dict[str, str], launcher: type
) -> None:
    settings = Settings.from_env({"LICENSING_DATA_DIR": str(tmp_path), **environ})
    assert isinstance(ENCLAVE_LAUNCHERS.resolve(settings.enclave_launcher)(settings), launcher)
    runtime = ENCLAVE_RUNTIMES.resolve(settings.enclave_runtime)(settings, DataLayout(tmp_path))
    assert isinstance(runtime, LocalProcessRuntime)
    await runtime.start()
    await runtime.close()
    await runtime.close()  # idempotent: a failed start-up may close what it never used


async def test_the_builtin_issuer_signs_enclave_csrs_with_the_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca-key.pem", tmp_path / "ca.pem")
    issuer = CERTIFICATE_ISSUERS.resolve("builtin")(Settings.from_env({}), ca)
    assert isinstance(issuer, BuiltinCaIssuer)
    assert issuer.ca_certificates_pem == ca.ca_certificates_pem
    key = new_key()
    issued = await issuer.issue_enclave_certificate(
        EnclaveCertificateRequest(
            csr_pem=make_csr(key, cn="ignored"),
            common_name="e-1",
            lifetime=ca.SERVER_LIFETIME,
            dns_names=["e-1.enclaves.licensing.internal"],
        )
    )
    assert issued.certificate.issuer == ca.certificate.subject
    assert issued.certificate.subject.rfc4514_string() == "CN=e-1"
    assert issued.certificate.public_key() == key.public_key()


def test_tpm_transports_follow_the_tcti(tmp_path: Path) -> None:
    embedded = Settings.from_env({"LICENSING_DATA_DIR": str(tmp_path)})
    swtpm = TPM_TRANSPORTS.resolve(embedded.tpm_transport)(embedded)
    assert isinstance(swtpm, SwtpmTransport)
    assert swtpm.shutdown_on_close
    assert swtpm.tcti == "swtpm:host=127.0.0.1,port=2321"

    device = Settings.from_env({"LICENSING_TPM_TCTI": "device:/dev/tpmrm0"})
    hardware = TPM_TRANSPORTS.resolve(device.tpm_transport)(device)
    assert isinstance(hardware, DeviceTransport)
    assert not hardware.shutdown_on_close
    assert hardware.tcti == "device:/dev/tpmrm0"
    with pytest.raises(FileNotFoundError, match="LICENSING_TPM_MANUFACTURER_CA_FILE"):
        hardware.manufacturer_ca_pem()
