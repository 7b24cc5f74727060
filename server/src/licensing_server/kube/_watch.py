"""``ObjectWatch``: list once, then follow changes with resource versions, resumed after drops.

One watch per kind of object serves every enclave: the API cost of following N
enclaves is one long request, not N polls. Events are applied on the event loop, so
readers of ``get`` and waiters of ``wait_until`` need no locks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from licensing_server.kube._client import KubeApi

__all__ = ["ObjectWatch", "WatchEvent"]

_log = logging.getLogger(__name__)

#: How long the apiserver keeps one watch request open before we start the next.
_WATCH_SECONDS = 60
Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED
    name: str
    object: Obj


class ObjectWatch:
    """Follows the objects ``list_fn`` lists (namespaced, label-selected) into a cache."""

    def __init__(
        self,
        api: KubeApi,
        kind: str,
        list_fn: Callable[..., Any],
        *args: Any,
        label_selector: str,
        **kwargs: Any,
    ):
        self._api = api
        self._kind = kind
        self._list_fn = list_fn
        self._args = args
        self._kwargs = {**kwargs, "label_selector": label_selector}
        self._objects: dict[str, Obj] = {}
        self._changed = asyncio.Event()
        self._synced = asyncio.Event()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[WatchEvent], None]] = []
        #: The resource version the cache reflects (list, events, bookmarks), on the loop.
        self._version = 0
        #: Times the watch was re-established (drops and expiries), for tests and logs.
        self.restarts = 0
        self.relists = 0

    # Reading ------------------------------------------------------------------------
    def get(self, name: str) -> Obj | None:
        return self._objects.get(name)

    def objects(self) -> list[Obj]:
        return list(self._objects.values())

    def listen(self, callback: Callable[[WatchEvent], None]) -> None:
        """``callback`` runs on the loop for every change after the first list."""
        self._listeners.append(callback)

    async def wait_until(
        self,
        name: str,
        predicate: Callable[[Obj | None], bool],
        within: float,
        *,
        after: str = "",
    ) -> Obj | None:
        """The object once ``predicate`` holds for it (``None`` if it is gone); ``TimeoutError``.

        With ``after`` (the resource version of our own write, such as a create), the
        cache is first brought up to that write: until the watch delivers it, an object
        just created is absent, and absent must not be read as deleted.
        """
        wanted = _version_number(after)
        async with asyncio.timeout(within):
            await self._synced.wait()
            while True:
                current = self._objects.get(name)
                if self._version >= wanted and predicate(current):
                    return current
                self._changed.clear()
                await self._changed.wait()

    async def synced(self) -> None:
        await self._synced.wait()

    # Running ------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self._kind}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            # A watch request ends within its timeout; the thread is a daemon either way.
            await asyncio.to_thread(thread.join, 2.0)

    def _run(self) -> None:
        version = ""
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                if not version:
                    version = self._relist()
                version = self._follow(version)
                backoff = 0.2
            except ApiException as exc:
                if exc.status == 410:  # our version is too old: list again
                    version = ""
                    continue
                self._pause(f"status {exc.status}", backoff, int(exc.status or 0))
                backoff = min(backoff * 2, 5.0)
            except (HTTPError, OSError, ValueError) as exc:
                self._pause(type(exc).__name__, backoff, 0)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                _log.exception("watching %s failed unexpectedly; restarting", self._kind)
                self._pause("unexpected error", backoff, None)
                backoff = min(backoff * 2, 5.0)

    def _pause(self, why: str, seconds: float, status: int | None) -> None:
        self._api.note_error(status)
        _log.info("watch of %s dropped (%s); resuming in %.1fs", self._kind, why, seconds)
        self._stopping.wait(seconds)

    def _relist(self) -> str:
        self._api.requests += 1
        listing = self._list_fn(
            *self._args, _request_timeout=self._api.request_timeout, **self._kwargs
        )
        raw = self._api.client.sanitize_for_serialization(listing)
        items = {o["metadata"]["name"]: o for o in raw.get("items") or []}
        self.relists += 1
        version = str(raw["metadata"].get("resourceVersion", ""))
        self._loop_call(self._replace, items, version)
        return version

    def _follow(self, version: str) -> str:
        stream = watch.Watch()
        self._api.requests += 1
        self.restarts += 1
        started = time.monotonic()
        for raw in stream.stream(
            self._list_fn,
            *self._args,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=_WATCH_SECONDS,
            _request_timeout=_WATCH_SECONDS + 10,
            **self._kwargs,
        ):
            if self._stopping.is_set():
                stream.stop()
                break
            kind = raw.get("type")
            obj = raw.get("object")
            if not isinstance(obj, dict):
                obj = self._api.client.sanitize_for_serialization(obj)
            if kind == "ERROR":
                code = obj.get("code") if isinstance(obj, dict) else None
                raise ApiException(status=int(code or 500), reason=str(obj.get("message", "")))
            new_version = obj.get("metadata", {}).get("resourceVersion")
            if new_version:
                version = str(new_version)
            if kind == "BOOKMARK":
                self._loop_call(self._reached, version)
                continue
            self._loop_call(self._apply, WatchEvent(str(kind), obj["metadata"]["name"], obj))
        _log.debug("watch of %s ended after %.0fs", self._kind, time.monotonic() - started)
        return version

    def _loop_call(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the process is ending
            self._stopping.set()

    # On the loop ----------------------------------------------------------------------
    def _reached(self, version: str) -> None:
        number = _version_number(version)
        if number > self._version:
            self._version = number
            self._changed.set()

    def _replace(self, items: dict[str, Obj], version: str = "") -> None:
        gone = [n for n in self._objects if n not in items]
        for name in gone:
            self._apply(WatchEvent("DELETED", name, self._objects[name]))
        for name, obj in items.items():
            known = self._objects.get(name)
            if known is None or known["metadata"].get("resourceVersion") != obj["metadata"].get(
                "resourceVersion"
            ):
                self._apply(WatchEvent("MODIFIED" if known else "ADDED", name, obj))
        self._reached(version)
        self._synced.set()
        self._changed.set()

    def _apply(self, event: WatchEvent) -> None:
        if event.type == "DELETED":
            self._objects.pop(event.name, None)
        else:
            self._objects[event.name] = event.object
        self._reached(str(event.object.get("metadata", {}).get("resourceVersion", "")))
        self._changed.set()
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("a %s watch listener failed", self._kind)


def _version_number(version: str) -> int:
    """Resource versions are etcd revisions (comparable since Kubernetes 1.33); 0 if not."""
    try:
        return int(version)
    except ValueError:
        return 0
