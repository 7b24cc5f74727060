"""TPM transports: how the backend reaches its TPM, named by the TCTI in ``LICENSING_TPM_TCTI``.

``swtpm:host=H,port=P`` is the software TPM (the embedded default when the setting
is empty, or one run elsewhere); ``device:/dev/tpmrm0`` a hardware TPM through the
kernel's resource manager. The attestation code is the same for both (``TpmDevice``
takes the TCTI string); what differs is said here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from licensing_server.tpm.swtpm import SwtpmSimulator

if TYPE_CHECKING:
    from licensing_server.config import Settings

__all__ = ["DeviceTransport", "SwtpmTransport", "TpmTransport"]


class TpmTransport(Protocol):
    """What the backend needs to know of its TPM beyond the commands themselves."""

    @property
    def tcti(self) -> str:
        """The TCTI string ``TpmDevice`` connects with."""
        ...

    @property
    def shutdown_on_close(self) -> bool:
        """Whether the backend sends TPM2_Shutdown when it closes the TPM.

        True for a simulator, which loses power with its process: without it every
        stop is a disorderly shutdown (dictionary-attack counting). A hardware TPM
        is shut down by the kernel.
        """
        ...

    def manufacturer_ca_pem(self) -> bytes:
        """The CA bundle that must have signed the TPM's EK certificate.

        Raises ``FileNotFoundError`` (its message names the setting) when there is none.
        """
        ...


def _read_ca_file(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"LICENSING_TPM_MANUFACTURER_CA_FILE {path} does not exist")
    return path.read_bytes()


@dataclass(frozen=True, slots=True)
class SwtpmTransport:
    """swtpm over TCP; ``state_dir`` is set for the embedded one the supervisor runs."""

    tcti: str
    manufacturer_ca_file: Path
    state_dir: Path | None = None
    shutdown_on_close: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> SwtpmTransport:
        embedded = not settings.tpm_tcti
        return cls(
            tcti=settings.effective_tpm_tcti,
            manufacturer_ca_file=settings.effective_manufacturer_ca_file,
            state_dir=settings.swtpm_state_dir if embedded else None,
        )

    def manufacturer_ca_pem(self) -> bytes:
        if self.manufacturer_ca_file.exists() or self.state_dir is None:
            return _read_ca_file(self.manufacturer_ca_file)
        # The embedded swtpm: its own local CA signed the EK certificate.
        return SwtpmSimulator(self.state_dir).manufacturer_ca_pem().encode()


@dataclass(frozen=True, slots=True)
class DeviceTransport:
    """A hardware TPM (``device:/dev/tpmrm0``); its vendor's CA must be configured."""

    tcti: str
    manufacturer_ca_file: Path
    shutdown_on_close: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> DeviceTransport:
        return cls(
            tcti=settings.effective_tpm_tcti,
            manufacturer_ca_file=settings.effective_manufacturer_ca_file,
        )

    def manufacturer_ca_pem(self) -> bytes:
        return _read_ca_file(self.manufacturer_ca_file)
