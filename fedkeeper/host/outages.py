"""Outages the keeper waits for: a platform or the store that stopped answering.

An outage is not a client's failure, so it costs no retry. The keeper probes what is down with
backoff (one request at a time, not one per client), says what it waits for, and gives up only
when an outage lasts past ``outage_tolerance_s``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from fedkeeper.function.backoff import Backoff
from fedkeeper.function.errors import FedkeeperError, Unavailable
from fedkeeper.host.reporting import Reporter

MIN_PROBE_S = 0.1  # even with no retry backoff, a probe of what is down is not a busy loop


class OutageTooLong(FedkeeperError):
    """Something stayed down past ``outage_tolerance_s``; ``reason`` is the outage's kind."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Outage:
    """One thing that is down: since when and last seen down (keeper clock), why, the next probe."""

    what: str
    kind: str  # "PlatformUnavailable" or "StoreUnavailable"
    since: float
    last_seen: float
    error: str
    next_probe: float
    probes: int = 0

    @property
    def length_s(self) -> float:
        """How long it has been seen down.

        Measured up to the last failure seen, not to now: an outage that activations reported is
        probed by their retries, which take a while to answer; that time is not downtime.
        """
        return self.last_seen - self.since


class Outages:
    """What is down now, and when each thing last came back.

    Parameters
    ----------
    tolerance_s
        How long an outage may last before :meth:`check` raises :class:`OutageTooLong`.
    backoff
        The delays between probes (the keeper's retry policy); at least :data:`MIN_PROBE_S`.
    clock
        The keeper's monotonic clock.
    """

    def __init__(self, tolerance_s: float, backoff: Backoff, clock: Callable[[], float]) -> None:
        self.tolerance_s = tolerance_s
        self.backoff = backoff
        self.clock = clock
        self.down: dict[str, Outage] = {}
        self.back_at: dict[str, datetime] = {}  # wall time each outage ended, to judge lost activations
        # async mode's aggregator call notes outages from a worker thread while the stream does
        self._lock = threading.RLock()

    def failed(self, error: Unavailable) -> Outage:
        """Record that ``error.what`` did not answer; returns its outage with the next probe time."""
        with self._lock:
            now = self.clock()
            outage = self.down.get(error.what)
            if outage is None:
                outage = Outage(error.what, type(error).__name__, now, now, str(error), now)
                self.down[error.what] = outage
            outage.probes += 1
            outage.last_seen = now
            outage.error = str(error)
            outage.next_probe = now + max(self.backoff.delay(outage.probes), MIN_PROBE_S)
            return outage

    def recovered(self, what: str) -> float | None:
        """Record that ``what`` answered; the outage's length when it was down, else None."""
        with self._lock:
            outage = self.down.pop(what, None)
            if outage is None:
                return None
            self.back_at[what] = datetime.now(UTC)
            return self.clock() - outage.since

    def is_down(self, what: str) -> bool:
        return what in self.down

    def may_probe(self, what: str) -> bool:
        """True when ``what`` is up, or down and due for its next probe."""
        outage = self.down.get(what)
        return outage is None or self.clock() >= outage.next_probe

    def next_probe(self, what: str) -> float:
        outage = self.down.get(what)
        return self.clock() if outage is None else outage.next_probe

    def overlapped(self, what: str, since: datetime) -> bool:
        """Whether ``what`` was down at some point after ``since`` (wall time)."""
        return what in self.down or (what in self.back_at and self.back_at[what] > since)

    def waiting(self, outage: Outage) -> str:
        return f"waiting for {outage.what}: down {self.clock() - outage.since:.0f} s"

    def too_long(self) -> list[Outage]:
        """The outages that have lasted past the tolerance."""
        with self._lock:
            return [o for o in self.down.values() if o.length_s > self.tolerance_s]

    def check(self, session: str, spare: Collection[str] = ()) -> None:
        """Raise :class:`OutageTooLong` when an outage has lasted past the tolerance.

        ``spare``: what the caller copes with itself (a platform that hosts only some clients).
        """
        for outage in self.too_long():
            if outage.what not in spare:
                raise self.stop(outage, session)

    def stop(self, outage: Outage, session: str) -> OutageTooLong:
        """The error that stops ``session`` because of ``outage``."""
        return OutageTooLong(
            outage.kind,
            f"session {session} stopped ({outage.kind}): {outage.what} did not answer for "
            f"{outage.length_s:.0f} s, past outage_tolerance_s {self.tolerance_s:g} ({outage.error}); "
            f"once it is back: fedkeeper resume {session}",
        )


class OutageWatch:
    """Outages as the keeper lives with them: it says what it waits for, sleeps until the next
    probe, and notes when something is back.

    Parameters
    ----------
    outages
        What is down (shared by the session's keeper and its round driver).
    reporter
        Where the waiting is told.
    session
        The session's id, named when an outage stops it.
    spare
        What the caller copes with itself (:meth:`Outages.check`): the client-only platforms.
    sleep
        Injected for tests; ``time.sleep`` otherwise.
    """

    def __init__(
        self,
        outages: Outages,
        reporter: Reporter,
        session: str,
        spare: Collection[str],
        sleep: Callable[[float], None],
    ) -> None:
        self.outages = outages
        self.reporter = reporter
        self.session = session
        self.spare = spare
        self.sleep = sleep

    def check(self) -> None:
        """Raise :class:`OutageTooLong` for an outage past the tolerance (the spared ones aside)."""
        self.outages.check(self.session, spare=self.spare)

    def waiting(self, outage: Outage) -> None:
        """Say that the keeper waits for ``outage`` (raises past the tolerance)."""
        self.check()
        now = self.outages.clock()
        self.reporter.event(
            "waiting", what=outage.what, reason=outage.kind, down_s=round(now - outage.since, 1),
            error=outage.error[:300],
        )  # fmt: skip
        self.reporter.say(self.outages.waiting(outage))

    def wait(self, outage: Outage) -> None:
        """Say what the keeper waits for, then sleep until the next probe."""
        self.waiting(outage)
        self.sleep(max(0.0, outage.next_probe - self.outages.clock()))

    def back(self, *whats: str | None) -> None:
        """Note that each of ``whats`` answered (an outage of it is over)."""
        for what in whats:
            down_s = self.outages.recovered(what) if what else None
            if down_s is not None:
                self.reporter.event("outage_over", what=what, down_s=round(down_s, 1))
                self.reporter.say(f"{what} is back after {down_s:.0f} s")
