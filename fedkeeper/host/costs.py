"""What a round cost: bytes per link and money per activation, from the ledger and the round's metrics.

An activation costs ``GB-seconds * gb_second + invocation + GB moved * gb_transferred`` at the prices
of the platform it ran on (``server_config.prices``, defaults in the catalog). GB-seconds are its
recorded duration (no platform rounding) times its function's configured memory. Every attempt the
platform accepted is billed, failed ones too; one it never started costs nothing. A client reached
through the invoker is billed twice: the invoker on the server's platform, and the client on its own
for the invoker's duration (its own is not recorded; the invoker's bounds it).

Bytes are counted per :data:`LINKS` entry and priced at the platform of the function moving them:
every client attempt reads the round's global weights, every stored update was written by its
client, and the aggregator reads the weights and the included updates and writes the next weights.
With ``topology: hierarchical`` each local aggregator reads the weights and its group's updates and
writes its partial (:data:`LOCAL_TO_GLOBAL`, read by the global aggregator), and the global
aggregator reads the weights and the updates of any group whose partial it had to make itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedkeeper.function.catalog import AGGREGATOR_FUNCTION, CLIENT_FUNCTION, INVOKER_FUNCTION
from fedkeeper.function.prices import GB, Prices
from fedkeeper.function.strategies import ClientRate
from fedkeeper.host.ledger import LedgerEntry, LedgerStatus, group_of
from fedkeeper.host.placement import Route
from fedkeeper.host.plan import Plan

CLIENT_TO_STORE = "client_to_store"  # each stored update
STORE_TO_CLIENT = "store_to_client"  # the global weights, once per client attempt
STORE_TO_AGGREGATOR = "store_to_aggregator"  # the weights and the included updates
AGGREGATOR_TO_STORE = "aggregator_to_store"  # the next global weights
LOCAL_TO_GLOBAL = "local_to_global"  # each group's partial, from its local aggregator to the global one
LINKS: tuple[str, ...] = (
    CLIENT_TO_STORE,
    STORE_TO_CLIENT,
    STORE_TO_AGGREGATOR,
    AGGREGATOR_TO_STORE,
    LOCAL_TO_GLOBAL,
)
# Attempts the platform never ran: no invocation, no bytes.
NOT_RUN = {LedgerStatus.NOT_STARTED, LedgerStatus.SUBMITTED}


@dataclass(frozen=True)
class RoundCost:
    """A round's cost: ``compute`` (GB-seconds and invocations), ``transfer``, and bytes per link."""

    compute: float = 0.0
    transfer: float = 0.0
    bytes: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(LINKS, 0))

    @property
    def total(self) -> float:
        return self.compute + self.transfer

    def to_doc(self) -> dict[str, Any]:
        """As the round's metrics keep it (``cost``, ``bytes``)."""
        return {
            "cost": self.total,
            "compute_cost": self.compute,
            "transfer_cost": self.transfer,
            "bytes": dict(self.bytes),
        }


def activation_cost(prices: Prices, memory_mb: int, duration_ms: int | None, invoked: bool) -> float:
    """GB-seconds times the GB-second price, plus the invocation price if the platform accepted it."""
    gb_seconds = (duration_ms or 0) / 1000 * memory_mb / 1024
    return gb_seconds * prices.gb_second + (prices.invocation if invoked else 0.0)


