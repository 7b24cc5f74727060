"""``ClusterDns``: a test stand-in for cluster DNS (CoreDNS) and the DNS of Ingress hosts.

A kubelet points each pod's ``/etc/resolv.conf`` at the cluster's DNS service, with the
search domains ``<namespace>.svc.cluster.local svc.cluster.local cluster.local``; the pod
runner does the same (a private mount namespace per container, ``resolv_conf``). This server
answers A queries on ``<address>:53`` (UDP):

* ``<service>.<namespace>.svc.cluster.local``: the pod IP of a Running pod the Service
  selects (as for a headless Service: there is no kube-proxy, so no ClusterIP to route);
* a name under one of ``hosts``' suffixes (``.dev.test``): that suffix's address (the
  ingress controller's stand-in, ``tests.kube.ingress``);

and NXDOMAIN to anything else (AAAA gets an empty answer, so clients use the A record).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Mapping
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

__all__ = ["ClusterDns", "free_loopback_address"]

CLUSTER_DOMAIN = "svc.cluster.local"
_A, _AAAA = 1, 28


def free_loopback_address(port: int, kind: int = socket.SOCK_STREAM) -> str:
    """A loopback address (127.254.x.y) where ``port`` is free: each stand-in its own."""
    import random

    for _ in range(100):
        address = f"127.254.{random.randint(0, 255)}.{random.randint(1, 254)}"
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, kind) as probe:
            probe.bind((address, port))
            return address
    raise OSError(f"no free loopback address for port {port}")


class ClusterDns:
    """Answers A queries for Services and Ingress hosts on ``address:53``."""

    def __init__(self, kubeconfig: Path, hosts: Mapping[str, str] | None = None) -> None:
        self._kubeconfig = kubeconfig
        self._hosts = dict(hosts or {})
        self.address = free_loopback_address(53, socket.SOCK_DGRAM)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((self.address, 53))
        self._stopping = threading.Event()
        self.queries: list[tuple[str, str | None]] = []  # (name, answer), for a test to see

    def resolv_conf(self, namespace: str) -> str:
        """The ``/etc/resolv.conf`` a kubelet writes for a pod in ``namespace``."""
        search = f"{namespace}.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN} cluster.local"
        return f"nameserver {self.address}\nsearch {search}\noptions ndots:5\n"

    def __enter__(self) -> ClusterDns:
        threading.Thread(target=self._serve, name="cluster-dns", daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._socket.close()

    def lookup(self, name: str) -> str | None:
        """The IPv4 address for ``name``, None for NXDOMAIN."""
        name = name.rstrip(".").lower()
        for suffix, address in self._hosts.items():
            if name.endswith(suffix):
                return address
        head, _, domain = name.partition(".")
        namespace, _, rest = domain.partition(".")
        if rest != CLUSTER_DOMAIN or not head or not namespace:
            return None
        configuration = client.Configuration()
        config.load_kube_config(str(self._kubeconfig), client_configuration=configuration)
        try:
            with client.ApiClient(configuration) as api:
                core = client.CoreV1Api(api)
                selector = core.read_namespaced_service(head, namespace).spec.selector or {}
                labels = ",".join(f"{k}={v}" for k, v in selector.items())
                for pod in core.list_namespaced_pod(namespace, label_selector=labels).items:
                    if pod.status.phase == "Running" and pod.status.pod_ip and labels:
                        return str(pod.status.pod_ip)
        except ApiException:
            return None
        return None

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                query, peer = self._socket.recvfrom(4096)
            except OSError:
                return
            threading.Thread(target=self._answer, args=(query, peer), daemon=True).start()

    def _answer(self, query: bytes, peer: tuple[str, int]) -> None:
        with contextlib.suppress(Exception):
            name, kind, end = _question(query)
            address = self.lookup(name)
            self.queries.append((name, address))
            header = query[:2] + struct.pack(
                ">HHHHH",
                0x8180 if address else 0x8183,  # response, recursion available; NXDOMAIN
                1,
                1 if address and kind == _A else 0,
                0,
                0,
            )
            answer = b""
            if address and kind == _A:
                answer = b"\xc0\x0c" + struct.pack(">HHIH", _A, 1, 5, 4)
                answer += socket.inet_aton(address)
            self._socket.sendto(header + query[12:end] + answer, peer)


def _question(query: bytes) -> tuple[str, int, int]:
    """The first question's name and type, and where it ends."""
    labels, at = [], 12
    while (size := query[at]) != 0:
        labels.append(query[at + 1 : at + 1 + size].decode("ascii"))
        at += 1 + size
    kind = struct.unpack(">H", query[at + 1 : at + 3])[0]
    return ".".join(labels), kind, at + 5
