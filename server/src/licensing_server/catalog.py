"""The built-in backends of every capability: the one place a configured name is resolved.

- enclave runtime (``runtimes.EnclaveRuntime``), ``LICENSING_ENCLAVE_RUNTIME``:
  ``local``, ``kubernetes``;
- enclave launcher of the local runtime (``runtimes.EnclaveLauncher``),
  ``LICENSING_ENCLAVE_LAUNCHER``: ``exec``, ``fork-server``;
- certificate issuer (``issuers.CertificateIssuer``), ``LICENSING_CERTIFICATE_ISSUER``:
  ``builtin``, ``cert-manager`` (a CA ClusterIssuer backed by the built-in CA);
- TPM transport (``tpm.TpmTransport``), the TCTI name in ``LICENSING_TPM_TCTI``:
  ``device``, ``swtpm``;
- leader election (``leadership.LeaderElection``), ``LICENSING_LEADER_ELECTION``:
  ``sole``, ``advisory-lock``, ``kubernetes-lease`` (``Settings.effective_leader_election``
  picks by the database when unset).

A new backend (``kubernetes``) is one module in its capability's
package and one entry here. Each factory imports its backend when called, so that
reading the names (``config`` does, in every process) loads none of them: the
frontend never imports tpm2-pytss this way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from licensing_server.registry import Registry

if TYPE_CHECKING:
    from licensing_server.config import Settings
    from licensing_server.issuers import CertificateIssuer
    from licensing_server.layout import DataLayout
    from licensing_server.leadership import LeaderElection
    from licensing_server.observability import LeaderMetrics
    from licensing_server.pki import CertificateAuthority
    from licensing_server.runtimes import EnclaveLauncher, EnclaveRuntime
    from licensing_server.tpm import TpmTransport

__all__ = [
    "CERTIFICATE_ISSUERS",
    "ENCLAVE_LAUNCHERS",
    "ENCLAVE_RUNTIMES",
    "LEADER_ELECTIONS",
    "TPM_TRANSPORTS",
    "ElectionFactory",
    "IssuerFactory",
    "LauncherFactory",
    "RuntimeFactory",
    "TransportFactory",
]

#: (settings, data layout) -> a runtime; the composition root starts and closes it.
RuntimeFactory = Callable[["Settings", "DataLayout"], "EnclaveRuntime"]
#: settings -> a launcher; the local runtime starts and closes it.
LauncherFactory = Callable[["Settings"], "EnclaveLauncher"]
#: (settings, the built-in CA) -> an issuer for enclave certificates.
IssuerFactory = Callable[["Settings", "CertificateAuthority"], "CertificateIssuer"]
#: settings -> how to reach the TPM.
TransportFactory = Callable[["Settings"], "TpmTransport"]
#: (settings, its gauge) -> how this backend learns whether it leads.
ElectionFactory = Callable[["Settings", "LeaderMetrics"], "LeaderElection"]


def _local_runtime(settings: Settings, layout: DataLayout) -> EnclaveRuntime:
    from licensing_server.runtimes import LocalProcessRuntime

    launcher = ENCLAVE_LAUNCHERS.resolve(settings.enclave_launcher)(settings)
    return LocalProcessRuntime(layout.enclaves_dir, launcher=launcher, ports=settings.enclave_ports)


def _kubernetes_runtime(settings: Settings, layout: DataLayout) -> EnclaveRuntime:
    # The kubernetes client is imported only by a backend configured for it.
    from licensing_server.kube import PodTokenReviewer, kube_api_for
    from licensing_server.runtimes import EnrollmentDesk
    from licensing_server.runtimes._kubernetes import KubernetesRuntime, PodTemplate

    k = settings.kubernetes
    api = kube_api_for(k)
    return KubernetesRuntime(
        api,
        EnrollmentDesk(PodTokenReviewer(api, audience=k.token_audience)),
        PodTemplate(
            namespace=k.namespace,
            image=k.enclave_image,
            service_account=k.enclave_service_account,
            port=k.enclave_port,
            token_audience=k.token_audience,
            enrollment_url=k.effective_enrollment_url,
            cpu_request=k.enclave_cpu_request,
            cpu_limit=k.enclave_cpu_limit,
            memory_request=k.enclave_memory_request,
            memory_limit=k.enclave_memory_limit,
            ingress_domain=k.ingress_domain,
            ingress_class=k.ingress_class,
        ),
    )


def _exec_launcher(settings: Settings) -> EnclaveLauncher:
    from licensing_server.runtimes import DEFAULT_COMMAND, ExecLauncher

    return ExecLauncher(settings.enclave_command or DEFAULT_COMMAND)


def _fork_server_launcher(settings: Settings) -> EnclaveLauncher:
    from licensing_server.runtimes import ForkServer

    return ForkServer.for_this_interpreter()


def _builtin_issuer(settings: Settings, ca: CertificateAuthority) -> CertificateIssuer:
    from licensing_server.issuers import BuiltinCaIssuer

    return BuiltinCaIssuer(ca)


def _cert_manager_issuer(settings: Settings, ca: CertificateAuthority) -> CertificateIssuer:
    from licensing_server.issuers import CertManagerIssuer
    from licensing_server.kube import kube_api_for

    kube = settings.kubernetes
    return CertManagerIssuer(
        kube_api_for(kube),
        namespace=kube.namespace,
        issuer_name=kube.cert_manager_issuer,
        issuer_kind=kube.cert_manager_issuer_kind,
        ca_certificates_pem=ca.ca_certificates_pem,
    )


def _swtpm_transport(settings: Settings) -> TpmTransport:
    from licensing_server.tpm import SwtpmTransport

    return SwtpmTransport.from_settings(settings)


def _device_transport(settings: Settings) -> TpmTransport:
    from licensing_server.tpm import DeviceTransport

    return DeviceTransport.from_settings(settings)


def _sole_backend(settings: Settings, metrics: LeaderMetrics) -> LeaderElection:
    from licensing_server.leadership import SoleBackend

    return SoleBackend(metrics)


def _advisory_lock(settings: Settings, metrics: LeaderMetrics) -> LeaderElection:
    from licensing_server.leadership._advisory_lock import AdvisoryLockElection

    return AdvisoryLockElection(
        settings.effective_database_url,
        retry_seconds=settings.leader_retry_seconds,
        metrics=metrics,
    )


def _kubernetes_lease(settings: Settings, metrics: LeaderMetrics) -> LeaderElection:
    from licensing_server.kube import kube_api_for
    from licensing_server.leadership._lease import LeaseElection

    k = settings.kubernetes
    return LeaseElection(
        kube_api_for(k),
        namespace=k.effective_lease_namespace,
        name=k.lease_name,
        lease_seconds=settings.leader_lease_seconds,
        metrics=metrics,
    )


ENCLAVE_RUNTIMES: Registry[RuntimeFactory] = Registry(
    "enclave runtime",
    "LICENSING_ENCLAVE_RUNTIME",
    {"local": _local_runtime, "kubernetes": _kubernetes_runtime},
)
ENCLAVE_LAUNCHERS: Registry[LauncherFactory] = Registry(
    "enclave launcher",
    "LICENSING_ENCLAVE_LAUNCHER",
    {"exec": _exec_launcher, "fork-server": _fork_server_launcher},
)
CERTIFICATE_ISSUERS: Registry[IssuerFactory] = Registry(
    "certificate issuer",
    "LICENSING_CERTIFICATE_ISSUER",
    {"builtin": _builtin_issuer, "cert-manager": _cert_manager_issuer},
)
TPM_TRANSPORTS: Registry[TransportFactory] = Registry(
    "TPM transport (TCTI)",
    "LICENSING_TPM_TCTI",
    {"device": _device_transport, "swtpm": _swtpm_transport},
)
LEADER_ELECTIONS: Registry[ElectionFactory] = Registry(
    "leader election",
    "LICENSING_LEADER_ELECTION",
    {"sole": _sole_backend, "advisory-lock": _advisory_lock, "kubernetes-lease": _kubernetes_lease},
)
