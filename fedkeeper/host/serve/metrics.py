"""``/metrics``: the store's sessions and the clusters' Prometheus servers in Prometheus' text format.

Each server has its own :class:`~prometheus_client.CollectorRegistry` (nothing global): its
collectors read the store when scraped, so the figures are those of the moment, whichever
process wrote them. Counters are cumulative per session (``fedkeeper_activations_total``), gauges
are the latest value (``fedkeeper_session_accuracy``); a store that does not answer is
``fedkeeper_store_up 0``, not a failed scrape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fedkeeper.function.errors import StoreError, StoreUnavailable
from fedkeeper.function.store.statuses import Phase
from fedkeeper.host.serve.documents import Histogram, StatusReader, Telemetry
from fedkeeper.host.serve.sources import Reading

PHASES = tuple(p.value for p in Phase)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StoreCollector(Collector):
    """Sessions, rounds and activations of the ``limit`` newest sessions, read at scrape time."""

    def __init__(self, reader: StatusReader, limit: int) -> None:
        self.reader = reader
        self.limit = limit

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("fedkeeper_store_up", "Whether the store answered this scrape")
        try:
            telemetry = self.reader.telemetry(self.limit)
        except (StoreUnavailable, StoreError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _sessions(telemetry)
        yield from _activations(telemetry)
        yield _histogram(
            "fedkeeper_activation_duration_seconds",
            "How long activations ran, as their platform recorded it",
            ["session", "platform", "function"],
            telemetry.activation_seconds,
        )
        yield _histogram(
            "fedkeeper_round_duration_seconds",
            "How long rounds took, from opening to aggregation",
            ["session"],
            telemetry.round_seconds,
        )


class SourcesCollector(Collector):
    """The last answers of the clusters' Prometheus servers (``prometheus_config``).

    The server refreshes ``readings`` (asynchronously, with a time-out) before each scrape.
    """

    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def collect(self) -> Iterator[Metric]:
        where = ["platform", "cluster", "source"]
        up = GaugeMetricFamily(
            "fedkeeper_cluster_prometheus_up",
            "Whether the cluster's Prometheus server answered",
            labels=where,
        )
        targets = GaugeMetricFamily(
            "fedkeeper_cluster_scrape_targets",
            "Targets the cluster's Prometheus server scrapes",
            labels=where,
        )
        targets_up = GaugeMetricFamily(
            "fedkeeper_cluster_scrape_targets_up", "Of those, the ones that are up", labels=where
        )
        node = {
            "cpu_busy_ratio": "Share of the node's CPU time not idle (last minute)",
            "memory_available_ratio": "Share of the node's memory available",
            "load1": "The node's one-minute load average",
        }
        node_families = {
            name: GaugeMetricFamily(
                f"fedkeeper_cluster_node_{name}", text, labels=["platform", "cluster", "instance"]
            )
            for name, text in node.items()
        }
        action = {
            "activations": "Activations of the action, as OpenWhisk counts them",
            "cold_starts": "Cold starts of the action, as OpenWhisk counts them",
        }
        action_families = {
            name: CounterMetricFamily(
                f"fedkeeper_cluster_action_{name}", text, labels=["platform", "cluster", "action"]
            )
            for name, text in action.items()
        }
        for r in self.readings:
            up.add_metric([r.platform, r.cluster, r.source], 1 if r.up else 0)
            scrape_families: tuple[tuple[str, GaugeMetricFamily], ...] = (
                ("targets", targets),
                ("targets_up", targets_up),
            )
            for name, gauge in scrape_families:
                if "" in r.values.get(name, {}):
                    gauge.add_metric([r.platform, r.cluster, r.source], r.values[name][""])
            for name, gauge in node_families.items():
                for instance, value in r.values.get(name, {}).items():
                    gauge.add_metric([r.platform, r.cluster, instance], value)
            for name, counter in action_families.items():
                for act, value in r.values.get(name, {}).items():
                    counter.add_metric([r.platform, r.cluster, act], value)
        yield from (up, targets, targets_up, *node_families.values(), *action_families.values())


def build_registry(reader: StatusReader, limit: int, sources: SourcesCollector) -> CollectorRegistry:
    """A server's own registry: the store's collector and the clusters' Prometheus servers'."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(reader, limit))
    registry.register(sources)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (collectors run now)."""
    return generate_latest(registry)


# --------------------------------------------------------------------------- families
def _sessions(t: Telemetry) -> Iterator[Metric]:
    phases = GaugeMetricFamily("fedkeeper_sessions", "Sessions in the store, by phase", labels=["phase"])
    for name in sorted({*PHASES, *t.phases}):
        phases.add_metric([name], t.phases.get(name, 0))
    yield phases
    phase = GaugeMetricFamily(
        "fedkeeper_session_phase", "1 for the phase the session is in", labels=["session", "phase"]
    )
    current = GaugeMetricFamily(
        "fedkeeper_session_round", "The round the session is at (rounds done so far)", labels=["session"]
    )
    rounds = CounterMetricFamily("fedkeeper_rounds_aggregated", "Rounds aggregated", labels=["session"])
    accuracy = GaugeMetricFamily(
        "fedkeeper_session_accuracy", "Test accuracy after the latest aggregated round", labels=["session"]
    )
    loss = GaugeMetricFamily(
        "fedkeeper_session_loss", "Test loss after the latest aggregated round", labels=["session"]
    )
    federated = GaugeMetricFamily(
        "fedkeeper_session_federated_accuracy",
        "Federated evaluation's accuracy after the latest aggregated round (once it is evaluated)",
        labels=["session"],
    )
    retries = CounterMetricFamily(
        "fedkeeper_round_retries",
        "Client retries in aggregated rounds (the keeper's count)",
        labels=["session"],
    )
    failed = CounterMetricFamily(
        "fedkeeper_round_failed_clients", "Clients given up in aggregated rounds", labels=["session"]
    )
    cost = GaugeMetricFamily(
        "fedkeeper_session_cost", "The session's cost so far", labels=["session", "currency"]
    )
    for s in t.sessions:
        name = s["name"]
        for known in PHASES:
            phase.add_metric([name, known], 1 if s["phase"] == known else 0)
        current.add_metric([name], s["currentRound"])
        rounds.add_metric([name], s["aggregations"])
        if s["accuracy"] is not None:
            accuracy.add_metric([name], s["accuracy"])
        if s["loss"] is not None:
            loss.add_metric([name], s["loss"])
        if s["federatedAccuracy"] is not None:
            federated.add_metric([name], s["federatedAccuracy"])
        totals = t.round_totals.get(name, {})
        retries.add_metric([name], totals.get("retries", 0))
        failed.add_metric([name], totals.get("failed_clients", 0))
        amount = _cost(s.get("cost"))
        if amount is not None:
            cost.add_metric([name, amount[1]], amount[0])
    yield from (phase, current, rounds, accuracy, loss, federated, retries, failed, cost)


def _activations(t: Telemetry) -> Iterator[Metric]:
    keys = ["session", "platform", "cluster", "function", "status"]
    total = CounterMetricFamily(
        "fedkeeper_activations",
        "Activations the keeper recorded, by where they ran and how they ended",
        labels=keys,
    )
    retries = CounterMetricFamily(
        "fedkeeper_activation_retries", "Activations that were a retry (attempt 2 or later)", labels=keys[:4]
    )
    summed: dict[tuple[str, ...], int] = {}
    for g in t.activations:
        total.add_metric([str(g[k]) for k in keys], g["count"])
        where = tuple(str(g[k]) for k in keys[:4])
        summed[where] = summed.get(where, 0) + g["retries"]
    for where, count in sorted(summed.items()):
        retries.add_metric(list(where), count)
    yield from (total, retries)


def _histogram(name: str, documentation: str, labels: list[str], series: list[Histogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for h in series:
        buckets = [(_bound(b), count) for b, count in h.buckets] + [("+Inf", h.count)]
        family.add_metric([h.labels[k] for k in labels], buckets, h.total)
    return family


def _bound(value: float) -> str:
    return repr(float(value))


def _cost(value: Any) -> tuple[float, str] | None:
    """A stored cost as (amount, currency): a number, or ``{total|amount, currency}``."""
    if isinstance(value, dict):
        amount, currency = value.get("total", value.get("amount")), str(value.get("currency") or "")
    else:
        amount, currency = value, ""
    if isinstance(amount, int | float) and not isinstance(amount, bool) and math.isfinite(amount):
        return float(amount), currency
    return None
