"""``/metrics`` over the recorded session, parsed with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from fedkeeper.function.config import parse_config

from .conftest import Served, record_session, serve_config


def scrape(served: Served) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample, by name and labels."""
    answer = served.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_count_rounds_accuracy_activations_retries_and_durations(served: Served) -> None:
    s = served.session
    samples = scrape(served)
    assert value(samples, "fedkeeper_store_up") == 1
    assert value(samples, "fedkeeper_sessions", phase="Running") == 1
    assert value(samples, "fedkeeper_session_phase", session=s, phase="Running") == 1
    assert value(samples, "fedkeeper_session_phase", session=s, phase="Succeeded") == 0
    assert value(samples, "fedkeeper_session_round", session=s) == 1
    assert value(samples, "fedkeeper_rounds_aggregated_total", session=s) == 1
    assert value(samples, "fedkeeper_session_accuracy", session=s) == 0.5
    assert value(samples, "fedkeeper_session_loss", session=s) == 1.25
    assert value(samples, "fedkeeper_session_federated_accuracy", session=s) == 0.48
    assert value(samples, "fedkeeper_round_retries_total", session=s) == 1
    ow = {"session": s, "platform": "openwhisk", "cluster": "local"}
    gcf = {"session": s, "platform": "google", "cluster": "gcf", "function": "fl_invoker_weights_update"}
    assert value(samples, "fedkeeper_activations_total", **ow, function="fl_client", status="success") == 4
    assert value(samples, "fedkeeper_activations_total", **ow, function="fl_client", status="submitted") == 1
    assert value(samples, "fedkeeper_activations_total", **gcf, status="timed out") == 1
    assert value(samples, "fedkeeper_activation_retries_total", **gcf) == 1
    # The four fl_client runs took 2.0, 2.1, 2.2 and 1.8 s: all in the 2.5 s bucket, none in 1 s.
    client = {"session": s, "platform": "openwhisk", "function": "fl_client"}
    assert value(samples, "fedkeeper_activation_duration_seconds_count", **client) == 4
    assert abs(value(samples, "fedkeeper_activation_duration_seconds_sum", **client) - 8.1) < 1e-9
    assert value(samples, "fedkeeper_activation_duration_seconds_bucket", **client, le="1.0") == 0
    assert value(samples, "fedkeeper_activation_duration_seconds_bucket", **client, le="2.5") == 4
    assert value(samples, "fedkeeper_round_duration_seconds_count", session=s) == 1
    assert value(samples, "fedkeeper_round_duration_seconds_bucket", session=s, le="10.0") == 0
    assert value(samples, "fedkeeper_round_duration_seconds_bucket", session=s, le="30.0") == 1
    assert not [k for k in samples if k[0] == "fedkeeper_session_cost"]  # no cost recorded: no series


def test_a_recorded_cost_and_a_new_session_show_at_the_next_scrape(served: Served) -> None:
    record_session(served.store, parse_config(serve_config("mongodb://unused", "unused")), "s-costly")
    served.store.db.sessions.update_one(
        {"_id": "s-costly"}, {"$set": {"cost": {"total": 0.42, "currency": "USD"}}}
    )
    try:
        samples = scrape(served)
        assert value(samples, "fedkeeper_sessions", phase="Running") == 2
        assert value(samples, "fedkeeper_session_cost", session="s-costly", currency="USD") == 0.42
        assert served.get("/api/v1/sessions/s-costly").json()["status"]["cost"] == {
            "total": 0.42,
            "currency": "USD",
        }
    finally:
        for name in ("sessions", "rounds", "activations", "partitions"):
            served.store.db[name].delete_many(
                {"session": "s-costly"} if name != "sessions" else {"_id": "s-costly"}
            )
