"""``KubeApi``: one API client and one thread pool, retries, and errors with reasons."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kubernetes import client, config
from kubernetes.client import AuthenticationV1Api, CoreV1Api, CustomObjectsApi, NetworkingV1Api
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from licensing_common.errors import (
    DomainError,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
)

if TYPE_CHECKING:
    from licensing_server.config import KubernetesSettings

__all__ = [
    "KubeApi",
    "KubeConfig",
    "error_reason",
    "is_conflict",
    "is_not_found",
    "kube_api_for",
    "shared_apis",
    "status_of",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Statuses worth another try: throttled, or the apiserver (or etcd) having a moment.
_TRANSIENT = frozenset({0, 429, 500, 502, 503, 504})
_RBAC_WARMUP_SECONDS = 8.0


@dataclass(frozen=True, slots=True)
class KubeConfig:
    """Where the API is: a kubeconfig file, or (empty) the pod's in-cluster credentials."""

    kubeconfig: str = ""
    context: str = ""
    #: Threads for blocking API calls (watches have their own).
    workers: int = 8
    #: Per request, connect and read.
    request_timeout_seconds: float = 10.0
    #: How long one call keeps retrying transient failures before ``UNAVAILABLE``.
    retry_for_seconds: float = 20.0

    def api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        if self.kubeconfig:
            config.load_kube_config(
                config_file=self.kubeconfig,
                context=self.context or None,
                client_configuration=configuration,
            )
        else:
            config.load_incluster_config(client_configuration=configuration)
        configuration.retries = False  # ours, with backoff and a deadline
        return client.ApiClient(configuration)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an API error (0 for no answer), None if it is not one."""
    if isinstance(exc, ApiException):
        return int(exc.status or 0)
    if isinstance(exc, HTTPError | OSError):
        return 0
    return None


def error_reason(status: int | None) -> str:
    """A metric label for a failed request: a small fixed set, whatever the apiserver says."""
    if status is None:
        return "unexpected"
    if status == 0:
        return "unreachable"
    if status >= 500:
        return "server_error"
    return _REASONS.get(status, "rejected")


_REASONS = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    410: "expired",
    422: "invalid",
    429: "throttled",
}


def is_not_found(exc: BaseException) -> bool:
    return status_of(exc) == 404


def is_conflict(exc: BaseException) -> bool:
    return status_of(exc) == 409


def _message(exc: ApiException) -> str:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        body: Any = json.loads(exc.body)
        if isinstance(body, dict):
            return str(body.get("message", ""))
    return str(exc.reason or "")


def domain_error(exc: BaseException, what: str) -> DomainError:
    """The user-facing form of an API failure that retrying did not fix; details are logged."""
    status = status_of(exc)
    text = _message(exc) if isinstance(exc, ApiException) else type(exc).__name__
    _log.warning("Kubernetes API: %s failed (%s): %s", what, status, text)
    if status in _TRANSIENT or status is None:
        return Unavailable("KUBERNETES_UNAVAILABLE", "the Kubernetes API is unavailable; try again")
    if status == 403 and "exceeded quota" in text:
        return ResourceExhausted(
            "KUBERNETES_QUOTA_EXCEEDED",
            "the enclave namespace's resource quota is used up; delete an enclave or try later",
        )
    if status == 403:
        return FailedPrecondition(
            "KUBERNETES_FORBIDDEN", f"the backend may not {what} (check its Role)"
        )
    if status == 401:
        return FailedPrecondition(
            "KUBERNETES_UNAUTHORIZED", "the backend's Kubernetes credentials were refused"
        )
    if status == 404:
        return FailedPrecondition(
            "KUBERNETES_NOT_FOUND", f"cannot {what}: the namespace or resource type is missing"
        )
    if status == 409:
        return FailedPrecondition("KUBERNETES_CONFLICT", f"cannot {what}: it already exists")
    return FailedPrecondition(
        "KUBERNETES_REJECTED", f"the Kubernetes API refused to {what} (status {status})"
    )


class KubeApi:
    """Blocking API calls off the event loop, retried while they fail transiently.

    ``call`` raises a ``DomainError`` (``domain_error``) for what retrying does not fix;
    statuses in ``accept`` (404 for a delete, 409 for a create) come back as the
    ``ApiException`` itself, for the caller to treat as the answer it is.
    """

    def __init__(self, settings: KubeConfig, api_client: client.ApiClient | None = None):
        self._settings = settings
        self._client = api_client or settings.api_client()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="kube-api"
        )
        self._closed = False
        #: Every request made (for benchmarks and logs): (verb, what).
        self.requests = 0
        self.errors = 0
        #: ``errors`` by ``error_reason`` (exported as licensing_kubernetes_api_errors_total).
        self.errors_by_reason: collections.Counter[str] = collections.Counter()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def client(self) -> client.ApiClient:
        return self._client

    @property
    def request_timeout(self) -> float:
        return self._settings.request_timeout_seconds

    def core(self) -> CoreV1Api:
        return CoreV1Api(self._client)

    def networking(self) -> NetworkingV1Api:
        return NetworkingV1Api(self._client)

    def custom(self) -> CustomObjectsApi:
        return CustomObjectsApi(self._client)

    def authentication(self) -> AuthenticationV1Api:
        return AuthenticationV1Api(self._client)

    async def call(
        self,
        what: str,
        fn: Callable[..., _T],
        *args: Any,
        accept: frozenset[int] = frozenset(),
        **kwargs: Any,
    ) -> _T | ApiException:
        """``fn(*args, **kwargs)`` on the pool; ``what`` names it in errors ("create pods")."""
        kwargs.setdefault("_request_timeout", self._settings.request_timeout_seconds)
        started = time.monotonic()
        deadline = started + self._settings.retry_for_seconds
        delay = 0.1
        first_refusal: float | None = None
        bound = functools.partial(fn, *args, **kwargs)
        while True:
            self.requests += 1
            try:
                return await self._run(bound)
            except (ApiException, HTTPError, OSError) as exc:
                status = status_of(exc)
                if isinstance(exc, ApiException) and status in accept:
                    return exc
                self.note_error(status)
                # A just-restarted apiserver refuses (403) until its RBAC cache has
                # synced: a refusal is retried for a few seconds (counted from the first
                # one, so time spent unreachable before does not use them up) before it
                # is believed.
                if status == 403 and first_refusal is None:
                    first_refusal = time.monotonic()
                warming = (
                    first_refusal is not None
                    and status == 403
                    and "exceeded quota" not in _message(exc)  # a quota is no cache
                    and time.monotonic() < first_refusal + _RBAC_WARMUP_SECONDS
                )
                if (
                    status not in _TRANSIENT and not warming
                ) or time.monotonic() + delay > deadline:
                    raise domain_error(exc, what) from exc
                _log.info("Kubernetes API: %s: status %s, retrying in %.1fs", what, status, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))  # jitter, not a secret
                delay = min(delay * 2, 2.0)

    def note_error(self, status: int | None) -> None:
        """Count a failed request (``status_of`` its error); watches call it too."""
        self.errors += 1
        self.errors_by_reason[error_reason(status)] += 1

    async def _run(self, fn: Callable[[], _T]) -> _T:
        if self._closed:  # after close (a shutdown's last reads): a plain thread
            return await asyncio.to_thread(fn)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn)

    async def close(self) -> None:
        """Stop taking work on the pool; idempotent. Later calls run on plain threads."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)


_shared: dict[KubeConfig, KubeApi] = {}


def shared_apis() -> list[KubeApi]:
    """The process's ``KubeApi`` objects (for the metrics collector)."""
    return list(_shared.values())


def kube_api_for(settings: KubernetesSettings) -> KubeApi:
    """The process's one ``KubeApi`` for these settings, shared by runtime and issuer.

    Either may close it at shutdown: ``close`` is idempotent and later calls still run
    (on plain threads), so the other's last reads and deletes go through. A closed
    one is replaced on the next request (tests start many backends in one process).
    """
    config_ = KubeConfig(kubeconfig=settings.kubeconfig, workers=settings.api_workers)
    api = _shared.get(config_)
    if api is None or api.closed:
        api = _shared[config_] = KubeApi(config_)
    return api
