"""Clients joining and leaving a running session, and the keeper's check that the change paid off.

A client is a *slot* of the configuration: ``clients_info`` places every slot on a cluster (the
Plan routes it and the cluster's deployment serves it) and init carves every slot's data
partition. ``server_config.standby_clients`` holds the last slots back at start; ``fedkeeper
clients add`` brings free slots of a cluster in, ``fedkeeper clients remove`` takes clients out
(:func:`join`, :func:`leave`: one atomic write each to the session's membership). A slot joins at
most once: one that left or was set aside stays out, so a cluster cannot serve more clients than
its deployment was made for.

At the next round boundary the keeper (:class:`Reconfigurer`) re-plans (:func:`replan`), records
the event with the expected cost per round before and after it, and watches
``server_config.validation_window`` rounds. If the accuracy gained per unit cost over them is worse
than over as many rounds before the change, a join is reverted: the joined clients are set aside.
A client that left cannot be brought back, so a worse leave is recorded and kept. Everything is in
the session's document, so a resumed keeper continues the window.

Edge devices join and leave the same way. At each round boundary the keeper reads every edge
cluster's fleet (one ``GET /v1/devices`` on its gateway) and compares it with the devices it saw
last (:meth:`Reconfigurer.notice`): a new device asks a free slot of its cluster to join, a device
gone makes the slot bound to it leave. A device that crashed and was restarted keeps its id, so it
is no change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from fedkeeper.function.catalog import CLIENT_FUNCTION, INVOKER_FUNCTION
from fedkeeper.function.config import ServerConfig
from fedkeeper.function.errors import ConfigError, FedkeeperError
from fedkeeper.function.invoke.edge import EdgeFleet
from fedkeeper.function.prices import CURRENCY
from fedkeeper.function.store.db import SessionStore
from fedkeeper.function.store.membership import DeviceBinding, Membership, Window
from fedkeeper.function.store.statuses import Phase, Task
from fedkeeper.host.costs import expected_round_cost, rates_after
from fedkeeper.host.ledger import Ledger
from fedkeeper.host.plan import Plan
from fedkeeper.host.reporting import Reporter


@dataclass(frozen=True)
class Yield:
    """Accuracy gained over rounds ``first..last`` (from the accuracy after ``first - 1``) and their cost."""

    first: int
    last: int
    gain: float
    cost: float

    @property
    def rounds(self) -> int:
        return self.last - self.first + 1

    def describe(self) -> str:
        return f"rounds {self.first}..{self.last}: accuracy {self.gain:+.4f} for {self.cost:.6f} {CURRENCY}"


def window_yield(metrics: Mapping[int, Mapping[str, Any]], first: int, last: int) -> Yield | None:
    """The yield of rounds ``first..last`` from their aggregated ``metrics`` (round -> metrics);
    None without the accuracy of round ``first - 1`` (round 0 has no accuracy before it)."""
    if (
        first < 1
        or last < first
        or any("accuracy" not in metrics.get(r, {}) for r in range(first - 1, last + 1))
    ):
        return None
    gain = float(metrics[last]["accuracy"]) - float(metrics[first - 1]["accuracy"])
    cost = sum(float(metrics[r].get("cost") or 0.0) for r in range(first, last + 1))
    return Yield(first, last, gain, cost)


def worse(before: Yield, after: Yield) -> bool:
    """Whether ``after`` gained less accuracy per unit cost than ``before``; per round when either
    cost nothing (free platforms)."""
    if before.cost > 0 and after.cost > 0:
        return after.gain / after.cost < before.gain / before.cost
    return after.gain / after.rounds < before.gain / before.rounds


def replan(plan: Plan, active: Sequence[int]) -> tuple[int, ...]:
    """The clients a round samples from, for the members ``active``: the one re-planning step."""
    routed = {p.client for p in plan.placements}
    return tuple(sorted(c for c in active if c in routed))


def initial_members(clients: int, standby: int) -> tuple[int, ...]:
    """The slots a session starts with: all but the last ``standby``."""
    return tuple(range(clients - standby))


# --------------------------------------------------------------------------- the operator's side
def _open_session(session: SessionStore) -> tuple[dict[str, Any], Membership]:
    doc = session.record.get()
    if doc["phase"] == Phase.SUCCEEDED:
        raise ConfigError(f"session {session.id} already finished (Succeeded): its clients cannot change")
    server = (doc.get("scenario") or {}).get("server_config") or {}
    if server.get("mode", "sync") != "sync":
        raise ConfigError(
            f"session {session.id} runs in {server['mode']} mode: clients join and leave sync rounds only"
        )
    standby = int(server.get("standby_clients", 0))
    return doc, session.membership.ensure(initial_members(len(doc.get("clients") or []), standby))


def join(session: SessionStore, cluster: str, count: int = 1) -> list[int]:
    """Ask for ``count`` free slots of ``cluster`` (``name`` or ``platform/name``) to join; returns them."""
    doc, members = _open_session(session)
    placements = doc.get("clients") or []
    on = [p for p in placements if cluster in (p["cluster"], f"{p['platform']}/{p['cluster']}")]
    if not on:
        names = sorted({f"{p['platform']}/{p['cluster']}" for p in placements})
        raise ConfigError(
            f"--cluster {cluster}: hosts no client of session {session.id} (clusters: {', '.join(names)})"
        )
    free = [int(p["client"]) for p in on if int(p["client"]) not in members.used]
    if count > len(free):
        raise ConfigError(
            f"--cluster {cluster}: {len(free)} free client slot(s), cannot add {count}; its deployment serves "
            f"{len(on)} clients (clients_info), each joins once (server_config.standby_clients holds some back)"
        )
    chosen = free[:count]
    if not session.membership.request_join(chosen):
        raise ConfigError(f"session {session.id}: its clients changed meanwhile; run the command again")
    return chosen


def leave(session: SessionStore, clients: Sequence[int]) -> None:
    """Ask for ``clients`` to leave (for good)."""
    _, members = _open_session(session)
    absent = [c for c in clients if c not in members.requested]
    if absent:
        raise ConfigError(
            f"client {absent[0]} is not a member of session {session.id} "
            f"(members: {', '.join(map(str, members.requested))})"
        )
    if set(members.requested) <= set(clients):
        raise ConfigError(f"session {session.id}: cannot remove every client")
    if not session.membership.request_leave(clients):
        raise ConfigError(f"session {session.id}: its clients changed meanwhile; run the command again")


# --------------------------------------------------------------------------- the keeper's side
class FleetSource(Protocol):
    """An edge cluster's gateway, as the keeper reads it (:class:`~fedkeeper.function.invoke.edge.EdgeClient`)."""

    def fleet(self) -> EdgeFleet: ...

    def pin_clients(self, clients: Mapping[int, int]) -> None: ...


