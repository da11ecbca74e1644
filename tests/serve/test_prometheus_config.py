"""FedKeeper's ``prometheus_config`` honoured: ``fedkeeper serve`` reads the Prometheus servers it names.

A real Prometheus (Debian's) scrapes a real node exporter; FedKeeper's reference config names it
as the cluster's node-metrics server, and a port nothing listens on as its platform (OpenWhisk) one.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fedkeeper.function.config import GUEST_AUTH
from fedkeeper.host.serve.process import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
SHARED = next(p / "shared" for p in ROOT.parents if (p / "shared" / "reference").is_dir())
REFERENCE = SHARED / "reference" / "fedkeeper-original-config.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: scripts/setup.sh installs it (Debian package {name.split('-')[0]}...)"
    return path


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A Prometheus scraping a node exporter every second: (Prometheus URL, the exporter's instance)."""
    exporter_at = f"127.0.0.1:{free_port()}"
    prometheus_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: node\n    static_configs: [{{targets: ['{exporter_at}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    exporter = subprocess.Popen(
        [binary("prometheus-node-exporter"), f"--web.listen-address={exporter_at}"], stdout=log, stderr=log
    )
    server = subprocess.Popen(
        [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=log, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{prometheus_port}"
    try:
        # rate() over the CPU counters needs two scrapes: wait until the CPU query has an answer.
        query = 'rate(node_cpu_seconds_total{mode="idle"}[1m])'
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                answer = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=2).json()
                if answer["data"]["result"]:
                    break
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.5)
        yield url, exporter_at
    finally:
        stop(server)
        stop(exporter)
        log.close()


def test_fedkeepers_prometheus_config_is_read_by_serve_for_clusters_and_metrics(
    prometheus: tuple[str, str], mongo_url: str, tmp_path: Path
) -> None:
    url, instance = prometheus
    closed = free_port()
    prometheus_port = url.rsplit(":", 1)[1]
    text = REFERENCE.read_text()
    for placeholder, value in {
        "https://<ADD OW_AUTH here>@<ADD_IP_HERE>:31001": f"http://{GUEST_AUTH}@127.0.0.1:9",
        "<ADD OW_AUTH here>": GUEST_AUTH,
        "<ADD API HOST of OW>": "127.0.0.1:9",
        "<ADD_PROJECT_ID_HERE>": "fedkeeper-test",
        "<ADD_MONGO_IP_HERE>:27017": mongo_url.removeprefix("mongodb://"),
        ".obj": ".npy",
        'port_openwhisk_metrics: "30325"': f'port_openwhisk_metrics: "{closed}"',
        'port_node_metrics: "30471"': f'port_node_metrics: "{prometheus_port}"',
    }.items():
        assert placeholder in text, placeholder
        text = text.replace(placeholder, value)
    config = tmp_path / "config-sample.yaml"
    config.write_text(text)  # host "" : the Prometheus servers are on base_url's host, 127.0.0.1

    with ServeProcess(config) as server:
        clusters = requests.get(f"{server.url}/api/v1/clusters", timeout=30).json()
        metrics = requests.get(f"{server.url}/metrics", timeout=30).text

    (invasic,) = [c for c in clusters if c["name"] == "invasic_cluster"]
    readings = {r["source"]: r for r in invasic["prometheus"]}
    node, platform = readings["node"], readings["platform"]
    assert node["up"] and node["url"] == url and node["error"] is None
    assert node["values"]["targets"] == {"": 1.0} and node["values"]["targets_up"] == {"": 1.0}
    assert 0 < node["values"]["memory_available_ratio"][instance] <= 1
    assert 0 <= node["values"]["cpu_busy_ratio"][instance] <= 1
    assert instance in node["values"]["load1"]
    assert not platform["up"] and "ClientConnectorError" in platform["error"]
    assert GUEST_AUTH.split(":")[1] not in str(clusters)

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    where = (("cluster", "invasic_cluster"), ("platform", "openwhisk"))
    assert samples[("fedkeeper_cluster_prometheus_up", (*where, ("source", "node")))] == 1
    assert samples[("fedkeeper_cluster_prometheus_up", (*where, ("source", "platform")))] == 0
    assert samples[("fedkeeper_cluster_scrape_targets_up", (*where, ("source", "node")))] == 1
    memory = samples[
        ("fedkeeper_cluster_node_memory_available_ratio", (*where[:1], ("instance", instance), where[1]))
    ]
    assert 0 < memory <= 1
