"""Host names a test process resolves to a local address, as ``curl --resolve`` does.

Put this folder first on PYTHONPATH and set ``TEST_RESOLVE`` to
``<suffix>:<port>=<host>:<port>[,...]``: a connection to any name ending in ``<suffix>`` on
``<port>`` goes to ``<host>:<port>`` instead, while TLS still checks the name asked for.
It stands in for the DNS name of an Ingress (``*.enclaves.dev.test:443``) that points at the
ingress controller's stand-in (``tests.kube.ingress``). Without ``TEST_RESOLVE`` it does
nothing.
"""

from __future__ import annotations

import os
import socket
from typing import Any

_RULES: list[tuple[str, int, str, int]] = []
for _rule in filter(None, os.environ.get("TEST_RESOLVE", "").split(",")):
    _wanted, _, _target = _rule.partition("=")
    _suffix, _, _port = _wanted.rpartition(":")
    _host, _, _to_port = _target.rpartition(":")
    _RULES.append((_suffix, int(_port), _host, int(_to_port)))

if _RULES:
    _original = socket.getaddrinfo

    def _getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        for suffix, wanted, target, to_port in _RULES:
            if isinstance(name, str) and name.endswith(suffix) and str(port) == str(wanted):
                return _original(target, to_port, *args, **kwargs)
        return _original(host, port, *args, **kwargs)

    socket.getaddrinfo = _getaddrinfo
