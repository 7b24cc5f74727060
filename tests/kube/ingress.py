"""``PassthroughIngress``: a test stand-in for an ingress controller with TLS passthrough.

The test control plane has no ingress controller, and the enclaves' Ingresses
(``nginx.ingress.kubernetes.io/ssl-passthrough``) would need one: it reads the server name
(SNI) of each TLS ClientHello, finds the Ingress rule for that host, its Service and a pod
behind it, and forwards the still-encrypted bytes to ``podIP:targetPort``. The TLS session
is between the client and the pod, as with the real controller. Pods reach it by name through
``tests.kube.cluster_dns``, a test process through ``tests/kube/resolve``.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

from kubernetes import client, config

__all__ = ["PassthroughIngress", "server_name"]


def server_name(hello: bytes) -> str | None:
    """The SNI host name of a TLS ClientHello record, None if it has none (or is cut short)."""
    try:
        if hello[0] != 0x16 or hello[5] != 0x01:  # handshake record, ClientHello
            return None
        at = 9 + 2 + 32  # record and handshake headers, version, random
        at += 1 + hello[at]  # session id
        at += 2 + int.from_bytes(hello[at : at + 2], "big")  # cipher suites
        at += 1 + hello[at]  # compression methods
        end = at + 2 + int.from_bytes(hello[at : at + 2], "big")
        at += 2
        while at + 4 <= end:
            kind = int.from_bytes(hello[at : at + 2], "big")
            size = int.from_bytes(hello[at + 2 : at + 4], "big")
            if kind == 0:  # server_name: list length, type (0 = host), name length, name
                length = int.from_bytes(hello[at + 7 : at + 9], "big")
                return hello[at + 9 : at + 9 + length].decode("ascii")
            at += 4 + size
    except IndexError:
        return None
    return None


class PassthroughIngress:
    """Forwards TLS connections by SNI to the pod behind the matching Ingress rule."""

    def __init__(
        self, kubeconfig: Path, namespaces: list[str], address: tuple[str, int] = ("127.0.0.1", 0)
    ) -> None:
        self._kubeconfig = kubeconfig
        self._namespaces = namespaces
        ingress = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                ingress._forward(self.request)

        self._server = socketserver.ThreadingTCPServer(address, Handler)
        self._server.daemon_threads = True
        self.host = str(self._server.server_address[0])
        self.port: int = self._server.server_address[1]
        self.forwarded: list[tuple[str, str]] = []  # (host, pod address), for a test to see

    def __enter__(self) -> PassthroughIngress:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def backend_of(self, host: str) -> str | None:
        """``podIP:port`` for ``host``: Ingress rule -> Service -> a Running pod."""
        configuration = client.Configuration()
        config.load_kube_config(str(self._kubeconfig), client_configuration=configuration)
        with client.ApiClient(configuration) as api:
            net, core = client.NetworkingV1Api(api), client.CoreV1Api(api)
            for namespace in self._namespaces:
                for ingress in net.list_namespaced_ingress(namespace).items:
                    for rule in ingress.spec.rules or []:
                        if rule.host != host or not rule.http:
                            continue
                        ref = rule.http.paths[0].backend.service
                        service = core.read_namespaced_service(ref.name, namespace)
                        port = _service_port(service, ref.port)
                        selector = ",".join(f"{k}={v}" for k, v in service.spec.selector.items())
                        pods = core.list_namespaced_pod(namespace, label_selector=selector)
                        for pod in pods.items:
                            if pod.status.pod_ip and pod.status.phase == "Running":
                                return f"{pod.status.pod_ip}:{_container_port(pod, port)}"
        return None

    def _forward(self, downstream: socket.socket) -> None:
        hello = b""
        with contextlib.suppress(OSError):
            for _ in range(50):
                hello = downstream.recv(16384, socket.MSG_PEEK)
                if server_name(hello) is not None or len(hello) >= 16384:
                    break
                threading.Event().wait(0.02)
        host = server_name(hello)
        try:
            address = self.backend_of(host) if host else None
        except Exception as exc:  # the connection is refused; the test sees why
            self.forwarded.append((host or "", f"error: {exc!r}"))
            address = None
        if address is None:
            downstream.close()
            return
        self.forwarded.append((host or "", address))
        pod_ip, _, port = address.rpartition(":")
        with contextlib.suppress(OSError), socket.create_connection((pod_ip, int(port))) as up:
            pump = threading.Thread(target=_pipe, args=(up, downstream), daemon=True)
            pump.start()
            _pipe(downstream, up)
            pump.join(timeout=5)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _service_port(service: Any, wanted: Any) -> int | str:
    for port in service.spec.ports:
        if wanted.number == port.port or (wanted.name and wanted.name == port.name):
            target: int | str = port.target_port if port.target_port is not None else port.port
            return target
    raise LookupError(f"service {service.metadata.name} has no port {wanted}")


def _container_port(pod: Any, port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for container in pod.spec.containers:
        for declared in container.ports or []:
            if declared.name == port:
                return int(declared.container_port)
    raise LookupError(f"pod {pod.metadata.name} has no port named {port}")
