"""``PodRunner``: a test-only stand-in for the kubelet's container runtime.

kwok marks pods on its fake node Running and gives them a loopback pod IP, but it runs
nothing. The PodRunner does the part of a kubelet the licensing server depends on: when a
pod on the kwok node is Running with a pod IP, it starts the pod's first container as a local
process (no image, no chroot, no isolation), with the container's environment, its volumes
materialized under a per-pod root folder, and a bound ServiceAccount token from TokenRequest;
when the process exits it reports the container terminated and the pod Failed (Succeeded on
exit 0); when the pod is deleted it stops the process (SIGTERM, then SIGKILL).

It runs in its own threads with its own API clients, so it never blocks the event loop of the
code under test. What it does not do: restart containers (any exit ends the pod), run init or
sidecar containers, rotate tokens, enforce resources or probes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from tests.kube.cluster import NODE_NAME

__all__ = ["PodProcess", "PodRunner", "PodStartError", "expand"]

_log = logging.getLogger(__name__)
Obj = dict[str, Any]

#: Exit code reported when the process could not be started (as a runtime's StartError).
START_ERROR_EXIT_CODE = 128
#: Each watch request lasts at most this long before the next one (the apiserver ends it).
_WATCH_SECONDS = 30


class PodStartError(Exception):
    """The container could not be started: unknown executable, missing ConfigMap, ..."""


class _NotYet(PodStartError):
    """A ConfigMap or Secret the pod needs does not exist (yet)."""


@dataclass
class PodProcess:
    """One pod's process: where it lives, its log, and how it ended."""

    namespace: str
    name: str
    uid: str
    pod_ip: str
    #: The pod's root: volumes under ``root/<mountPath>``, the working directory by default.
    root: Path
    #: stdout and stderr of the process, interleaved.
    log_path: Path
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    exit_code: int | None = None
    #: Set when the runner stopped it (pod deleted, runner stopping): no status is reported.
    stopped_by_runner: bool = False
    exited: threading.Event = field(default_factory=threading.Event)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class PodRunner:
    """Runs the pods kwok schedules on ``node_name`` in ``namespaces`` as local processes.

    ``executables`` maps a container's ``command[0]`` (or, without a command, its image) to
    the argv that stands for it, e.g. ``{"licensing-enclave": [sys.executable, "-m",
    "licensing_enclave"]}``; anything else is looked up on PATH. Processes get only the
    container's environment plus ``base_env`` (PATH by default), never the test's own.
    """

    def __init__(
        self,
        kubeconfig: Path,
        namespaces: Sequence[str],
        root: Path,
        *,
        executables: Mapping[str, Sequence[str]] | None = None,
        base_env: Mapping[str, str] | None = None,
        node_name: str = NODE_NAME,
        max_grace_seconds: float = 5.0,
        missing_object_seconds: float = 30.0,
    ) -> None:
        self._kubeconfig = kubeconfig
        self._namespaces = list(namespaces)
        self._root = root
        self._executables = {k: list(v) for k, v in (executables or {}).items()}
        self._base_env = dict(base_env if base_env is not None else {"PATH": os.defpath})
        self._node_name = node_name
        self._max_grace_seconds = max_grace_seconds
        self._missing_object_seconds = missing_object_seconds
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pods: dict[str, PodProcess] = {}  # by pod uid, while the pod exists
        self._history: list[PodProcess] = []  # every pod run, for logs
        self._threads: list[threading.Thread] = []
        self._responses: set[Any] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> PodRunner:
        self._root.mkdir(parents=True, exist_ok=True)
        for namespace in self._namespaces:
            thread = threading.Thread(
                target=self._follow, args=(namespace,), name=f"pod-runner-{namespace}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop following pods and kill every process this runner started."""
        self._stopping.set()
        with self._lock:
            responses = list(self._responses)
            pods = list(self._pods.values())
        for response in responses:
            with contextlib.suppress(Exception):
                response.shutdown()
        for pod in pods:
            self._terminate(pod, grace=1.0)
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- reading --------------------------------------------------------------------------

    def processes(self) -> list[PodProcess]:
        """Every pod this runner has run (or tried to), oldest first."""
        with self._lock:
            return list(self._history)

    def wait_started(self, namespace: str, name: str, timeout: float = 30.0) -> PodProcess:
        """Wait until the pod's process has been started (kwok says Running before that)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for pod in reversed(self._history):
                    if (pod.namespace, pod.name) == (namespace, name) and pod.process:
                        return pod
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no process started for pod {namespace}/{name}")
                self._changed.wait(left)

    def logs(self) -> str:
        """Every process's log, headed by its pod, for a failing test to print."""
        return "\n".join(
            f"--- pod {p.namespace}/{p.name} (exit {p.exit_code}) argv {p.argv}\n{p.log()}"
            for p in self.processes()
        )

    # -- following pods -------------------------------------------------------------------

    def _api(self) -> client.ApiClient:
        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(self._kubeconfig), client_configuration=configuration
        )
        configuration.retries = False
        return client.ApiClient(configuration)

    def _follow(self, namespace: str) -> None:
        """List, then watch, pods on our node; relist after any break (apiserver restarts)."""
        with self._api() as api:
            core = client.CoreV1Api(api)
            selector = f"spec.nodeName={self._node_name}"
            while not self._stopping.is_set():
                try:
                    listed = _read_json(
                        core.list_namespaced_pod(
                            namespace, field_selector=selector, _preload_content=False
                        )
                    )
                    present = {p["metadata"]["uid"] for p in listed["items"]}
                    with self._lock:
                        known = list(self._pods.values())
                    for pod in known:
                        if pod.namespace == namespace and pod.uid not in present:
                            self._terminate(pod)
                    for item in listed["items"]:
                        self._on_pod("MODIFIED", item)
                    version = listed["metadata"]["resourceVersion"]
                    while not self._stopping.is_set():
                        version = self._watch_once(core, namespace, selector, version)
                except (ApiException, HTTPError, OSError, ValueError) as exc:
                    if self._stopping.is_set():
                        return
                    _log.info("pod runner: watch of %s broke (%s); relisting", namespace, exc)
                    self._stopping.wait(0.5)

    def _watch_once(
        self, core: client.CoreV1Api, namespace: str, selector: str, version: str
    ) -> str:
        response = core.list_namespaced_pod(
            namespace,
            field_selector=selector,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=_WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(5, _WATCH_SECONDS + 15),
        )
        with self._lock:
            self._responses.add(response)
        try:
            for line in response:
                if self._stopping.is_set():
                    break
                event = json.loads(line)
                if event["type"] == "ERROR":  # typically 410 Gone: relist
                    raise ValueError(f"watch error: {event['object'].get('message')}")
                version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self._on_pod(event["type"], event["object"])
        finally:
            with self._lock:
                self._responses.discard(response)
            response.release_conn()
        return version

    def _on_pod(self, kind: str, pod: Obj) -> None:
        meta, status = pod["metadata"], pod.get("status", {})
        uid = meta["uid"]
        with self._lock:
            known = self._pods.get(uid)
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            if known:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                self._terminate(known, grace=min(float(grace), self._max_grace_seconds))
            return
        if known or status.get("phase") != "Running" or not status.get("podIP"):
            return
        self._start(pod)

    # -- starting -------------------------------------------------------------------------

    def _start(self, pod: Obj) -> None:
        """Register the pod and run it in its own thread (the watch must not wait on it)."""
        meta = pod["metadata"]
        root = self._root / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        root.mkdir(parents=True, exist_ok=True)
        running = PodProcess(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            pod_ip=pod["status"]["podIP"],
            root=root,
            log_path=root / "container.log",
            argv=[],
            env={},
            started_at=_now(),
        )
        with self._lock:
            self._pods[running.uid] = running
            self._history.append(running)
        threading.Thread(
            target=self._run, args=(running, pod), name=f"pod-{running.name}", daemon=True
        ).start()

    def _run(self, running: PodProcess, pod: Obj) -> None:
        """Prepare, start, wait for the process, report how it ended."""
        with self._api() as api:
            core = client.CoreV1Api(api)
            try:
                self._prepare_patiently(core, pod, running)
                with running.log_path.open("ab") as log:
                    running.process = subprocess.Popen(
                        running.argv,
                        env=running.env,
                        cwd=_working_dir(pod, running),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group, killed as one
                    )
            except (PodStartError, OSError, ApiException, HTTPError) as exc:
                with running.log_path.open("a") as log:
                    log.write(f"pod runner: could not start the container: {exc}\n")
                running.exit_code = START_ERROR_EXIT_CODE
                running.exited.set()
                if not running.stopped_by_runner:
                    self._report_exit(core, running, pod, reason="StartError", message=str(exc))
                return
            if running.stopped_by_runner:  # deleted (or stop()) while it was starting
                self._terminate(running, grace=1.0)
            with self._changed:
                self._changed.notify_all()
            running.exit_code = running.process.wait()
            running.exited.set()
            with self._changed:
                self._changed.notify_all()
            if not running.stopped_by_runner:
                self._report_exit(core, running, pod)

    def _prepare_patiently(self, core: client.CoreV1Api, pod: Obj, running: PodProcess) -> None:
        """As a kubelet, wait a while for ConfigMaps and Secrets that do not exist yet."""
        deadline = time.monotonic() + self._missing_object_seconds
        while True:
            try:
                self._prepare(core, pod, running)
                return
            except _NotYet:
                if time.monotonic() > deadline or running.stopped_by_runner:
                    raise
                self._stopping.wait(0.5)

    def _prepare(self, core: client.CoreV1Api, pod: Obj, running: PodProcess) -> None:
        """Volumes, environment and argv of the pod's first container."""
        container = pod["spec"]["containers"][0]
        mounts = self._mount_volumes(core, pod, container, running.root)
        env = dict(self._base_env)
        env.update(HOSTNAME=running.name, HOME=str(running.root))
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            for key, value in self._env_from(core, running.namespace, source).items():
                env[prefix + key] = value
        for var in container.get("env", []):
            if "value" in var:
                value = expand(var["value"], env)
            elif "valueFrom" in var:
                value = self._value_from(core, pod, var["valueFrom"])
            else:
                value = ""
            env[var["name"]] = value
        command = [expand(part, env) for part in container.get("command", [])]
        args = [expand(part, env) for part in container.get("args", [])]
        name = command[0] if command else container.get("image", "")
        rest = command[1:] + args if command else args
        if name in self._executables:
            head = self._executables[name]
        elif command and (found := shutil.which(name, path=env.get("PATH"))):
            head = [found]
        else:
            raise PodStartError(f"no executable for {name!r}: not in the mapping nor on PATH")
        running.argv = head + [rewrite_path(arg, mounts) for arg in rest]
        running.env = {k: rewrite_path(v, mounts) for k, v in env.items()}

    def _mount_volumes(
        self, core: client.CoreV1Api, pod: Obj, container: Obj, root: Path
    ) -> dict[str, Path]:
        """Write each mounted volume under root/volumes and link it at root/<mountPath>."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            if volume is None:
                raise PodStartError(f"volumeMount {mount['name']!r} names no volume")
            source = root / "volumes" / mount["name"]
            if not source.exists():
                # Filled aside, then renamed: a ConfigMap that does not exist yet leaves
                # nothing behind that a retry would take for a filled volume.
                filling = source.with_name(f".{mount['name']}.filling")
                shutil.rmtree(filling, ignore_errors=True)
                filling.mkdir(parents=True)
                self._fill_volume(core, pod, volume, filling)
                filling.rename(source)
            if mount.get("subPath"):
                source = source / mount["subPath"]
            target = root / mount["mountPath"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(source)
            mounts[mount["mountPath"].rstrip("/") or "/"] = target
        return mounts

    def _fill_volume(self, core: client.CoreV1Api, pod: Obj, volume: Obj, into: Path) -> None:
        namespace = pod["metadata"]["namespace"]
        mode = 0o644
        if "emptyDir" in volume:
            return
        if "configMap" in volume:
            spec = volume["configMap"]
            mode = spec.get("defaultMode", mode)
            _write_items(into, self._config_map(core, namespace, spec), spec, mode)
        elif "secret" in volume:
            spec = volume["secret"]
            mode = spec.get("defaultMode", mode)
            _write_items(into, self._secret(core, namespace, spec), spec, mode)
        elif "downwardAPI" in volume:
            for item in volume["downwardAPI"].get("items", []):
                _write(into / item["path"], self._field(pod, item["fieldRef"]).encode(), mode)
        elif "projected" in volume:
            mode = volume["projected"].get("defaultMode", mode)
            for source in volume["projected"].get("sources", []):
                if "serviceAccountToken" in source:
                    spec = source["serviceAccountToken"]
                    token = self._token(core, pod, spec)
                    _write(into / spec["path"], token.encode(), mode)
                elif "configMap" in source:
                    spec = source["configMap"]
                    _write_items(into, self._config_map(core, namespace, spec), spec, mode)
                elif "secret" in source:
                    spec = source["secret"]
                    _write_items(into, self._secret(core, namespace, spec), spec, mode)
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"].get("items", []):
                        value = self._field(pod, item["fieldRef"]).encode()
                        _write(into / item["path"], value, mode)
                else:
                    raise PodStartError(f"unsupported projected source {sorted(source)}")
        else:
            kinds = sorted(set(volume) - {"name"})
            raise PodStartError(f"unsupported volume {volume['name']!r}: {kinds}")

    def _token(self, core: client.CoreV1Api, pod: Obj, spec: Obj) -> str:
        """A TokenRequest bound to this pod, as the kubelet asks for a projected token."""
        meta = pod["metadata"]
        body: Obj = {
            "spec": {
                "expirationSeconds": spec.get("expirationSeconds", 3600),
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            }
        }
        if spec.get("audience"):
            body["spec"]["audiences"] = [spec["audience"]]
        account = pod["spec"].get("serviceAccountName") or "default"
        made = core.create_namespaced_service_account_token(account, meta["namespace"], body)
        return str(made.status.token)

    def _config_map(self, core: client.CoreV1Api, namespace: str, ref: Obj) -> dict[str, bytes]:
        try:
            got = _read_json(
                core.read_namespaced_config_map(ref["name"], namespace, _preload_content=False)
            )
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                return {}
            if exc.status == 404:
                raise _NotYet(f"ConfigMap {namespace}/{ref['name']} not found") from exc
            raise PodStartError(f"ConfigMap {namespace}/{ref['name']}: {exc.reason}") from exc
        data = {k: v.encode() for k, v in (got.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (got.get("binaryData") or {}).items()})
        return data

    def _secret(self, core: client.CoreV1Api, namespace: str, ref: Obj) -> dict[str, bytes]:
        name = ref.get("secretName") or ref["name"]
        try:
            got = _read_json(core.read_namespaced_secret(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                return {}
            if exc.status == 404:
                raise _NotYet(f"Secret {namespace}/{name} not found") from exc
            raise PodStartError(f"Secret {namespace}/{name}: {exc.reason}") from exc
        return {k: base64.b64decode(v) for k, v in (got.get("data") or {}).items()}

    def _env_from(self, core: client.CoreV1Api, namespace: str, source: Obj) -> dict[str, str]:
        if "configMapRef" in source:
            data = self._config_map(core, namespace, source["configMapRef"])
        elif "secretRef" in source:
            ref = source["secretRef"]
            data = self._secret(core, namespace, {"secretName": ref["name"], **ref})
        else:
            raise PodStartError(f"unsupported envFrom {sorted(source)}")
        return {k: v.decode() for k, v in data.items()}

    def _value_from(self, core: client.CoreV1Api, pod: Obj, source: Obj) -> str:
        namespace = pod["metadata"]["namespace"]
        if "fieldRef" in source:
            return self._field(pod, source["fieldRef"])
        for kind, read in (("configMapKeyRef", self._config_map), ("secretKeyRef", None)):
            if kind in source:
                ref = source[kind]
                data = (
                    read(core, namespace, ref)
                    if read
                    else self._secret(core, namespace, {"secretName": ref["name"], **ref})
                )
                if ref["key"] in data:
                    return data[ref["key"]].decode()
                if ref.get("optional"):
                    return ""
                raise PodStartError(f"{kind} {ref['name']}: no key {ref['key']!r}")
        raise PodStartError(f"unsupported valueFrom {sorted(source)}")

    @staticmethod
    def _field(pod: Obj, ref: Obj) -> str:
        path = ref["fieldPath"]
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": status.get("podIP", ""),
            "status.hostIP": status.get("hostIP", ""),
        }
        if path in simple:
            return str(simple[path])
        if match := re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path):
            return str((meta.get(match[1]) or {}).get(match[2], ""))
        raise PodStartError(f"unsupported fieldRef {path!r}")

    # -- ending ---------------------------------------------------------------------------

    def _report_exit(
        self,
        core: client.CoreV1Api,
        running: PodProcess,
        pod: Obj,
        *,
        reason: str = "",
        message: str = "",
    ) -> None:
        """Patch the pod's status as a kubelet does when the container ends.

        kwok leaves a Failed or Succeeded pod alone: its pod-ready stage selects Pending pods
        and pod-complete only Running pods owned by a Job.
        """
        code = running.exit_code or 0
        now = _now()
        terminated = {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "startedAt": running.started_at,
            "finishedAt": now,
        }
        if message:
            terminated["message"] = message[:1024]
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"terminated": terminated if i == 0 else {**terminated, "exitCode": 0}},
            }
            for i, c in enumerate(pod["spec"]["containers"])
        ]
        phase = "Succeeded" if code == 0 else "Failed"
        body = {
            "status": {
                "phase": phase,
                "conditions": [
                    {
                        "type": kind,
                        "status": "False",
                        "reason": "PodCompleted",
                        "lastTransitionTime": now,
                    }
                    for kind in ("Ready", "ContainersReady")
                ],
                "containerStatuses": statuses,
            }
        }
        while not self._stopping.is_set():
            try:
                core.patch_namespaced_pod_status(running.name, running.namespace, body)
                return
            except ApiException as exc:
                if exc.status in (404, 422):  # gone, or already terminal (deleted meanwhile)
                    return
                _log.info("pod runner: status of %s not patched (%s)", running.name, exc.status)
            except (HTTPError, OSError) as exc:
                _log.info("pod runner: status of %s not patched (%s)", running.name, exc)
            self._stopping.wait(0.5)

    def _terminate(self, running: PodProcess, grace: float | None = None) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; does not block."""
        process = running.process
        running.stopped_by_runner = True
        with self._lock:
            self._pods.pop(running.uid, None)
        if process is None or process.poll() is not None:
            return
        seconds = self._max_grace_seconds if grace is None else grace

        def stop() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

        if self._stopping.is_set():
            stop()
        else:
            threading.Thread(target=stop, name=f"stop-{running.name}", daemon=True).start()


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names replaced, others kept, ``$$`` -> ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            following = text[i + 1]
            if following == "$":
                out.append("$")
                i += 2
                continue
            if following == "(" and (end := text.find(")", i + 2)) != -1:
                name = text[i + 2 : end]
                out.append(env.get(name, text[i : end + 1]))
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def rewrite_path(value: str, mounts: Mapping[str, Path]) -> str:
    """Point a value at a mountPath (or ``--flag=<mountPath>...``) to the pod's root.

    Processes are not chrooted, so ``/var/run/secrets/tokens/token`` becomes
    ``<root>/var/run/secrets/tokens/token``. The longest matching mountPath wins.
    """
    head, sep, tail = value.partition("=") if value.startswith("-") else ("", "", value)
    for mount_path in sorted(mounts, key=len, reverse=True):
        if tail == mount_path or tail.startswith(mount_path.rstrip("/") + "/"):
            return head + sep + str(mounts[mount_path]) + tail[len(mount_path) :]
    return value


def _working_dir(pod: Obj, running: PodProcess) -> Path:
    wanted: str | None = pod["spec"]["containers"][0].get("workingDir")
    if not wanted:
        return running.root
    path = running.root / wanted.lstrip("/")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_items(into: Path, data: Mapping[str, bytes], spec: Obj, mode: int) -> None:
    """Each key as a file, or only ``items`` (key -> path) when given."""
    items = spec.get("items")
    if items is None:
        for key, value in data.items():
            _write(into / key, value, mode)
        return
    for item in items:
        if item["key"] in data:
            _write(into / item["path"], data[item["key"]], item.get("mode", mode))
        elif not spec.get("optional"):
            raise PodStartError(f"{spec.get('name')}: no key {item['key']!r}")


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _read_json(response: Any) -> Obj:
    try:
        return dict(json.loads(response.data))
    finally:
        response.release_conn()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
