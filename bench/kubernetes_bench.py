"""Enclaves as pods on the test control plane: create-to-READY, API writes, reconcile time.

Starts its own control plane (``scripts/kube/up.sh``: etcd, kube-apiserver, controller
manager, scheduler, kwok, cert-manager) and a licensing stack whose backend runs the
``kubernetes`` runtime with the ``cert-manager`` issuer, as the tests do
(``tests/kube/licensing_stack.py``; ``PodRunner`` stands in for the kubelet's container
runtime and runs each pod's enclave as a local process). Prints figures; asserts nothing.

    .venv/bin/python bench/kubernetes_bench.py [--sequential 10] [--concurrency 20] [--held 200]

1. single: ``--sequential`` creates one after another -> create-to-READY and -to-ATTESTED
   p50/p95/p99 (from sending CreateEnclave to the event's arrival);
2. concurrent: ``--concurrency`` creates at once -> the same;
3. API requests per enclave, from the apiserver's own ``apiserver_request_total`` before
   and after phase 1, by verb and resource (the writes only the backend makes: creates of
   pods, ConfigMaps, Services, CertificateRequests and TokenReviews, deletes of
   CertificateRequests; pod deletes include kwok's final one, so they are an upper bound);
4. reconcile: with ``--held`` enclaves alive, the backend is killed (-9) and the time until
   its restarted successor listens again (its reconciler checks every enclave's pod first)
   is compared with the same restart holding none.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import ssl
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.login_bench import CORES, percentile  # noqa: E402
from licensing_client import Created, LicensingClient, LicensingError, Progress  # noqa: E402
from licensing_client.gen.licensing import v1  # noqa: E402
from tests.kube.cluster import KubeControlPlane  # noqa: E402
from tests.kube.licensing_stack import KubeStack, kube_stack  # noqa: E402
from tests.provisioning.streams import kill_and_wait_restart  # noqa: E402
from tests.support import PASSWORD  # noqa: E402

_METRIC = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$")
_BACKEND_WRITES = {
    ("POST", "pods"),
    ("POST", "configmaps"),
    ("PATCH", "configmaps"),
    ("POST", "services"),
    ("POST", "ingresses"),
    ("POST", "certificaterequests"),
    ("POST", "tokenreviews"),
    ("DELETE", "certificaterequests"),
    ("DELETE", "pods"),
}


def request_counts(plane: KubeControlPlane) -> Counter[tuple[str, str]]:
    """apiserver_request_total summed by (verb, resource), main resources only."""
    context = ssl.create_default_context(cafile=str(plane.pki / "ca.crt"))
    context.load_cert_chain(str(plane.pki / "admin.crt"), str(plane.pki / "admin.key"))
    url = f"{plane.server}/metrics"  # https, the apiserver
    with urllib.request.urlopen(url, context=context, timeout=10) as r:  # noqa: S310
        text = r.read().decode()
    counts: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        match = _METRIC.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("subresource"):
            continue
        counts[(labels.get("verb", ""), labels.get("resource", ""))] += int(float(match.group(2)))
    return counts


FAILURES: Counter[str] = Counter()


async def create(licensing: LicensingClient) -> tuple[float, float, str]:
    """(seconds to READY, seconds to ATTESTED, enclave id); a failure is counted, not raised."""
    start = time.perf_counter()
    ready = attested = float("nan")
    enclave_id = ""
    try:
        async for event in licensing.create_enclave():
            now = time.perf_counter() - start
            if isinstance(event, Progress) and v1.Phase(event.phase) == v1.Phase.READY:
                ready = now
            if isinstance(event, Created):
                attested = now
                enclave_id = event.enclave.id
    except LicensingError as exc:
        FAILURES[exc.reason or type(exc).__name__] += 1
    return ready, attested, enclave_id


def report(title: str, samples: list[tuple[float, float, str]]) -> None:
    ok = [s for s in samples if s[2]]
    ready = [s[0] for s in ok]
    attested = [s[1] for s in ok]
    print(f"{title} (n={len(samples)}, failed {len(samples) - len(ok)}: {dict(FAILURES)})")
    FAILURES.clear()
    for name, values in (("create-to-READY", ready), ("create-to-ATTESTED", attested)):
        print(
            f"  {name:20s} p50 {percentile(values, 50) * 1000:7.0f} ms   "
            f"p95 {percentile(values, 95) * 1000:7.0f} ms   "
            f"p99 {percentile(values, 99) * 1000:7.0f} ms"
        )


async def run(kube: KubeStack, args: argparse.Namespace) -> None:
    stack = kube.stack
    async with LicensingClient.connect(
        stack.enroll_addr, stack.api_addr, ca_pem=stack.ca_pem
    ) as licensing:
        name = f"kbench-{uuid.uuid4().hex[:8]}"
        await licensing.sign_up(name, PASSWORD)
        await licensing.log_in(name, PASSWORD)
        _, _, warm = await create(licensing)  # warm-up: the first quote opens the log epoch
        await licensing.delete_enclave(warm)

        before = await asyncio.to_thread(request_counts, kube.plane)
        single = []
        for _ in range(args.sequential):
            single.append(await create(licensing))
            if single[-1][2]:
                await licensing.delete_enclave(single[-1][2])
        await asyncio.sleep(2)  # garbage collection and kwok's final deletes
        after = await asyncio.to_thread(request_counts, kube.plane)
        report("single creates, one after another", single)
        per = {k: (after[k] - before[k]) / args.sequential for k in sorted(_BACKEND_WRITES)}
        print("Kubernetes API writes per enclave (create, enrol, issue, delete):")
        for (verb, resource), value in per.items():
            print(f"  {verb:6s} {resource:20s} {value:5.2f}")
        print(f"  total {sum(per.values()):.2f} (pod DELETE includes kwok's final delete)")
        reads = sum(
            (after[k] - before[k]) for k in after if k[0] in ("GET", "LIST") and k[1] == "pods"
        )
        print(f"  pod GET/LIST per enclave, all clients: {reads / args.sequential:.2f}")

        concurrent = await asyncio.gather(*(create(licensing) for _ in range(args.concurrency)))
        report(f"{args.concurrency} concurrent creates", list(concurrent))
        await asyncio.gather(*(licensing.delete_enclave(c[2]) for c in concurrent if c[2]))

        t0 = time.perf_counter()
        await asyncio.to_thread(kill_and_wait_restart, stack, "backend", 120)
        empty_restart = time.perf_counter() - t0
        held: list[tuple[float, float, str]] = []
        for offset in range(0, args.held, args.concurrency):
            batch = min(args.concurrency, args.held - offset)
            held += await asyncio.gather(*(create(licensing) for _ in range(batch)))
        t0 = time.perf_counter()
        await asyncio.to_thread(kill_and_wait_restart, stack, "backend", 300)
        full_restart = time.perf_counter() - t0
        alive = 0
        held = [h for h in held if h[2]]
        for _, _, enclave_id in held:
            if (await licensing.get_enclave(enclave_id)).phase == v1.Phase.ATTESTED:
                alive += 1
        print(
            f"backend restart (kill -9 to listening): {empty_restart:.2f} s holding 0 enclaves, "
            f"{full_restart:.2f} s holding {len(held)} (reconcile of {len(held)}: "
            f"~{max(0.0, full_restart - empty_restart):.2f} s); {alive} still ATTESTED after"
        )
        for _, _, enclave_id in held:
            await licensing.delete_enclave(enclave_id)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--held", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"cores {CORES}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="kube-bench-") as tmp:
        plane = KubeControlPlane(Path(tmp) / "plane")
        t0 = time.perf_counter()
        plane.start()
        print(f"control plane up in {time.perf_counter() - t0:.1f} s")
        try:
            with kube_stack(plane, Path(tmp)) as kube:
                try:
                    asyncio.run(run(kube, args))
                finally:
                    failed = [p for p in kube.runner.processes() if p.exit_code not in (None, 0)]
                    for process in failed[:3]:
                        print(f"--- pod {process.name} exited {process.exit_code}:")
                        print(process.log()[-1500:])
        finally:
            plane.stop(wipe=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
