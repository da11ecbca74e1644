"""The dashboard in a real headless chromium while a real session trains on the local fabric.

The page polls ``fedkeeper serve``; the test watches the plot gain a point as each round is
aggregated, scrapes ``/metrics`` mid-session, and keeps a screenshot of the finished page at
``artifacts/dashboard.png`` (``FEDKEEPER_ARTIFACTS`` moves it).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from fedkeeper.function.store.db import Store
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.serve.process import ServeProcess

from .browser import headless_chromium
from .conftest import E2E_LIMITS, training_config
from .helpers import run_session, wait_for

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("FEDKEEPER_ARTIFACTS", ROOT / "artifacts"))
ROUNDS = 3


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


@pytest.fixture
def slowed_fabric() -> Iterator[FabricProcess]:
    """Warm rounds take about a second; each client waits 2 s more so the page (redrawn every
    0.5 s) and the test (looking every 0.25 s) see every round's plot before the next one's."""
    faults = {"seed": 1, "actions": {"fl_client": {"latency_ms": 2000}}}
    with FabricProcess(limits=E2E_LIMITS, faults=faults) as process:
        yield process


def _text_of(browser: WebDriver, selector: str) -> str:
    """The text of the element at ``selector``, found again if a redraw replaced it mid-read."""
    for _ in range(20):
        try:
            return str(browser.find_element(By.CSS_SELECTOR, selector).text)
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"{selector}: replaced by every redraw for 2 s")


def test_dashboard_plot_gains_a_point_per_round_while_a_session_trains_and_metrics_follow_it(
    slowed_fabric: FabricProcess, mongo_url: str, tmp_path: Path
) -> None:
    data = training_config(slowed_fabric.url, mongo_url, tmp_path / "logs", max_rounds=ROUNDS)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    mongo = data["scenarios"]["federated_learning"]["mongo_config"]
    store = Store(mongo["url"], mongo["database"])
    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["session"] = run_session(data)[1]
        except BaseException as exc:  # reported by the test below
            outcome["error"] = exc

    with ServeProcess(config) as server, headless_chromium(tmp_path / "profile") as browser:
        browser.get(f"{server.url}/?refresh=0.5")
        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        seen: list[tuple[int, int]] = []  # (points on the plot, rounds aggregated in the store just after)
        during: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        deadline = time.monotonic() + 540
        while trainer.is_alive():
            assert time.monotonic() < deadline, f"the session did not finish; seen {seen}"
            points = int(browser.find_element(By.ID, "plot").get_attribute("data-points") or 0)
            aggregated = store.db.rounds.count_documents({"status": "aggregated"})
            seen.append((points, aggregated))
            if not during and 0 < aggregated < ROUNDS and store.db.sessions.find_one({"phase": "Running"}):
                during = scrape(server.url)
            time.sleep(0.25)
        trainer.join()
        assert "error" not in outcome, outcome.get("error")
        session = outcome["session"]

        plot = browser.find_element(By.ID, "plot")
        wait_for(lambda: plot.get_attribute("data-points") == str(ROUNDS), 15, "the last round on the plot")
        wait_for(lambda: browser.find_element(By.ID, "phase").text == "Succeeded", 15, "the final phase")
        assert len(plot.find_elements(By.CSS_SELECTOR, "circle.point.accuracy")) == ROUNDS
        assert len(plot.find_elements(By.CSS_SELECTOR, "circle.point.loss")) == ROUNDS
        # The page redraws its tables every 0.5 s: read the cell afresh, in one lookup.
        success = '#activations tr[data-place="openwhisk/local"] td[data-status="success"]'
        assert int(_text_of(browser, success)) >= 4 * ROUNDS
        assert _text_of(browser, "#aggregations") == str(ROUNDS)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        screenshot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(screenshot))
        after = scrape(server.url)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, ARTIFACTS / "dashboard.png")
    assert errors == []
    # The plot grew while the session ran, never ahead of the store, never back.
    points_seen = [p for p, _ in seen]
    assert any(0 < p < ROUNDS for p in points_seen), seen
    assert points_seen == sorted(points_seen), seen
    assert all(p <= a for p, a in seen), seen

    assert during, "no scrape while the session ran"
    assert total(during, "fedkeeper_session_phase", session=session, phase="Running") == 1
    assert 1 <= total(during, "fedkeeper_rounds_aggregated_total", session=session) < ROUNDS
    assert (
        total(during, "fedkeeper_activations_total", session=session, function="fl_client", status="success")
        >= 4
    )
    assert (
        total(during, "fedkeeper_activation_duration_seconds_count", session=session, function="fl_client")
        >= 4
    )
    assert total(after, "fedkeeper_rounds_aggregated_total", session=session) == ROUNDS
    assert total(after, "fedkeeper_session_phase", session=session, phase="Succeeded") == 1
    assert total(after, "fedkeeper_round_duration_seconds_count", session=session) == ROUNDS
    accuracy = total(after, "fedkeeper_session_accuracy", session=session)
    assert accuracy == store.for_session(session).rounds.all()[-1]["metrics"]["accuracy"]
