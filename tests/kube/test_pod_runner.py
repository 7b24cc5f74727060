"""Pods on the kwok node run as local processes through the PodRunner (the kubelet's stand-in)."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.kube.cluster import KubeControlPlane, wait_until
from tests.kube.pod_runner import PodRunner

ECHO_SERVER = Path(__file__).with_name("echo_server.py")
EXECUTABLES = {
    "echo-server": [sys.executable, str(ECHO_SERVER)],
    "exit-with": [sys.executable, "-c", "import sys; print('bye'); sys.exit(int(sys.argv[1]))"],
}


@pytest.fixture
def runner(
    kube_control_plane: KubeControlPlane, kube_namespace: str, tmp_path: Path
) -> Iterator[PodRunner]:
    with PodRunner(
        kube_control_plane.kubeconfig, [kube_namespace], tmp_path / "pods", executables=EXECUTABLES
    ) as running:
        yield running
        print(running.logs())  # shown when the test fails


@pytest.fixture
def core(kube_control_plane: KubeControlPlane) -> Iterator[client.CoreV1Api]:
    with kube_control_plane.api_client() as api:
        yield client.CoreV1Api(api)


def test_a_pod_runs_as_a_process_reachable_at_its_pod_ip_with_env_files_and_a_bound_token(
    kube_control_plane: KubeControlPlane,
    kube_namespace: str,
    runner: PodRunner,
    core: client.CoreV1Api,
) -> None:
    kube_control_plane.create_service_account(kube_namespace, "enclave")
    core.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "greeting"}, "data": {"hello": "hi there"}}
    )
    core.create_namespaced_pod(kube_namespace, _echo_pod())

    started = runner.wait_started(kube_namespace, "echo")
    seen = _get_json(f"http://{started.pod_ip}:8080/")

    pod = core.read_namespaced_pod("echo", kube_namespace)
    env = seen["env"]
    assert env["POD_IP"] == pod.status.pod_ip
    assert env["POD_NAME"] == "echo"
    assert env["POD_UID"] == pod.metadata.uid
    assert env["GREETING"] == "hi there"
    assert env["MODE"] == "serving-echo"  # $(POD_NAME) expanded
    assert started.main is not None
    assert env["TOKEN_PATH"] == str(started.main.root / "var/run/tokens/enclave-token")
    assert "PYTEST_CURRENT_TEST" not in env  # only the container's environment
    greeting, token = (seen["files"][name] for name in seen["argv"][3:5])
    assert greeting == "hi there"
    assert Path(seen["cwd"]) == started.main.root

    with kube_control_plane.api_client() as api:
        review = (
            client.AuthenticationV1Api(api)
            .create_token_review({"spec": {"token": token, "audiences": ["licensing-enclave"]}})
            .status
        )
    assert review.authenticated
    assert review.user.username == f"system:serviceaccount:{kube_namespace}:enclave"
    assert review.user.extra["authentication.kubernetes.io/pod-name"] == ["echo"]
    assert review.user.extra["authentication.kubernetes.io/pod-uid"] == [pod.metadata.uid]


def test_a_process_that_exits_marks_its_pod_failed_and_kwok_leaves_it_so(
    kube_namespace: str, runner: PodRunner, core: client.CoreV1Api
) -> None:
    core.create_namespaced_pod(kube_namespace, _exiting_pod("crash", 3))
    core.create_namespaced_pod(kube_namespace, _exiting_pod("done", 0))

    crashed = wait_until(lambda: _finished(core, kube_namespace, "crash"), what="crash Failed")
    done = wait_until(lambda: _finished(core, kube_namespace, "done"), what="done Succeeded")

    assert crashed.status.phase == "Failed"
    terminated = crashed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert done.status.phase == "Succeeded"
    assert done.status.container_statuses[0].state.terminated.exit_code == 0
    time.sleep(2)  # kwok gets its chance to flip it back
    assert core.read_namespaced_pod("crash", kube_namespace).status.phase == "Failed"
    assert "bye" in runner.wait_started(kube_namespace, "crash").log()


def test_a_pod_whose_executable_is_unknown_fails_with_a_start_error(
    kube_namespace: str, runner: PodRunner, core: client.CoreV1Api
) -> None:
    pod = _exiting_pod("nowhere", 0)
    pod["spec"]["containers"][0]["command"] = ["no-such-program-anywhere"]
    core.create_namespaced_pod(kube_namespace, pod)

    failed = wait_until(lambda: _finished(core, kube_namespace, "nowhere"), what="StartError")

    terminated = failed.status.container_statuses[0].state.terminated
    assert failed.status.phase == "Failed"
    assert terminated.reason == "StartError"
    assert "no-such-program-anywhere" in terminated.message


def test_deleting_the_pod_stops_its_process(
    kube_control_plane: KubeControlPlane,
    kube_namespace: str,
    runner: PodRunner,
    core: client.CoreV1Api,
) -> None:
    kube_control_plane.create_service_account(kube_namespace, "enclave")
    core.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "greeting"}, "data": {"hello": "hi"}}
    )
    core.create_namespaced_pod(kube_namespace, _echo_pod())
    started = runner.wait_started(kube_namespace, "echo")
    _get_json(f"http://{started.pod_ip}:8080/")

    core.delete_namespaced_pod("echo", kube_namespace)

    assert started.exited.wait(15), "the process outlived its pod"
    assert started.stopped_by_runner


def _echo_pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "echo"},
        "spec": {
            "serviceAccountName": "enclave",
            "containers": [
                {
                    "name": "echo",
                    "image": "registry.example/echo:1",
                    "command": ["echo-server"],
                    "args": [
                        "$(POD_IP)",
                        "8080",
                        "/etc/greeting/hello",
                        "/var/run/tokens/enclave-token",
                    ],
                    "env": [
                        {"name": "POD_IP", "valueFrom": _field("status.podIP")},
                        {"name": "POD_NAME", "valueFrom": _field("metadata.name")},
                        {"name": "POD_UID", "valueFrom": _field("metadata.uid")},
                        {
                            "name": "GREETING",
                            "valueFrom": {"configMapKeyRef": {"name": "greeting", "key": "hello"}},
                        },
                        {"name": "MODE", "value": "serving-$(POD_NAME)"},
                        {"name": "TOKEN_PATH", "value": "/var/run/tokens/enclave-token"},
                    ],
                    "volumeMounts": [
                        {"name": "greeting", "mountPath": "/etc/greeting"},
                        {"name": "tokens", "mountPath": "/var/run/tokens"},
                        {"name": "scratch", "mountPath": "/tmp/scratch"},
                    ],
                }
            ],
            "volumes": [
                {"name": "greeting", "configMap": {"name": "greeting"}},
                {
                    "name": "tokens",
                    "projected": {
                        "sources": [
                            {
                                "serviceAccountToken": {
                                    "audience": "licensing-enclave",
                                    "expirationSeconds": 600,
                                    "path": "enclave-token",
                                }
                            }
                        ]
                    },
                },
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }


def _field(path: str) -> dict[str, Any]:
    return {"fieldRef": {"fieldPath": path}}


def _exiting_pod(name: str, code: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": "x", "command": ["exit-with"], "args": [str(code)]}
            ],
        },
    }


def _finished(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    pod = core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase in ("Failed", "Succeeded") else None


def _get_json(url: str) -> dict[str, Any]:
    """GET ``url`` once the process listens (kwok says Running before it has started)."""

    def fetch() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - http only
                return dict(json.load(response))
        except OSError:
            return None

    return wait_until(fetch, what=f"{url} answering", timeout=20)


def test_the_runner_keeps_following_pods_across_an_apiserver_restart(
    kube_control_plane: KubeControlPlane,
    kube_namespace: str,
    runner: PodRunner,
    core: client.CoreV1Api,
) -> None:
    core.create_namespaced_pod(kube_namespace, _exiting_pod("before", 0))
    wait_until(lambda: _finished(core, kube_namespace, "before"), what="before Succeeded")

    kube_control_plane.restart_apiserver()
    core.create_namespaced_pod(kube_namespace, _exiting_pod("after", 4))

    after = wait_until(lambda: _finished(core, kube_namespace, "after"), what="after Failed")
    assert after.status.container_statuses[0].state.terminated.exit_code == 4
