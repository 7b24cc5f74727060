"""When the next quote starts: at once for a lone client, once the cohort is back for many.

A quote covers every request that is waiting when it starts. Closed-loop clients (each
asks again as soon as its answer is verified) come back a few milliseconds apart, so
a quote started at the first arrival takes a handful of them and the rest wait that
whole quote out: 100 clients on a 100 ms TPM split into two groups that each wait two
quotes per answer (about 50x 1/latency, not 100x). So before a quote, the attestor
waits for the *cohort*, the requests it answered last plus those already waiting then,
to be back, but never longer than a quarter of a quote: a lone client (cohort 1) is
never held, a cohort that shrank costs one bounded wait, and under open-loop arrivals
the wait only makes the next batch bigger.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: The longest wait, as a fraction of the mean quote duration.
LINGER_FRACTION = 0.25
#: ...and in seconds, whatever the TPM takes.
MAX_LINGER_SECONDS = 0.05
#: A cohort older than this is gone: the next request goes at once.
COHORT_SECONDS = 1.0
#: Weight of the newest quote duration in the running mean.
_SMOOTHING = 0.2


class BatchWindow:
    """The cohort the next quote waits for, and for how long at most."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cohort = 0
        self._answered_at = float("-inf")
        self._quote_seconds = 0.0

    def quoted(self, answered: int, waiting: int, seconds: float) -> None:
        """A quote of ``answered`` requests took ``seconds``; ``waiting`` queued meanwhile."""
        self._cohort = answered + waiting
        self._answered_at = self._clock()
        if self._quote_seconds == 0.0:
            self._quote_seconds = seconds
        else:
            self._quote_seconds += _SMOOTHING * (seconds - self._quote_seconds)

    def linger(self, waiting: int) -> tuple[int, float]:
        """``(cohort, seconds)``: start once ``cohort`` wait, or after ``seconds`` (0: now)."""
        if waiting >= self._cohort or self._clock() - self._answered_at > COHORT_SECONDS:
            return self._cohort, 0.0
        return self._cohort, min(LINGER_FRACTION * self._quote_seconds, MAX_LINGER_SECONDS)
