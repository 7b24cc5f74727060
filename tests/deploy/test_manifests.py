"""What every overlay renders to (``kubectl kustomize``), read as an operator would check it:
restricted containers, TLS-only probes, the backend's control API on loopback, the TPM each
overlay promises, default-deny network policies, no Secret in plaintext, and a configuration
the server itself accepts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from licensing_server.config import Settings
from tests.deploy.conftest import OVERLAYS

Obj = dict[str, Any]
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
#: Names the manifests set that Settings does not read: the password only feeds the
#: database URL.
PENDING = {"LICENSING_DATABASE_PASSWORD"}


def one(objects: list[Obj], kind: str, name: str, namespace: str | None = None) -> Obj:
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"]["name"].startswith(name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def containers(spec: Obj) -> dict[str, Obj]:
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def licensing_pod(objects: list[Obj]) -> Obj:
    spec: Obj = one(objects, "Deployment", "licensing")["spec"]["template"]["spec"]
    return spec


class _Recording(Mapping[str, str]):
    """An environment that remembers which names the settings parser asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        self.contents, self.read = values, set[str]()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self.contents[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.contents.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.contents)

    def __len__(self) -> int:
        return len(self.contents)


def container_env(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The environment the kubelet would give ``container``: envFrom ConfigMaps, then env
    with ``$(VAR)`` expanded (a Secret reference stands for a placeholder)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        value = item.get("value")
        if value is None:
            value = "placeholder" if "secretKeyRef" in item["valueFrom"] else "10.0.0.1"
        for name, known in env.items():
            value = value.replace(f"$({name})", known)
        env[item["name"]] = value
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_restricted(rendered: dict[str, list[Obj]], overlay: str) -> None:
    specs = dict(pod_specs(rendered[overlay]))
    assert set(specs) == {"licensing", "licensing-postgres"}
    for workload, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False, workload
        for name, container in containers(spec).items():
            assert container["securityContext"] == RESTRICTED, f"{workload}/{name}"
            assert "limits" in container["resources"], f"{workload}/{name}"
            assert ":" in container["image"], f"{workload}/{name}: image without a tag"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_frontend_and_backend_are_two_containers_of_one_pod_talking_over_loopback(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    pod = licensing_pod(objects)
    assert [c["name"] for c in pod["containers"]] == ["frontend", "backend"]
    frontend, backend = pod["containers"]
    assert frontend["command"] == ["licensing-frontend"]
    assert backend["command"] == ["licensing-backend"]
    for container in (frontend, backend):
        env = container_env(objects, container)
        assert env["LICENSING_BACKEND_ADDR"] == "127.0.0.1:8444"
        assert env["LICENSING_DATABASE_URL"].startswith("postgresql://licensing:placeholder@")
    # The control API is on no container port and behind no Service.
    ports = {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
    assert 8444 not in ports
    for service in (o for o in objects if o["kind"] == "Service"):
        assert all(p["port"] != 8444 for p in service["spec"]["ports"])
    # Only the backend holds Kubernetes credentials and the CA key.
    assert "kube-api-access" in {m["name"] for m in backend["volumeMounts"]}
    frontend_mounts = {m["name"] for m in frontend["volumeMounts"]}
    assert frontend_mounts.isdisjoint({"kube-api-access", "backend-private", "ca", "tpmrm0"})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_frontend_reads_its_signing_keys_from_the_mounted_secret_that_updates_in_place(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """A rotated Secret must reach running replicas: no copy at start, no subPath."""
    objects = rendered[overlay]
    pod = licensing_pod(objects)
    frontend, backend = pod["containers"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "token-signing"]
    assert volume["secret"]["secretName"] == "licensing-token-signing-key"
    (mount,) = [m for m in frontend["volumeMounts"] if m["name"] == "token-signing"]
    assert "subPath" not in mount
    assert mount["readOnly"] is True
    assert container_env(objects, frontend)["LICENSING_TOKEN_KEYS_DIR"] == mount["mountPath"]
    assert "token-signing" not in {m["name"] for m in backend["volumeMounts"]}
    for init in pod["initContainers"]:
        assert "token-signing" not in {m["name"] for m in init.get("volumeMounts", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_probes_speak_tls_through_grpc_health_probe(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    pod = licensing_pod(rendered[overlay])
    for container in pod["containers"]:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]
            assert "grpc" not in probe, "the kubelet's gRPC probe cannot do TLS"
            command = probe["exec"]["command"]
            assert command[0] == "grpc_health_probe"
            assert "-tls" in command
            assert any(a.startswith("-tls-ca-cert=") for a in command)
    backend_ready = pod["containers"][1]["readinessProbe"]["exec"]["command"]
    assert "-addr=127.0.0.1:8444" in backend_ready  # mTLS: with the frontend's client cert
    assert any(a.startswith("-tls-client-cert=") for a in backend_ready)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_ports_are_named_and_match_the_metrics_address(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    containers = licensing_pod(objects)["containers"]
    for container, (role, port) in zip(
        containers, (("FRONTEND", 9464), ("BACKEND", 9465)), strict=True
    ):
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        env = container_env(objects, container)
        assert env[f"LICENSING_{role}_METRICS_ADDR"] == f"0.0.0.0:{port}"
        assert env["LICENSING_LOG_FORMAT"] == "json"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_server_accepts_the_configuration_and_reads_every_variable(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    for container in licensing_pod(objects)["containers"]:
        env = _Recording(container_env(objects, container))
        settings = Settings.from_env(env)  # a ConfigError lists every problem
        unread = {k for k in env.contents if k.startswith("LICENSING_")} - env.read - PENDING
        assert not unread, f"{container['name']}: variables the server never reads: {unread}"
        assert settings.enclave_runtime == "kubernetes"
        assert settings.certificate_issuer == "cert-manager"
        assert settings.kubernetes.namespace == "licensing-enclaves"
        if container["name"] == "backend":
            assert settings.effective_leader_election == "kubernetes-lease"
            assert {
                "name": "POD_NAME",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            } in container["env"]


def test_dev_runs_a_software_tpm_sidecar_and_production_the_hosts_tpm(
    rendered: dict[str, list[Obj]],
) -> None:
    dev = licensing_pod(rendered["dev"])
    swtpm = containers(dev)["swtpm"]
    assert swtpm["restartPolicy"] == "Always"  # a native sidecar, up before the backend
    assert [c["name"] for c in dev["initContainers"]] == ["install-secrets", "swtpm"]
    assert not any("hostPath" in v for v in dev["volumes"])
    dev_env = container_env(rendered["dev"], dev["containers"][1])
    assert "LICENSING_TPM_TCTI" not in dev_env  # unset: the sidecar's swtpm on loopback

    production = licensing_pod(rendered["production"])
    assert "swtpm" not in containers(production)
    (device,) = [v for v in production["volumes"] if "hostPath" in v]
    assert device["hostPath"] == {"path": "/dev/tpmrm0", "type": "CharDevice"}
    backend = production["containers"][1]
    assert {"name": device["name"], "mountPath": "/dev/tpmrm0"} in backend["volumeMounts"]
    env = container_env(rendered["production"], backend)
    assert env["LICENSING_TPM_TCTI"] == "device:/dev/tpmrm0"
    # One pod per node: each backend has its own TPM.
    anti = production["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_never_rendered_in_plaintext(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    assert [o for o in rendered[overlay] if o["kind"] == "Secret"] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_passes_tls_through_to_the_frontend(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    ingress = one(objects, "Ingress", "licensing-frontend")
    assert (
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    )
    hosts = [r["host"] for r in ingress["spec"]["rules"]]
    certificate = one(objects, "Certificate", "licensing-frontend")
    assert set(hosts) <= set(certificate["spec"]["dnsNames"])
    assert "localhost" in certificate["spec"]["dnsNames"]  # what the probes dial
    config = one(objects, "ConfigMap", "licensing-config")["data"]
    assert config["LICENSING_KUBERNETES_INGRESS_CLASS"] == ingress["spec"]["ingressClassName"]
    assert set(hosts) <= set(config["LICENSING_SERVER_NAMES"].split(","))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_open_only_the_enrolment_port_to_enclaves(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    policies = [o for o in rendered[overlay] if o["kind"] == "NetworkPolicy"]
    for namespace in ("licensing", "licensing-enclaves"):
        deny = one(policies, "NetworkPolicy", "default-deny", namespace)
        assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    ingress = one(policies, "NetworkPolicy", "licensing-ingress")["spec"]["ingress"]
    from_enclaves = [
        rule
        for rule in ingress
        if any(
            peer.get("namespaceSelector", {})
            .get("matchLabels", {})
            .get("kubernetes.io/metadata.name")
            == "licensing-enclaves"
            for peer in rule["from"]
        )
    ]
    assert [[p["port"] for p in r["ports"]] for r in from_enclaves] == [[8445]]
    postgres = one(policies, "NetworkPolicy", "postgres")["spec"]["ingress"]
    assert postgres == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "licensing"}}}],
            "ports": [{"protocol": "TCP", "port": 5432}],
        }
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_backend_may_act_only_in_the_enclave_namespace_and_on_its_lease(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    cluster_roles = [o for o in objects if o["kind"] == "ClusterRole"]
    assert [r["metadata"]["name"] for r in cluster_roles] == ["licensing-backend-token-review"]
    assert cluster_roles[0]["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]
    roles = [o for o in objects if o["kind"] == "Role"]
    assert {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in roles} == {
        ("licensing-enclaves", "licensing-backend"),
        ("licensing", "licensing-backend-leader"),
    }
    assert not any("secrets" in rule["resources"] for r in roles for rule in r["rules"])
    # In its own namespace: its leader election's Lease, nothing else.
    leader = one(objects, "Role", "licensing-backend-leader")
    assert leader["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["licensing-backend-leader"],
            "verbs": ["get", "update"],
        },
    ]
    bindings = {o["metadata"]["name"]: o for o in objects if o["kind"] == "RoleBinding"}
    assert bindings["licensing-backend-leader"]["metadata"]["namespace"] == "licensing"
    assert bindings["licensing-backend-leader"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "licensing-backend", "namespace": "licensing"}
    ]
    pdb = one(objects, "PodDisruptionBudget", "licensing")
    assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "licensing"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_other_pods_frontends_reach_only_the_backends_quote_port_and_only_from_licensing_pods(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Attestation with replicas: the measuring backend answers through any frontend."""
    objects = rendered[overlay]
    pod = licensing_pod(objects)
    frontend, backend = pod["containers"][0], pod["containers"][1]
    assert {"name": "quotes", "containerPort": 8446} in backend["ports"]
    env = container_env(objects, backend)
    settings = Settings.from_env(env)
    assert settings.backend_quote_addr == "0.0.0.0:8446"
    assert settings.effective_quote_advertise_addr == "10.0.0.1:8446"  # $(POD_IP)
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in backend[
        "env"
    ]
    # The frontend knows its pod-mate backend by the same id (quoted over the loopback).
    pod_name = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert pod_name in frontend["env"]
    assert settings.backend_addr == "127.0.0.1:8444"  # the rest stays pod-loopback
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    licensing_pods = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "licensing"}}}]
    quotes = one(policies, "NetworkPolicy", "licensing-quotes")["spec"]
    assert quotes["ingress"] == [
        {"from": licensing_pods, "ports": [{"protocol": "TCP", "port": 8446}]}
    ]
    assert quotes["egress"] == [
        {"to": licensing_pods, "ports": [{"protocol": "TCP", "port": 8446}]}
    ]
    opened = [
        rule
        for policy in policies
        for rule in policy["spec"].get("ingress", [])
        if any(p["port"] == 8446 for p in rule.get("ports", []))
    ]
    assert opened == quotes["ingress"]


def test_production_runs_two_replicas_now_that_each_attests_with_its_own_tpm(
    rendered: dict[str, list[Obj]],
) -> None:
    assert one(rendered["production"], "Deployment", "licensing")["spec"]["replicas"] == 2
