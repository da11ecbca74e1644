"""The Prometheus servers a cluster names (FedKeeper's ``prometheus_config``), read through their HTTP API.

FedKeeper's clusters name two: one scraping the platform itself (OpenWhisk's metrics), one
scraping the cluster's node exporters. ``fedkeeper serve`` asks each a few instant queries (read only, a short time-out, all
at once) and keeps the answers for a few seconds, so a dashboard and a scraper polling together
cost one round of queries. A server that does not answer is reported down, never an error of the
request that asked.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from fedkeeper.function.catalog import PLATFORMS
from fedkeeper.function.config import Config
from fedkeeper.function.redaction import redact

# source -> name -> (PromQL, the label that tells the series apart)
QUERIES: dict[str, dict[str, tuple[str, str | None]]] = {
    "platform": {  # OpenWhisk's user-events metrics
        "targets": ("count(up)", None),
        "targets_up": ("sum(up)", None),
        "activations": ("sum by (action) (openwhisk_action_activations_total)", "action"),
        "cold_starts": ("sum by (action) (openwhisk_action_coldStarts_total)", "action"),
    },
    "node": {
        "targets": ("count(up)", None),
        "targets_up": ("sum(up)", None),
        "cpu_busy_ratio": (
            'sum by (instance) (1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[1m])))',
            "instance",
        ),
        "memory_available_ratio": (
            "sum by (instance) (node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)",
            "instance",
        ),
        "load1": ("sum by (instance) (node_load1)", "instance"),
    },
}
SOURCE_FIELDS = {"platform": "platform_url", "node": "node_url"}


@dataclass(frozen=True)
class Reading:
    """What one Prometheus server answered for one cluster.

    ``values`` maps a query's name to its series, by the query's label value (``""`` for a single
    number).
    """

    platform: str
    cluster: str
    source: str
    url: str  # redacted
    up: bool
    error: str | None = None
    values: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_doc(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "url": self.url,
            "up": self.up,
            "error": self.error,
            "values": self.values,
        }


@dataclass(frozen=True)
class Target:
    platform: str
    cluster: str
    source: str
    url: str


def targets(config: Config) -> list[Target]:
    """Every Prometheus server the config's clusters name, in catalog order."""
    out = []
    for platform in PLATFORMS:
        for name, settings in config.providers.clusters(platform.name).items():
            sources = getattr(settings, "prometheus", None)  # only some cluster kinds have them
            for source, key in SOURCE_FIELDS.items():
                url = getattr(sources, key, None) if sources is not None else None
                if url:
                    out.append(Target(platform.name, name, source, url.rstrip("/")))
    return out


class Sources:
    """Reads every configured Prometheus server, at most once per ``max_age_s``.

    Parameters
    ----------
    config
        Names the servers (``providers.<platform>.<cluster>.prometheus``).
    timeout_s
        How long one query may take.
    max_age_s
        How long answers are reused.
    """

    def __init__(self, config: Config, timeout_s: float = 2.0, max_age_s: float = 5.0) -> None:
        self.targets = targets(config)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_age_s = max_age_s
        self.latest: list[Reading] = []
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()

    async def read(self) -> list[Reading]:
        """The servers' answers, fresh or at most ``max_age_s`` old."""
        if not self.targets:
            return []
        async with self._lock:  # callers arriving together share one round of queries
            if time.monotonic() - self._read_at >= self.max_age_s:
                async with aiohttp.ClientSession(timeout=self.timeout) as session:
                    self.latest = list(await asyncio.gather(*(self._read(session, t) for t in self.targets)))
                self._read_at = time.monotonic()
            return self.latest

    async def _read(self, session: aiohttp.ClientSession, target: Target) -> Reading:
        queries = QUERIES[target.source]
        shown = redact(target.url)
        try:
            answers = await asyncio.gather(
                *(_query(session, target.url, promql) for promql, _ in queries.values())
            )
            values = {
                name: {
                    str(s["metric"].get(label, "") if label else ""): v
                    for s in series
                    if math.isfinite(v := float(s["value"][1]))  # 0/0 on an idle node: no JSON for NaN
                }
                for (name, (_, label)), series in zip(queries.items(), answers, strict=True)
            }
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
            error = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])[:200]
            return Reading(target.platform, target.cluster, target.source, shown, False, error)
        return Reading(target.platform, target.cluster, target.source, shown, True, values=values)


async def _query(session: aiohttp.ClientSession, url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's vector (Prometheus' ``/api/v1/query``)."""
    async with session.get(f"{url}/api/v1/query", params={"query": promql}) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status} from {url}/api/v1/query")
        body = await response.json(content_type=None)
    if not isinstance(body, dict) or body.get("status") != "success":
        raise ValueError(f"{url}/api/v1/query did not answer a Prometheus query result")
    data = body.get("data") or {}
    if data.get("resultType") != "vector":
        raise ValueError(f"{url}/api/v1/query answered a {data.get('resultType')}, not a vector")
    return list(data.get("result") or [])
