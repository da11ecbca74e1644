"""Update codecs: bytes stored per round and final accuracy, each codec against ``none``.

Every codec trains the same workload (same data split, round-0 weights, shuffles and client
selection) through fedkeeper's own functions called in this process (``fl_server_init``,
``fl_client``, ``fl_server_aggregator`` through the entry adapter every platform uses), against an
in-memory MongoDB-compatible server: the client stores its update with the session's codec (top-k's
residuals in MongoDB), the aggregator decodes while streaming. Only the codec differs between runs.
Bytes per round are the aggregator's ``update_bytes`` (the stored payloads of the round's updates).

    python bench/compression.py                 # mnist5k, mlp 784-64-10, 10 clients, 10 rounds
    python bench/compression.py --rounds 2 --clients 4 --dataset digits   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CODECS: list[Any] = ["none", "float16", "int8", {"codec": "topk", "fraction": 0.1}]


def scenario(args: argparse.Namespace, compression: Any) -> dict[str, Any]:
    from fedkeeper.function.config import DATASET_FEATURES, FederatedLearning

    return FederatedLearning.model_validate(
        {
            "server_config": {
                "cluster": "local",
                "max_rounds": args.rounds,
                "num_clients_per_round": args.clients,
                "compression": compression,
            },
            "clients_info": {"total_num_clients": args.clients, "ow_clients_count": args.clients},
            "training_test_data": {"dataset": args.dataset},
            "model_params": {
                "model": "mlp",
                "input_size": DATASET_FEATURES[args.dataset],
                "hidden_size": args.hidden,
                "optimizer": "adam",
                "learning_rate": args.lr,
                "local_epochs": 1,
                "batch_size": 32,
                "seed": 3,
            },
            "data_sampling": {"method": "iid", "seed": 42},
        }
    ).model_dump(mode="json", exclude={"mongo_config"})


def train(args: argparse.Namespace, url: str, compression: Any) -> tuple[list[int], list[float], float]:
    """One session with ``compression``: bytes stored and accuracy per round, and seconds taken."""
    from fedkeeper.function.store.db import Store
    from fedkeeper.function.tasks.entry import run

    name = compression if isinstance(compression, str) else compression["codec"]
    bound = {"store": {"url": url, "database": f"bench_{name}"}}
    store = Store(url, f"bench_{name}")
    store.ensure_indexes()
    session = store.for_session(name)
    session.record.create({"config_digest": "bench", "scenario": scenario(args, compression)})
    started = time.monotonic()
    init = run("fl_server_init", {"session": name}, bound)
    if "error" in init:
        raise SystemExit(f"{name}: fl_server_init: {init['error']}")
    clients = list(range(args.clients))
    sent, accuracy = [], []
    for r in range(args.rounds):
        session.rounds.open(r, clients)
        for client in clients:
            reply = run("fl_client", {"session": name, "round": r, "client": client, "attempt": 1}, bound)
            if reply.get("stored") is not True:
                raise SystemExit(f"{name}: round {r} client {client}: {reply}")
        session.rounds.close(r, clients)
        metrics = run("fl_server_aggregator", {"session": name, "round": r, "clients": clients}, bound)
        if "error" in metrics or metrics["rejected"]:
            raise SystemExit(f"{name}: round {r}: {metrics}")
        sent.append(int(metrics["update_bytes"]))
        accuracy.append(float(metrics["accuracy"]))
    return sent, accuracy, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="mnist5k", choices=["mnist5k", "digits"])
    parser.add_argument("--clients", type=int, default=10, help="all of them train in every round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.001)
    args = parser.parse_args()

    from fedkeeper.host.store.embedded import EmbeddedMongo

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, fedkeeper at {commit or '?'}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"workload: {args.dataset}, mlp hidden {args.hidden}, {args.clients} clients all training each round, "
        f"{args.rounds} rounds, 1 local epoch, batch 32, Adam lr {args.lr}, FedAvg"
    )
    mongo = EmbeddedMongo(":memory:").start()
    try:
        results = {}
        for compression in CODECS:
            name = compression if isinstance(compression, str) else compression["codec"]
            results[name] = train(args, mongo.url, compression)
    finally:
        mongo.stop()

    base_bytes, base_acc, _ = results["none"]
    print("\nbytes stored per round (all clients' updates):")
    print("round " + "".join(f"{name:>12}" for name in results))
    for r in range(args.rounds):
        print(f"{r + 1:>5} " + "".join(f"{sent[r]:>12,}" for sent, _, _ in results.values()))
    print(f"\n{'codec':<10}{'bytes/round':>13}{'vs none':>9}{'final acc':>11}{'diff (pts)':>12}{'time s':>8}")
    for name, (sent, accuracy, seconds) in results.items():
        mean = sum(sent) / len(sent)
        ratio = (sum(base_bytes) / len(base_bytes)) / mean
        diff = 100 * (accuracy[-1] - base_acc[-1])
        print(f"{name:<10}{mean:>13,.0f}{ratio:>8.2f}x{accuracy[-1]:>11.4f}{diff:>+12.2f}{seconds:>8.1f}")
    print("\naccuracy per round:")
    for name, (_, accuracy, _) in results.items():
        print(f"{name:<10}" + " ".join(f"{a:.4f}" for a in accuracy))


if __name__ == "__main__":
    main()