def round_cost(
    entries: Iterable[LedgerEntry],
    metrics: Mapping[str, Any],
    prices_of: Callable[[str], Prices],
    memory_of: Callable[[str], int],
) -> RoundCost:
    """The cost of a round's ledger ``entries`` and of the bytes its ``metrics`` record.

    ``metrics``: the aggregator's (``weights_bytes``, ``update_bytes_by_client``, and with groups
    ``groups`` and ``partial_bytes_by_group``; absent counts 0).
    ``prices_of(platform)``, ``memory_of(function)``: the session's price tables and memory limits.
    """
    weights = int(metrics.get("weights_bytes") or 0)
    uploads = {int(c): int(b) for c, b in (metrics.get("update_bytes_by_client") or {}).items()}
    moved = dict.fromkeys(LINKS, 0)
    compute = transfer = 0.0
    client_platform: dict[int, str] = {}
    groups = {int(g): [int(c) for c in members] for g, members in (metrics.get("groups") or {}).items()}
    partials = {int(g): int(b) for g, b in (metrics.get("partial_bytes_by_group") or {}).items()}
    reduced: set[int] = set()  # groups whose partial a local aggregator read its updates for

    def group_uploads(members: Iterable[int]) -> int:
        return sum(uploads.get(c, 0) for c in members)

    def move(link: str, size: int, platform: str) -> None:
        nonlocal transfer
        moved[link] += size
        transfer += size / GB * prices_of(platform).gb_transferred

    for e in entries:
        if e.status in NOT_RUN:
            continue
        invoked = e.activation_id is not None or e.duration_ms is not None
        compute += activation_cost(prices_of(e.platform), memory_of(e.function), e.duration_ms, invoked)
        if e.function in (CLIENT_FUNCTION, INVOKER_FUNCTION) and e.client >= 0:
            runs_on = e.target.split("/", 1)[0] if e.target else e.platform
            if e.target:  # the client's own run on its platform, reached through the invoker
                invoked_target = e.target_activation_id is not None
                compute += activation_cost(
                    prices_of(runs_on), memory_of(CLIENT_FUNCTION), e.duration_ms, invoked_target
                )
            client_platform[e.client] = runs_on
            if e.status != LedgerStatus.UNAVAILABLE:
                move(STORE_TO_CLIENT, weights, runs_on)
        elif e.function == AGGREGATOR_FUNCTION and e.status == LedgerStatus.SUCCESS:
            group = group_of(e.client)
            if group is None and not groups:
                move(STORE_TO_AGGREGATOR, weights + sum(uploads.values()), e.platform)
                move(AGGREGATOR_TO_STORE, weights, e.platform)
            elif group is not None and group in partials and group not in reduced:
                reduced.add(group)
                move(STORE_TO_AGGREGATOR, weights + group_uploads(groups.get(group, ())), e.platform)
                move(LOCAL_TO_GLOBAL, partials[group], e.platform)
            elif group is None:  # the global aggregator: the groups left without a partial
                alone = [c for g, members in groups.items() if g not in partials for c in members]
                move(STORE_TO_AGGREGATOR, weights + group_uploads(alone), e.platform)
                move(AGGREGATOR_TO_STORE, weights, e.platform)
    for client, size in uploads.items():
        platform = client_platform.get(client)
        if platform is not None:
            move(CLIENT_TO_STORE, size, platform)
    return RoundCost(compute, transfer, moved)


def client_rates(
    plan: Plan, prices_of: Callable[[str], Prices], weights_bytes: int, update_bytes: int
) -> dict[int, ClientRate]:
    """What an attempt of each client costs, as :func:`round_cost` would price it: its run per
    second and its invocation(s) and bytes (the weights down, an update of ``update_bytes`` up)."""
    server = prices_of(plan.server[0])
    rates = {}
    for p in plan.placements:
        own = prices_of(p.platform)
        per_second = plan.limits[CLIENT_FUNCTION].memory / 1024 * own.gb_second
        per_run = own.invocation + (weights_bytes + update_bytes) / GB * own.gb_transferred
        if p.route is Route.VIA_INVOKER:  # the invoker runs as long, on the server's platform
            per_second += plan.limits[INVOKER_FUNCTION].memory / 1024 * server.gb_second
            per_run += server.invocation
        rates[p.client] = ClientRate(per_second, per_run)
    return rates


def rates_after(
    plan: Plan, prices_of: Callable[[str], Prices], last: Mapping[str, Any]
) -> dict[int, ClientRate]:
    """Each client's rate from the bytes the previous round's metrics ``last`` record (the weights,
    the mean update; none before the first round)."""
    uploads = list((last.get("update_bytes_by_client") or {}).values())
    mean_upload = int(sum(uploads) / len(uploads)) if uploads else 0
    return client_rates(plan, prices_of, int(last.get("weights_bytes") or 0), mean_upload)


def expected_round_cost(
    rates: Mapping[int, ClientRate], clients: Sequence[int], per_round: int, duration_s: float
) -> float:
    """What a round's client attempts are expected to cost: ``min(per_round, len(clients))`` of
    ``clients`` drawn uniformly, each running ``duration_s`` at its rate."""
    if not clients:
        return 0.0
    each = [rates[c].per_second * duration_s + rates[c].per_run for c in clients]
    return min(per_round, len(clients)) * sum(each) / len(clients)
