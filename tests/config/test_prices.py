"""``server_config.prices``, ``max_cost`` and ``objective``: defaults from the catalog, one-line errors."""

from __future__ import annotations

from typing import Any

import pytest

from fedkeeper.function.catalog import PLATFORMS
from fedkeeper.function.config import parse_config
from fedkeeper.function.errors import ConfigError
from tests.config.test_config import sample


def _server(**fields: Any) -> dict[str, Any]:
    data = sample()
    data["scenarios"]["federated_learning"]["server_config"].update(fields)
    return data


def test_every_platform_prices_as_its_catalog_line_and_a_given_figure_replaces_only_itself() -> None:
    server = parse_config(_server(prices={"google": {"invocation": 0.000001}})).fl.server_config
    for p in PLATFORMS:
        if p.name != "google":
            assert server.prices_of(p.name) == p.prices
    google = server.prices_of("google")
    defaults = next(p for p in PLATFORMS if p.name == "google").prices
    assert google.invocation == 0.000001
    assert (google.gb_second, google.gb_transferred) == (defaults.gb_second, defaults.gb_transferred)
    assert defaults.gb_second > 0 and server.prices_of("openwhisk").gb_second == 0  # list price; self-hosted


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"prices": {"azure": {"gb_second": 1}}},
            "prices: unknown platform 'azure' (known: openwhisk, google, aws, edge, hosts)",
        ),
        (
            {"prices": {"aws": {"gb_second": -1}}},
            "prices.aws.gb_second: Input should be greater than or equal to 0 (got -1)",
        ),
        ({"prices": {"aws": {"per_hour": 1}}}, "prices.aws.per_hour: Extra inputs are not permitted (got 1)"),
        ({"prices": {"aws": 3}}, "prices: aws: must be a mapping of gb_second, invocation, gb_transferred"),
        ({"max_cost": 0}, "max_cost: Input should be greater than 0 (got 0)"),
        (
            {"objective": "cheapest"},
            "objective: Input should be 'none' or 'min_cost_to_target' (got 'cheapest')",
        ),
        (
            {"objective": "min_cost_to_target", "selection": "round_robin"},
            "selection 'round_robin': objective min_cost_to_target chooses the clients itself; drop one of them",
        ),
    ],
)
def test_a_bad_price_budget_or_objective_is_one_line_naming_the_field(
    fields: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_server(**fields), "c.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("c.yaml: scenarios.federated_learning.server_config")
    assert message.endswith(expected), message
