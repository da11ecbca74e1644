"""Every update codec trains end to end on the local fabric, and stores fewer bytes than none."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from fedkeeper.function.store import weights as wire
from fedkeeper.host.fabric.process import FabricProcess

from .conftest import training_config
from .helpers import assert_every_selected_update_counted_once, run_session

CLIENTS = 4
# What each codec must save at least, per round, over the same updates stored as they are (none).
# digits' mlp is small (2 410 parameters), so the .npz headers weigh more than in bench/compression.py.
SAVES = {"none": 1.0, "float16": 1.95, "int8": 3.5, "topk": 5.0}


@pytest.mark.parametrize(
    "compression", ["none", "float16", "int8", {"codec": "topk", "fraction": 0.1}], ids=list(SAVES)
)
def test_codec_trains_two_rounds_and_stores_fewer_bytes_than_none(
    fabric: FabricProcess, mongo_url: str, tmp_path: Path, compression: Any
) -> None:
    codec = compression if isinstance(compression, str) else compression["codec"]
    config = training_config(fabric.url, mongo_url, tmp_path / "logs", max_rounds=2, compression=compression)
    store, session = run_session(config)

    assert store.for_session(session).record.get()["phase"] == "Succeeded"
    accuracies = assert_every_selected_update_counted_once(store, session, rounds=2)
    assert accuracies[-1] > accuracies[0], accuracies
    uncompressed = CLIENTS * len(wire.encode(store.for_session(session).weights.get(1)))
    rows = list(csv.DictReader((tmp_path / "logs" / session / "rounds.csv").open()))
    sent = [int(row["update_bytes"]) for row in rows]
    assert len(sent) == 2
    if codec == "none":
        assert sent == [uncompressed, uncompressed]
    else:
        assert all(uncompressed / n >= SAVES[codec] for n in sent), (uncompressed, sent)
