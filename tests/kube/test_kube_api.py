"""The backend's Kubernetes calls never stall its event loop, and its watches survive drops.

A stalled apiserver (SIGSTOP) must cost the loop nothing: every call runs on
``KubeApi``'s pool. A watch broken by an apiserver restart resumes and still sees
what changed meanwhile.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from licensing_server.kube import KubeApi, KubeConfig, ObjectWatch
from tests.kube.cluster import KubeControlPlane


async def _max_loop_gap(stop: asyncio.Event) -> float:
    """The longest the loop went without running this ticker (20 ms period)."""
    worst = 0.0
    last = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.02)
        now = time.monotonic()
        worst = max(worst, now - last - 0.02)
        last = now
    return worst


async def test_a_stalled_apiserver_does_not_stall_the_event_loop(
    kube_control_plane: KubeControlPlane,
) -> None:
    api = KubeApi(KubeConfig(kubeconfig=str(kube_control_plane.kubeconfig), workers=4))
    core = api.core()
    try:
        stop = asyncio.Event()
        ticker = asyncio.create_task(_max_loop_gap(stop))
        kube_control_plane.pause_apiserver()
        try:
            calls = [
                asyncio.create_task(api.call("list pods", core.list_namespaced_pod, "default"))
                for _ in range(8)
            ]
            await asyncio.sleep(1.5)  # every call is stuck on the stopped apiserver
            assert not any(c.done() for c in calls)
        finally:
            kube_control_plane.resume_apiserver()
        listings = await asyncio.gather(*calls)
        stop.set()
        gap = await ticker
        assert all(hasattr(listing, "items") for listing in listings)
        assert gap < 0.25, f"the event loop stalled for {gap:.3f}s"
    finally:
        await api.close()


async def test_a_watch_resumes_after_the_apiserver_restarts(
    kube_control_plane: KubeControlPlane,
) -> None:
    api = KubeApi(KubeConfig(kubeconfig=str(kube_control_plane.kubeconfig)))
    core = api.core()
    label = f"watch-test-{uuid.uuid4().hex[:8]}"
    watch = ObjectWatch(
        api, "configmaps", core.list_namespaced_config_map, "default", label_selector=f"t={label}"
    )
    watch.start()
    try:
        await asyncio.wait_for(watch.synced(), 10)
        await api.call(
            "create configmaps",
            core.create_namespaced_config_map,
            "default",
            {"metadata": {"name": f"{label}-a", "labels": {"t": label}}},
        )
        await watch.wait_until(f"{label}-a", lambda o: o is not None, 10)

        await asyncio.to_thread(kube_control_plane.restart_apiserver)
        await api.call(
            "create configmaps",
            core.create_namespaced_config_map,
            "default",
            {"metadata": {"name": f"{label}-b", "labels": {"t": label}}},
        )
        await api.call(
            "delete configmaps", core.delete_namespaced_config_map, f"{label}-a", "default"
        )
        await watch.wait_until(f"{label}-b", lambda o: o is not None, 30)
        await watch.wait_until(f"{label}-a", lambda o: o is None, 30)
        assert watch.restarts >= 2  # the first watch and at least one after the drop
    finally:
        await watch.stop()
        await api.close()


async def test_a_wait_after_our_own_create_never_reads_the_new_object_as_gone(
    kube_control_plane: KubeControlPlane,
) -> None:
    """Right after a create the watch may not have delivered it yet: absent is not deleted.

    The enclave runtime once read a pod it had just created as deleted under load (the
    watch lagged), deleted it and failed the enclave as ENCLAVE_EXITED.
    """
    api = KubeApi(KubeConfig(kubeconfig=str(kube_control_plane.kubeconfig)))
    core = api.core()
    label = f"own-write-{uuid.uuid4().hex[:8]}"
    watch = ObjectWatch(
        api, "configmaps", core.list_namespaced_config_map, "default", label_selector=f"t={label}"
    )
    watch.start()
    try:
        await asyncio.wait_for(watch.synced(), 10)
        for i in range(10):
            created = await api.call(
                "create configmaps",
                core.create_namespaced_config_map,
                "default",
                {"metadata": {"name": f"{label}-{i}", "labels": {"t": label}}},
            )
            seen = await watch.wait_until(
                f"{label}-{i}",
                lambda _: True,  # the first answer the cache gives, present or not
                10,
                after=created.metadata.resource_version,
            )
            assert seen is not None
            assert seen["metadata"]["uid"] == created.metadata.uid
    finally:
        await watch.stop()
        await api.close()
