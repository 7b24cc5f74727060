"""The one thread that talks to the TPM.

A TPM executes one command at a time and ESAPI blocks until it answers, so
every command for a device runs here, in order, on a context nobody else
touches. The thread is a daemon and disposable: when a command hangs the
device retires it and starts another, and the stuck one closes its context
and ends whenever its read returns.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from tpm2_pytss import TSS2_Exception

from licensing_server.observability import TpmMetrics
from licensing_server.tpm._connection import TpmConnection
from licensing_server.tpm._errors import TpmLockedOut, TpmUnavailable, is_lockout, translate

__all__ = ["TpmThread"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Job:
    operation: Callable[[TpmConnection], Any]
    action: str
    command: str
    future: Future[Any]


class TpmThread:
    """A daemon thread owning one lazily opened TPM connection."""

    def __init__(
        self, connect: Callable[[], TpmConnection], name: str, metrics: TpmMetrics | None = None
    ) -> None:
        self._connect = connect
        self._metrics = metrics or TpmMetrics()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._connection: TpmConnection | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(
        self, operation: Callable[[TpmConnection], _T], action: str, command: str = "other"
    ) -> Future[_T]:
        """Queue ``operation``; its future gets the result or a domain error.

        ``action`` names the work in error messages ("quote", "extend PCR 23"),
        ``command`` in the latency metric ("quote", "extend_pcr").
        """
        future: Future[_T] = Future()
        self._jobs.put(_Job(operation, action, command, future))
        return future

    def retire(self) -> None:
        """Close the connection and end the thread once the queued work is done."""
        self._jobs.put(None)

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            started = time.perf_counter()
            try:
                result = self._execute(job)
            except BaseException as exc:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
            finally:
                self._metrics.command.labels(job.command).observe(time.perf_counter() - started)
        self._disconnect()

    def _execute(self, job: _Job) -> Any:
        try:
            if self._connection is None:
                self._connection = self._connect()
            return job.operation(self._connection)
        except TpmUnavailable:
            self._disconnect()
            raise
        except TSS2_Exception as exc:
            if is_lockout(exc) and self._connection is not None:
                raise self._locked_out(self._connection) from exc
            error = translate(exc, job.action)
            if isinstance(error, TpmUnavailable):
                # A failed transport leaves ESAPI mid-command: start afresh next time.
                _log.warning("TPM %s failed (%s); reconnecting on next use", job.action, exc)
                self._disconnect()
            raise error from exc

    @staticmethod
    def _locked_out(connection: TpmConnection) -> TpmLockedOut:
        """The lockout error with the TPM's own figures (reading them needs no authorization)."""
        try:
            return TpmLockedOut(connection.lockout_state())
        except TSS2_Exception:
            _log.warning("could not read the TPM's lockout state", exc_info=True)
            return TpmLockedOut()

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.close()
        except Exception:
            _log.warning("closing the TPM connection failed", exc_info=True)