class Reconfigurer:
    """At each round boundary: notice edge fleet changes, judge the open window, then plan a
    pending membership change.

    ``fleets``: the edge clusters hosting clients, by ``platform/cluster``.
    """

    def __init__(
        self,
        server: ServerConfig,
        plan: Plan,
        session: SessionStore,
        ledger: Ledger,
        reporter: Reporter,
        fleets: Mapping[str, FleetSource] | None = None,
    ) -> None:
        self.server = server
        self.plan = plan
        self.session = session
        self.ledger = ledger
        self.reporter = reporter
        self.fleets = dict(fleets or {})

    def at_boundary(self, round_number: int) -> tuple[int, ...]:
        """The clients round ``round_number`` samples from, after any verdict or change due before it.

        A round already opened (a resumed keeper) keeps its stored selection; changes wait a round.
        """
        record = self.session.membership
        members = record.ensure(initial_members(len(self.plan.placements), self.server.standby_clients))
        if not self.session.rounds.opened(round_number):
            for cluster, source in self.fleets.items():
                try:
                    self.notice(cluster, source)
                except FedkeeperError as exc:  # an outage: the round's dispatch meets it anyway
                    self.reporter.say(f"edge cluster {cluster}: fleet not read, no change noticed: {exc}")
            members = record.get()
            window = members.window
            if window is not None and round_number >= window.round + window.rounds:
                self._judge(window)
                members = record.get()
            if members.window is None and members.pending:
                self._change(members, round_number)
                members = record.get()
        return replan(self.plan, members.active)

    def notice(self, cluster: str, source: FleetSource) -> None:
        """Read edge cluster ``cluster``'s fleet and turn the devices that joined or left since the
        keeper last looked into join and leave requests; the first look binds its devices to its
        active slots in order. The gateway routes each bound slot to its device."""
        seen = source.fleet()
        record = self.session.membership
        known = record.binding(cluster)
        if known is None:
            active = set(record.get().active)
            ours = sorted(p.client for p in self.plan.placements if f"{p.platform}/{p.cluster}" == cluster)
            bound = dict(zip(seen.devices, [c for c in ours if c in active], strict=False))
            binding = DeviceBinding(cluster, seen.generation, {d: bound.get(d) for d in seen.devices})
            record.bind(binding)
            self._pin(source, binding, seen)
            return
        if set(seen.devices) == set(known.slots):
            if seen.generation != known.generation:  # devices came and went between looks, or a new gateway
                record.bind(replace(known, generation=seen.generation))
            self._pin(source, known, seen)
            return
        gone = {d: s for d, s in known.slots.items() if d not in seen.devices}
        slots = {d: s for d, s in known.slots.items() if d in seen.devices}
        notes: list[str] = []
        requested = set(record.get().requested)
        leaving = sorted(s for s in gone.values() if s is not None and s in requested)
        if leaving:
            try:
                leave(self.session, leaving)
            except ConfigError as exc:
                notes.append(str(exc))
        for device in (d for d in seen.devices if d not in known.slots):
            try:
                slots[device] = join(self.session, cluster)[0]
            except ConfigError as exc:  # no slot free: the device stays idle
                slots[device] = None
                notes.append(str(exc))
        binding = DeviceBinding(cluster, seen.generation, slots)
        record.bind(binding)
        self._pin(source, binding, seen)
        joined = [[d, slots[d]] for d in seen.devices if d not in known.slots]
        left = [[d, s] for d, s in sorted(gone.items())]
        self.reporter.event(
            "edge_fleet_changed",
            cluster=cluster,
            generation=seen.generation,
            joined=joined,
            left=left,
            notes=notes,
        )
        self.reporter.say(
            f"edge cluster {cluster}: fleet generation {seen.generation}, devices joined {joined}, "
            f"left {left} ([device, client slot])" + "".join(f"; {n}" for n in notes)
        )

    def _pin(self, source: FleetSource, binding: DeviceBinding, seen: EdgeFleet) -> None:
        """Pin the bound slots to their devices where the gateway does not route them so (a new
        binding, a restarted gateway); one that misses it is asked again at the next boundary."""
        pins = {slot: device for device, slot in binding.slots.items() if slot is not None}
        if all(seen.clients.get(slot) == device for slot, device in pins.items()):
            return
        try:
            source.pin_clients(pins)
        except FedkeeperError as exc:
            self.reporter.say(f"edge cluster {binding.cluster}: client slots not pinned to devices: {exc}")

    def _metrics(self) -> dict[int, dict[str, Any]]:
        return {int(d["round"]): dict(d.get("metrics") or {}) for d in self.session.rounds.all()}

    def _expected_costs(
        self, round_number: int, before: Sequence[int], after: Sequence[int]
    ) -> tuple[float, float]:
        """Expected cost per round of both member sets, at the last round's bytes and mean client run."""
        last = round_number - 1
        metrics = (self.session.rounds.get(last).get("metrics") or {}) if last >= 0 else {}
        rates = rates_after(self.plan, self.server.prices_of, metrics)
        runs = [
            e.duration_ms
            for e in (self.ledger.round_entries(last) if last >= 0 else [])
            if e.task is Task.FIT and e.client >= 0 and e.function in (CLIENT_FUNCTION, INVOKER_FUNCTION)
            and e.duration_ms is not None
        ]  # fmt: skip
        duration_s = sum(runs) / len(runs) / 1000 if runs else 0.0
        k = self.server.num_clients_per_round
        return (
            expected_round_cost(rates, replan(self.plan, before), k, duration_s),
            expected_round_cost(rates, replan(self.plan, after), k, duration_s),
        )

    def _change(self, members: Membership, round_number: int) -> None:
        active = tuple(sorted(members.requested))
        joined = tuple(sorted(set(active) - set(members.active)))
        left = tuple(sorted(set(members.active) - set(active)))
        cost_before, cost_after = self._expected_costs(round_number, members.active, active)
        span = self.server.validation_window
        before = window_yield(self._metrics(), max(1, round_number - span), round_number - 1)
        window = Window(
            members.events + 1, round_number, span, members.active, joined, left, cost_before, cost_after,
            asdict(before) if before else None,
        )  # fmt: skip
        reason = "ClientsJoined" if not left else "ClientsLeft" if not joined else "ClientsChanged"
        message = (
            f"at round {round_number}: joined {list(joined)}, left {list(left)}; expected cost per round "
            f"{cost_before:.6f} -> {cost_after:.6f} {CURRENCY}; validating over {span} rounds"
        )
        if self.session.membership.open_window(active, window, reason, message):
            self.reporter.event("reconfigured", reason=reason, **window.to_doc(), active=list(active))
            self.reporter.say(f"reconfigured {message}")

    def _judge(self, window: Window) -> None:
        after = window_yield(self._metrics(), window.round, window.round + window.rounds - 1)
        before = Yield(**window.before) if window.before else None
        revert = False
        if before is None or after is None:
            reason, verdict = "NoBaseline", "too few rounds before the change to compare with"
        elif worse(before, after):
            verdict = f"worse accuracy per cost, after ({after.describe()}) than before ({before.describe()})"
            revert = bool(window.joined)
            reason = "WorseAccuracyPerCost" if revert else "LeftCannotReturn"
        else:
            reason = "NotWorse"
            verdict = (
                f"accuracy per cost after ({after.describe()}) not worse than before ({before.describe()})"
            )
        message = f"change {window.change} at round {window.round}: {verdict}"
        if revert:
            message += f"; clients {list(window.joined)} set aside"
        if self.session.membership.close_window(window, reason, message, revert):
            self.reporter.event(
                "reconfiguration_reverted" if revert else "reconfiguration_kept",
                reason=reason,
                change=window.change,
                round=window.round,
                joined=list(window.joined),
                left=list(window.left),
                before=asdict(before) if before else None,
                after=asdict(after) if after else None,
            )
            self.reporter.say(message)
