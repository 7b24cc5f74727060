"""``PodRunner``: a test-only stand-in for the kubelet and its container runtime.

kwok marks pods on its fake node Running and gives them a loopback pod IP, but it runs
nothing. The PodRunner does the part of a kubelet the licensing server depends on: when a
pod on the kwok node is Running with a pod IP, it runs the pod's containers as local
processes (no image, no chroot, no isolation), the way a kubelet orders them:

* ``initContainers`` one after the other, each to a zero exit; a native sidecar (an init
  container with ``restartPolicy: Always``, as the dev overlay's swtpm) is started instead and
  left running once its ``startupProbe`` (exec) passes;
* then every container of ``containers``; the first one to exit ends the pod: the others and
  the sidecars are stopped and the pod reported Failed (Succeeded when it exited 0).

Each container gets its own ``command``/``args`` and environment (``value`` with ``$(VAR)``
expansion, ``envFrom``, ``valueFrom`` secretKeyRef/configMapKeyRef/fieldRef) plus what a
kubelet always adds: ``HOSTNAME`` and ``KUBERNETES_SERVICE_HOST``/``_PORT`` (the real
apiserver).

Images are not built or pulled (there is no container engine): an image stands for a list of
local folders put first on the container's PATH (``images``; e.g. ``licensing-server`` ->
this repository's ``.venv/bin``, where ``licensing-frontend``, ``licensing-backend`` and
``python`` are, and the swtpm and grpc_health_probe binaries of the machine), and the
container's own ``command[0]`` is looked up there. ``executables`` maps a ``command[0]`` to an
argv directly instead.

Volumes are materialised under the pod's root folder: ``root/volumes/<volume>`` holds each
volume once (emptyDir, Secret, ConfigMap, downwardAPI, projected with a TokenRequest-bound
ServiceAccount token for the manifest's audience), shared by the containers that mount it as in
a pod. Processes are not chrooted, so each container has its own folder
``root/containers/<container>`` in which every ``mountPath`` is a symlink to its volume, and
**every occurrence of a mountPath in the container's env values and argv (shell scripts
included) is rewritten** to that folder: ``/var/lib/licensing/ca.pem`` becomes
``<root>/containers/backend/var/lib/licensing/ca.pem``. Two paths no variable names are given
as a kubelet-equivalent: a mount at ``/tmp`` also sets ``TMPDIR``, and a mount at the
well-known ServiceAccount path (which client libraries read at a fixed absolute path) gets a
kubeconfig next to it naming its token file and CA, and ``KUBECONFIG`` pointing at it.

Networking: every pod shares the machine's network. With ``pod_local_addresses`` (pods
whose manifests only ever name their own addresses, as the deployed overlays do) the pod's
own addresses are mapped to its pod IP (a loopback address kwok gives it): each
``0.0.0.0:<port>`` and ``127.0.0.1:<port>`` in an env value, argument or probe command
becomes ``<podIP>:<port>``, so two pods listening on the same port (the frontend's 8443, an
enclave's 8443) do not collide. Without it (the default) addresses are left alone: a
backend running on the machine itself tells its enclave pods to dial 127.0.0.1. What a
program binds or dials on loopback by itself, with no address in the
manifest, stays on the machine's loopback (the dev overlay's swtpm and the backend's default
TCTI, 127.0.0.1:2321): such a pod runs once per machine. Cluster DNS: with ``resolv_conf``
(``tests.kube.cluster_dns.ClusterDns.resolv_conf``), each container runs in a mount
namespace of its own (``unshare --mount``, root only) where ``/etc/resolv.conf`` is the pod's,
as a kubelet writes it. kube-proxy: there is none, so ``services`` maps a Service address
whose port differs from its pod's (``"<name>.<namespace>.svc:<port>"`` -> ``"host:port"``,
replaced in values; e.g. the StatefulSet's PostgreSQL, whose pod no one runs, by a test's
own server).

It runs in its own threads with its own API clients, so it never blocks the event loop of the
code under test. What it does not do: restart containers (any exit ends the pod), rotate
tokens or update Secret volumes, enforce resources, run liveness/readiness probes by itself
(``probe`` runs one on demand).
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from tests.kube.cluster import NODE_NAME

__all__ = [
    "ContainerProcess",
    "PodProcess",
    "PodRunner",
    "PodStartError",
    "expand",
    "rewrite_paths",
]

_log = logging.getLogger(__name__)
Obj = dict[str, Any]

#: Exit code reported when the process could not be started (as a runtime's StartError).
START_ERROR_EXIT_CODE = 128
#: Each watch request lasts at most this long before the next one (the apiserver ends it).
_WATCH_SECONDS = 30
#: Where client libraries look for the pod's ServiceAccount credentials.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: A wildcard or loopback ``host:port`` in a value: the pod's own address.
_POD_LOCAL_ADDRESS = re.compile(r"(?<![\w.])(?:0\.0\.0\.0|127\.0\.0\.1)(?=:\d)")


class PodStartError(Exception):
    """The container could not be started: unknown executable, missing ConfigMap, ..."""


class _NotYet(PodStartError):
    """A ConfigMap or Secret the pod needs does not exist (yet)."""


class _Unavailable(PodStartError):
    """The apiserver answered 429 or 5xx (it is restarting or overloaded): try again."""


def _transient(exc: ApiException) -> bool:
    return exc.status is not None and (exc.status == 429 or exc.status >= 500)


@dataclass
class ContainerProcess:
    """One container's process: its spec, its folder, its log, and how it ended."""

    name: str
    #: "init", "sidecar" (an init container with restartPolicy Always) or "container".
    kind: str
    spec: Obj
    #: The container's view: each mountPath as ``root/<mountPath>``; its working directory.
    root: Path
    log_path: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: mountPath -> where it is under ``root`` (what argv and env were rewritten with).
    mounts: dict[str, Path] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    exit_code: int | None = None
    reason: str = ""
    message: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class PodProcess:
    """One pod's processes: where they live, their logs, and how the pod ended."""

    namespace: str
    name: str
    uid: str
    pod_ip: str
    #: The pod's folder: volumes under ``root/volumes``, containers under ``root/containers``.
    root: Path
    #: Every container by name, in the order they were started (init containers first).
    containers: dict[str, ContainerProcess] = field(default_factory=dict)
    started_at: str = ""
    #: Set once every regular container has been started.
    started: bool = False
    #: The exit code of the container that ended the pod.
    exit_code: int | None = None
    #: Set when the runner stopped it (pod deleted, runner stopping): no status is reported.
    stopped_by_runner: bool = False
    exited: threading.Event = field(default_factory=threading.Event)
    #: The pod's API object as it was when the runner started it.
    manifest: Obj = field(default_factory=dict)

    @property
    def main(self) -> ContainerProcess | None:
        """The first regular container (the only one of an enclave pod)."""
        return next((c for c in self.containers.values() if c.kind == "container"), None)

    # The first regular container's, for pods of one container.
    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.main.process if self.main else None

    @property
    def argv(self) -> list[str]:
        return self.main.argv if self.main else []

    @property
    def env(self) -> dict[str, str]:
        return self.main.env if self.main else {}

    @property
    def log_path(self) -> Path:
        return self.main.log_path if self.main else self.root / "container.log"

    def container(self, name: str) -> ContainerProcess:
        return self.containers[name]

    def log(self) -> str:
        """Every container's log, headed by its name."""
        return "\n".join(
            f"--- container {c.name} ({c.kind}, exit {c.exit_code}) argv {c.argv}\n{c.log()}"
            for c in self.containers.values()
        )

    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [c.process for c in self.containers.values() if c.process is not None]


