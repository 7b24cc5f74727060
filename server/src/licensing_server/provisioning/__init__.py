"""Driving enclaves through their phases, and putting them right after crashes."""

from licensing_server.provisioning._probe import HealthProbe
from licensing_server.provisioning._provisioner import (
    EnclaveProvisioner,
    ProvisioningSettings,
    measured_certificates,
    terminal_phases,
)
from licensing_server.provisioning._reattestation import ReattestationRounds, RoundReport
from licensing_server.provisioning._reconciler import Reconciler

__all__ = [
    "EnclaveProvisioner",
    "HealthProbe",
    "ProvisioningSettings",
    "ReattestationRounds",
    "Reconciler",
    "RoundReport",
    "measured_certificates",
    "terminal_phases",
]
