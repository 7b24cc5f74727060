"""The Kubernetes API's request and error counts, read from ``KubeApi`` at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from licensing_server.kube._client import KubeApi, shared_apis

__all__ = ["KubernetesApiCollector"]


class KubernetesApiCollector(Collector):
    """``licensing_kubernetes_api_requests_total`` and ``..._errors_total{reason}``.

    ``KubeApi`` counts as plain integers on its threads; this only reads them, so the
    Kubernetes code does not depend on the metrics library's objects.
    """

    def __init__(self, apis: Callable[[], Iterable[KubeApi]] = shared_apis):
        self._apis = apis

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "licensing_kubernetes_api_requests",
            "Requests to the Kubernetes API, retries and watches included",
        )
        errors = CounterMetricFamily(
            "licensing_kubernetes_api_errors",
            "Kubernetes API requests that failed, by reason (unreachable, throttled, "
            "server_error, forbidden, ...), retried or not",
            labels=("reason",),
        )
        total = 0
        by_reason: dict[str, int] = {}
        for api in self._apis():
            total += api.requests
            for reason, count in list(api.errors_by_reason.items()):
                by_reason[reason] = by_reason.get(reason, 0) + count
        requests.add_metric((), total)
        for reason, count in sorted(by_reason.items()):
            errors.add_metric((reason,), count)
        yield requests
        yield errors

    def describe(self) -> Iterator[Metric]:
        return iter(())
