"""The backend's attestor in this process, on a real swtpm and a real SQLite database.

For tests and benchmarks that drive the measurement path directly (thousands of set
changes without starting an enclave process for each). The live set is a dict the
caller keeps, standing in for the enclaves table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from licensing.v1 import attestation_pb2

from licensing_client.attestation import VerificationReport, verify_attestation
from licensing_server.attestation import Attestor
from licensing_server.pki import CertificateAuthority, IssuedCertificate
from licensing_server.storage import Database, MeasurementStore, run_migrations
from licensing_server.tpm import SwtpmSimulator, TpmDevice
from tests.support import free_port_pair


@dataclass
class Harness:
    attestor: Attestor
    ca: CertificateAuthority
    tpm: TpmDevice
    swtpm: SwtpmSimulator
    database: Database
    #: enclave id -> certificate SHA-256: what the enclaves table would say is live.
    live: dict[str, bytes] = field(default_factory=dict)

    def certificate(self, enclave_id: str) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        return self.ca.issue(
            key.public_key(), common_name=enclave_id, lifetime=dt.timedelta(hours=1)
        )

    async def create(self, enclave_id: str, certificate_sha256: bytes | None = None) -> bytes:
        """Measure an enclave (a random stand-in hash unless given), as provisioning does."""
        digest = certificate_sha256 or hashlib.sha256(enclave_id.encode()).digest()
        await self.attestor.measure(enclave_id, digest)
        self.live[enclave_id] = digest
        return digest

    def delete(self, enclave_id: str) -> None:
        self.live.pop(enclave_id, None)
        self.attestor.forget(enclave_id)

    def verify(
        self, attestation: attestation_pb2.Attestation, nonce: bytes, certificate_pem: str
    ) -> VerificationReport:
        return verify_attestation(
            attestation,
            nonce=nonce,
            expected_certificate_pem=certificate_pem,
            trusted_ca_pem=self.ca.ca_certificates_pem,
        )

    def restarted(self, directory: Path) -> Attestor:
        """Another attestor over the same TPM and database: what a backend restart makes."""
        return _attestor(self.tpm, self.ca, self.swtpm, self.database, self.live, directory)


def _attestor(
    tpm: TpmDevice,
    ca: CertificateAuthority,
    swtpm: SwtpmSimulator,
    database: Database,
    live: dict[str, bytes],
    directory: Path,
    simulated_tpm_latency: float = 0.0,
) -> Attestor:
    async def live_certificates() -> list[tuple[str, bytes]]:
        return list(live.items())

    return Attestor(
        tpm=tpm,
        ca=ca,
        measurements=MeasurementStore(database),
        manufacturer_ca_pem=swtpm.manufacturer_ca_pem().encode(),
        ak_certificate_path=directory / "ak.pem",
        live_certificates=live_certificates,
        simulated_tpm_latency=simulated_tpm_latency,
    )


@asynccontextmanager
async def attestor_on_swtpm(
    directory: Path, simulated_tpm_latency: float = 0.0
) -> AsyncIterator[Harness]:
    """``simulated_tpm_latency``: seconds slept before each quote, as a hardware TPM takes."""
    swtpm = SwtpmSimulator.prepare(directory / "swtpm")
    swtpm.start(free_port_pair())
    url = f"sqlite+aiosqlite:///{directory / 'licensing.db'}"
    run_migrations(url)
    database = Database.connect(url)
    try:
        async with TpmDevice(swtpm.tcti, command_timeout=10.0) as tpm:
            ca = CertificateAuthority.load_or_create(directory / "ca.key", directory / "ca.pem")
            live: dict[str, bytes] = {}
            attestor = _attestor(tpm, ca, swtpm, database, live, directory, simulated_tpm_latency)
            harness = Harness(attestor, ca, tpm, swtpm, database, live)
            await attestor.prove_attestation_key()
            try:
                yield harness
            finally:
                await harness.attestor.close()
    finally:
        await database.close()
        swtpm.stop()
