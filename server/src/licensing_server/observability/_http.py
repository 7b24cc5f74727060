"""``/metrics`` over plain HTTP on a thread of its own, as Prometheus scrapes it."""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["MetricsEndpoint"]

_log = logging.getLogger(__name__)


class MetricsEndpoint:
    """Serves ``registry`` at ``http://address/metrics`` until ``close``.

    Plain HTTP: the figures say how busy the server is, never who uses it (no
    usernames or enclave ids in labels), and the default address is loopback.
    """

    def __init__(self, server: WSGIServer, thread: threading.Thread, address: str):
        self._server = server
        self._thread = thread
        self.address = address

    @classmethod
    def start(cls, address: str, registry: CollectorRegistry) -> MetricsEndpoint:
        """Listen on ``address`` (``host:port``, ``[v6]:port``); ``OSError`` if it cannot."""
        host, _, port = address.rpartition(":")
        server, thread = start_http_server(int(port), host.strip("[]"), registry=registry)
        bound = server.server_address
        _log.info("metrics served on http://%s/metrics", address)
        return cls(server, thread, f"{host}:{bound[1]}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