class PodRunner:
    """Runs the pods kwok schedules on ``node_name`` in ``namespaces`` as local processes.

    ``executables`` maps a container's ``command[0]`` (or, without a command, its image) to
    the argv that stands for it, e.g. ``{"licensing-enclave": [sys.executable, "-m",
    "licensing_enclave"]}``. ``images`` maps an image's name (without tag or digest) to the
    folders put first on PATH for its containers, where ``command[0]`` is then looked up.
    ``services`` maps ``"<service>.<namespace>.svc:<port>"`` to the ``"host:port"`` that
    stands for it; ``pod_local_addresses`` maps loopback and wildcard addresses to the pod
    IP (see the module's docstring); ``resolv_conf`` gives the pod's ``/etc/resolv.conf``
    for a namespace (cluster DNS). Processes get only the container's environment plus
    ``base_env`` (PATH by default), never the test's own.
    """

    def __init__(
        self,
        kubeconfig: Path,
        namespaces: Sequence[str],
        root: Path,
        *,
        executables: Mapping[str, Sequence[str]] | None = None,
        images: Mapping[str, Sequence[Path | str]] | None = None,
        services: Mapping[str, str] | None = None,
        pod_local_addresses: bool = False,
        resolv_conf: Callable[[str], str] | None = None,
        base_env: Mapping[str, str] | None = None,
        node_name: str = NODE_NAME,
        max_grace_seconds: float = 5.0,
        missing_object_seconds: float = 30.0,
    ) -> None:
        self._kubeconfig = kubeconfig
        self._namespaces = list(namespaces)
        self._root = root
        self._executables = {k: list(v) for k, v in (executables or {}).items()}
        self._images = {k: [str(p) for p in v] for k, v in (images or {}).items()}
        self._services = dict(services or {})
        self._pod_local_addresses = pod_local_addresses
        self._resolv_conf = resolv_conf
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
        self._apiserver = self._server_of(kubeconfig)

    @staticmethod
    def _server_of(kubeconfig: Path) -> tuple[str, str]:
        """The apiserver's host and port, as the kubelet gives them to every pod."""
        loaded = yaml.safe_load(kubeconfig.read_text())
        url = loaded["clusters"][0]["cluster"]["server"].removeprefix("https://")
        host, _, port = url.partition(":")
        return host, port or "443"

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
        """Wait until the pod's containers have been started (kwok says Running before)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for pod in reversed(self._history):
                    if (pod.namespace, pod.name) == (namespace, name) and pod.started:
                        return pod
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no process started for pod {namespace}/{name}")
                self._changed.wait(left)

    def wait_pod(self, namespace: str, prefix: str, timeout: float = 30.0) -> PodProcess:
        """``wait_started`` for the first pod whose name starts with ``prefix`` (a
        Deployment's pod, whose name the ReplicaSet makes up)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for pod in self._history:
                    if pod.namespace == namespace and pod.name.startswith(prefix) and pod.started:
                        return pod
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no pod {namespace}/{prefix}* started")
                self._changed.wait(left)

    def logs(self) -> str:
        """Every process's log, headed by its pod, for a failing test to print."""
        return "\n".join(
            f"=== pod {p.namespace}/{p.name} (exit {p.exit_code})\n{p.log()}"
            for p in self.processes()
        )

    def probe(
        self, pod: PodProcess, container: str, kind: str = "readinessProbe", timeout: float = 10
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the container's exec probe once, as the kubelet would, in its environment."""
        running = pod.containers[container]
        spec = running.spec.get(kind)
        if not spec or "exec" not in spec:
            raise PodStartError(f"{container} has no exec {kind}")
        argv = self._argv(spec["exec"]["command"], [], running, pod.pod_ip)
        return subprocess.run(
            argv,
            env=running.env,
            cwd=running.root,
            capture_output=True,
            timeout=float(spec.get("timeoutSeconds", timeout)),
            check=False,
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
            started_at=_now(),
            manifest=pod,
        )
        with self._lock:
            self._pods[running.uid] = running
            self._history.append(running)
        threading.Thread(
            target=self._run, args=(running, pod), name=f"pod-{running.name}", daemon=True
        ).start()

    def _run(self, running: PodProcess, pod: Obj) -> None:
        """Init containers and sidecars in order, then the containers; report how it ended."""
        with self._api() as api:
            core = client.CoreV1Api(api)
            try:
                for spec in pod["spec"].get("initContainers") or []:
                    sidecar = spec.get("restartPolicy") == "Always"
                    kind = "sidecar" if sidecar else "init"
                    container = self._launch(core, pod, running, spec, kind)
                    if sidecar:
                        self._wait_startup(running, container)
                    elif (code := _wait(container)) != 0:
                        raise _ContainerEnded(container, code)
                    if running.stopped_by_runner:
                        break
                else:
                    for spec in pod["spec"]["containers"]:
                        self._launch(core, pod, running, spec, "container")
                        if running.stopped_by_runner:
                            break
            except _ContainerEnded as ended:
                self._end(core, running, pod, ended.container, ended.code, "Error")
                return
            except (PodStartError, OSError, ApiException, HTTPError) as exc:
                failed = list(running.containers.values())[-1]
                with failed.log_path.open("a") as log:
                    log.write(f"pod runner: could not start the container: {exc}\n")
                failed.message = str(exc)
                self._end(core, running, pod, failed, START_ERROR_EXIT_CODE, "StartError")
                return
            if running.stopped_by_runner:  # deleted (or stop()) while it was starting
                self._kill(running, grace=1.0)
                running.exited.set()
                return
            with self._changed:
                running.started = True
                self._changed.notify_all()
            ending, code = self._first_exit(running)
            self._end(core, running, pod, ending, code, "")

    def _launch(
        self, core: client.CoreV1Api, pod: Obj, running: PodProcess, spec: Obj, kind: str
    ) -> ContainerProcess:
        name = spec["name"]
        container = ContainerProcess(
            name=name,
            kind=kind,
            spec=spec,
            root=running.root / "containers" / name,
            log_path=running.root / "logs" / f"{name}.log",
            started_at=_now(),
        )
        container.root.mkdir(parents=True, exist_ok=True)
        container.log_path.parent.mkdir(parents=True, exist_ok=True)
        running.containers[name] = container
        self._prepare_patiently(core, pod, running, container)
        argv = container.argv
        if self._resolv_conf is not None:
            argv = _with_resolv_conf(running, self._resolv_conf(running.namespace), argv)
        with container.log_path.open("ab") as log:
            container.process = subprocess.Popen(
                argv,
                env=container.env,
                cwd=_working_dir(container),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        return container

    def _wait_startup(self, running: PodProcess, container: ContainerProcess) -> None:
        """A native sidecar: the next container starts once its startupProbe passes."""
        spec = container.spec.get("startupProbe")
        if not spec or "exec" not in spec:
            return
        period = min(float(spec.get("periodSeconds", 10)), 1.0)
        deadline = time.monotonic() + float(spec.get("periodSeconds", 10)) * float(
            spec.get("failureThreshold", 3)
        )
        while not running.stopped_by_runner:
            assert container.process is not None
            if (code := container.process.poll()) is not None:
                container.exit_code = code
                raise _ContainerEnded(container, code)
            if self.probe(running, container.name, "startupProbe").returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PodStartError(f"the startup probe of {container.name} never passed")
            self._stopping.wait(period)

    def _first_exit(self, running: PodProcess) -> tuple[ContainerProcess, int]:
        """The first regular container to exit (or, once stopped, any) and its exit code."""
        regular = [c for c in running.containers.values() if c.kind == "container"]
        while True:
            for container in regular:
                assert container.process is not None
                if (code := container.process.poll()) is not None:
                    container.exit_code = code
                    return container, code
            time.sleep(0.1)

    def _end(
        self,
        core: client.CoreV1Api,
        running: PodProcess,
        pod: Obj,
        ending: ContainerProcess,
        code: int,
        reason: str,
    ) -> None:
        """One container ended the pod: stop the others, then report (unless deleted)."""
        ending.exit_code, ending.reason = code, reason
        running.exit_code = code
        self._kill(running, grace=self._max_grace_seconds)
        running.exited.set()
        with self._changed:
            self._changed.notify_all()
        if not running.stopped_by_runner:
            self._report_exit(core, running, pod)

    def _prepare_patiently(
        self, core: client.CoreV1Api, pod: Obj, running: PodProcess, container: ContainerProcess
    ) -> None:
        """As a kubelet, wait a while for ConfigMaps and Secrets that do not exist yet, and
        for an apiserver that is restarting (503, refused connections): a kubelet retries
        volume mounts rather than failing the pod."""
        deadline = time.monotonic() + self._missing_object_seconds
        while True:
            try:
                self._prepare(core, pod, running, container)
                return
            except (_NotYet, _Unavailable, HTTPError):
                if time.monotonic() > deadline or running.stopped_by_runner:
                    raise
                self._stopping.wait(0.5)

    def _prepare(
        self, core: client.CoreV1Api, pod: Obj, running: PodProcess, container: ContainerProcess
    ) -> None:
        """Volumes, environment and argv of one container."""
        spec = container.spec
        container.mounts = self._mount_volumes(core, pod, spec, running.root, container.root)
        declared: dict[str, str] = {}  # what the manifest says, before any rewriting
        for source in spec.get("envFrom", []):
            prefix = source.get("prefix", "")
            for key, value in self._env_from(core, running.namespace, source).items():
                declared[prefix + key] = value
        for var in spec.get("env", []):
            if "value" in var:
                value = expand(var["value"], declared)
            elif "valueFrom" in var:
                value = self._value_from(core, pod, var["valueFrom"])
            else:
                value = ""
            declared[var["name"]] = value
        env = dict(self._base_env)
        if folders := self._images.get(_image_name(spec.get("image", ""))):
            env["PATH"] = os.pathsep.join([*folders, env.get("PATH", os.defpath)])
        host, port = self._apiserver
        env.update(
            HOSTNAME=running.name,
            HOME=str(container.root),
            KUBERNETES_SERVICE_HOST=host,
            KUBERNETES_SERVICE_PORT=port,
        )
        if "/tmp" in container.mounts:
            env["TMPDIR"] = str(container.mounts["/tmp"])
        if SERVICE_ACCOUNT_DIR in container.mounts:
            env["KUBECONFIG"] = str(
                _service_account_kubeconfig(
                    container.root / ".kubelet", container.mounts[SERVICE_ACCOUNT_DIR], host, port
                )
            )
        env.update({k: self._rewrite(v, container, running.pod_ip) for k, v in declared.items()})
        container.env = env
        expanded = {**env, **declared}  # $(VAR) in command and args: the manifest's values
        container.argv = self._argv(
            spec.get("command", []), spec.get("args", []), container, running.pod_ip, expanded
        )

    def _argv(
        self,
        command: Sequence[str],
        args: Sequence[str],
        container: ContainerProcess,
        pod_ip: str,
        env: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The local argv for a container's command and args (or a probe's command)."""
        values = env if env is not None else container.env
        command = [expand(part, values) for part in command]
        args = [expand(part, values) for part in args]
        name = command[0] if command else container.spec.get("image", "")
        rest = command[1:] + args if command else args
        if name in self._executables:
            head = self._executables[name]
        elif command and (found := shutil.which(name, path=container.env.get("PATH"))):
            head = [found]
        else:
            raise PodStartError(f"no executable for {name!r}: not in the mapping nor on PATH")
        return head + [self._rewrite(arg, container, pod_ip) for arg in rest]

    def _rewrite(self, value: str, container: ContainerProcess, pod_ip: str) -> str:
        """A manifest's value as this process needs it: the pod's own addresses, the mapped
        Service addresses, then mountPaths (see the module's docstring)."""
        if self._pod_local_addresses:
            value = _POD_LOCAL_ADDRESS.sub(pod_ip, value)
        for service, address in self._services.items():
            value = value.replace(service, address)
        return rewrite_paths(value, container.mounts)

    def _mount_volumes(
        self, core: client.CoreV1Api, pod: Obj, container: Obj, pod_root: Path, root: Path
    ) -> dict[str, Path]:
        """Write each mounted volume once under pod_root/volumes; link it at root/<mountPath>."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            if volume is None:
                raise PodStartError(f"volumeMount {mount['name']!r} names no volume")
            source = pod_root / "volumes" / mount["name"]
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
            # A nested mount (/var/lib/licensing/backend in /var/lib/licensing) lands inside
            # the outer volume, as a kubelet's mount point does.
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_symlink() and not target.exists():
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
        try:
            made = core.create_namespaced_service_account_token(account, meta["namespace"], body)
        except ApiException as exc:
            if _transient(exc):
                raise _Unavailable(f"TokenRequest for {account}: {exc.reason}") from exc
            raise
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
            if _transient(exc):
                raise _Unavailable(f"ConfigMap {namespace}/{ref['name']}: {exc.reason}") from exc
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
            if _transient(exc):
                raise _Unavailable(f"Secret {namespace}/{name}: {exc.reason}") from exc
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

    def _report_exit(self, core: client.CoreV1Api, running: PodProcess, pod: Obj) -> None:
        """Patch the pod's status as a kubelet does when the pod ends.

        kwok leaves a Failed or Succeeded pod alone: its pod-ready stage selects Pending pods
        and pod-complete only Running pods owned by a Job.
        """
        now = _now()

        def status(spec: Obj) -> Obj:
            ran = running.containers.get(spec["name"])
            state: Obj
            if ran is None:
                state = {"waiting": {"reason": "PodInitializing"}}
            else:
                code = ran.exit_code if ran.exit_code is not None else 0
                code = 128 - code if code < 0 else code  # killed by a signal
                state = {
                    "terminated": {
                        "exitCode": code,
                        "reason": ran.reason or ("Completed" if code == 0 else "Error"),
                        "startedAt": ran.started_at,
                        "finishedAt": now,
                        **({"message": ran.message[:1024]} if ran.message else {}),
                    }
                }
            return {
                "name": spec["name"],
                "image": spec.get("image", ""),
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": state,
            }

        phase = "Succeeded" if running.exit_code == 0 else "Failed"
        body: Obj = {
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
                "containerStatuses": [status(c) for c in pod["spec"]["containers"]],
            }
        }
        if init := pod["spec"].get("initContainers"):
            body["status"]["initContainerStatuses"] = [status(c) for c in init]
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
        """The pod is gone (or the runner stops): stop its processes; does not block."""
        running.stopped_by_runner = True
        with self._lock:
            self._pods.pop(running.uid, None)
        seconds = self._max_grace_seconds if grace is None else grace
        if self._stopping.is_set():
            self._kill(running, seconds)
        else:
            threading.Thread(
                target=self._kill, args=(running, seconds), name=f"stop-{running.name}", daemon=True
            ).start()

    @staticmethod
    def _kill(running: PodProcess, grace: float) -> None:
        """SIGTERM every container's process group (regular containers first, then the
        sidecars), SIGKILL what is left after ``grace`` seconds."""
        order = sorted(running.containers.values(), key=lambda c: c.kind != "container")
        live = [c.process for c in order if c.process is not None and c.process.poll() is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for container in running.containers.values():
            if container.exit_code is None and container.process is not None:
                container.exit_code = container.process.poll()


class _ContainerEnded(Exception):
    """An init container (or a sidecar before its startup probe passed) exited."""

    def __init__(self, container: ContainerProcess, code: int) -> None:
        super().__init__(f"{container.name} exited {code}")
        self.container, self.code = container, code


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


def rewrite_paths(text: str, mounts: Mapping[str, Path]) -> str:
    """Point every mountPath in ``text`` (a value, ``--flag=<path>``, a shell script) to the
    container's folder: processes are not chrooted, so ``/var/run/secrets/tokens/token``
    becomes ``<root>/var/run/secrets/tokens/token``. The longest matching mountPath wins; a
    path only counts where it starts (after a space, ``=``, ``:``, a quote or the start) and
    ends (``/``, a space, a quote or the end) as a path does."""
    paths = sorted((p for p in mounts if p != "/"), key=len, reverse=True)
    if not paths:
        return text
    pattern = re.compile(
        r"(?<![\w.~/-])(" + "|".join(re.escape(p) for p in paths) + r")(?=/|$|[^\w.-])"
    )
    return pattern.sub(lambda m: str(mounts[m[1]]), text)


def _service_account_kubeconfig(folder: Path, mounted: Path, host: str, port: str) -> Path:
    """What the fixed ServiceAccount path gives a client library in a pod, as a kubeconfig
    naming the projected token file and CA where they are for this process."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "serviceaccount.kubeconfig"
    body = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "in-cluster",
                "cluster": {
                    "server": f"https://{host}:{port}",
                    "certificate-authority": str(mounted / "ca.crt"),
                },
            }
        ],
        "users": [{"name": "pod", "user": {"tokenFile": str(mounted / "token")}}],
        "contexts": [{"name": "pod", "context": {"cluster": "in-cluster", "user": "pod"}}],
        "current-context": "pod",
    }
    path.write_text(yaml.safe_dump(body))
    return path


def _with_resolv_conf(running: PodProcess, content: str, argv: list[str]) -> list[str]:
    """``argv`` in a mount namespace of its own where ``/etc/resolv.conf`` is the pod's, as a
    kubelet gives each pod (``unshare`` execs: the process keeps its pid)."""
    path = running.root / "etc" / "resolv.conf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    mount = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    unshare = ["unshare", "--mount", "--propagation", "private", "--"]
    return [*unshare, "/bin/sh", "-c", mount, str(path), *argv]


def _image_name(image: str) -> str:
    """``registry/name:tag@digest`` -> ``registry/name``."""
    name = image.partition("@")[0]
    head, _, tail = name.rpartition(":")
    return head if head and "/" not in tail else name


def _wait(container: ContainerProcess) -> int:
    assert container.process is not None
    container.exit_code = container.process.wait()
    return container.exit_code


def _working_dir(container: ContainerProcess) -> Path:
    wanted: str | None = container.spec.get("workingDir")
    if not wanted:
        return container.root
    path = container.root / wanted.lstrip("/")
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
