"""What a session leaves in ``logs/<session>/`` and shows on the terminal.

``keeper.jsonl`` (every event), ``rounds.csv`` (metrics per round), ``activations.csv`` (the
ledger, one row per attempt) and ``accuracy.png``. On a terminal the current round is a rich
progress bar, with the keeper's lines printed above it; elsewhere (CI, pipes) plain lines.
"""

from __future__ import annotations

import csv
import json
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from fedkeeper.function.redaction import redact
from fedkeeper.host.costs import LINKS
from fedkeeper.host.ledger import LedgerEntry

ROUND_FIELDS = [
    "round",
    "accuracy",
    "loss",
    "train_loss",
    "train_accuracy",
    "selected",
    "updates",
    "rejected",
    "retries",
    "failed_clients",
    "update_bytes",
    "duration_s",
    "federated_loss",
    "federated_accuracy",
    "evaluated_clients",
    "failed_evaluations",
    "cost",
    "cumulative_cost",
    *(f"bytes_{link}" for link in LINKS),
    # async mode (one row per model version) and semi_async (a round's folded late updates,
    # their staleness, the late activations still running); empty in sync rounds
    "late_folded",
    "staleness_mean",
    "staleness_max",
    "in_flight",
    "cold_starts",
]
ACTIVATION_FIELDS = [
    "round",
    "function",
    "task",
    "client",
    "attempt",
    "platform",
    "cluster",
    "activation_id",
    "target_platform",
    "target_cluster",
    "target_activation_id",
    "status",
    "start",
    "end",
    "duration_ms",
    "error",
]


def _figure(value: float | None) -> str:
    """A metric as rounds.csv writes it: empty when there is none (a round without evaluation)."""
    return "" if value is None else f"{value:.6f}"


def _amount(value: float | None) -> str:
    """A cost in full (list prices are millionths of a dollar); empty when not priced."""
    return "" if value is None else f"{value:.10f}"


def _iso_ms(ms: int | None) -> str:
    return "" if ms is None else datetime.fromtimestamp(ms / 1000).isoformat(timespec="milliseconds")


class Reporter:
    """Writes a session's logs and its progress output."""

    def __init__(self, logs_dir: str | Path, session: str, stream: TextIO | None = None) -> None:
        self.dir = Path(logs_dir) / session
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._events = (self.dir / "keeper.jsonl").open("a", encoding="utf-8")
        self._console = Console(file=self.stream, force_terminal=self.tty, highlight=False, soft_wrap=True)
        self._bar: tuple[int, Progress, TaskID] | None = None  # the round it shows
        # async mode's aggregator call reports from a worker thread: one line at a time
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ events
    def event(self, kind: str, **fields: Any) -> None:
        record = {"time": datetime.now().isoformat(timespec="milliseconds"), "event": kind, **fields}
        line = redact(json.dumps(record, default=str)) + "\n"
        with self._lock:
            self._events.write(line)
            self._events.flush()

    def say(self, message: str) -> None:
        """One line; on a terminal it goes above the progress bar, which stays at the bottom."""
        with self._lock:
            if self.tty:
                self._console.print(redact(message), markup=False)
            else:
                print(redact(message), file=self.stream, flush=True)

    def progress(
        self, round_number: int, selected: int, done: int, failed: int, retried: int, elapsed: float
    ) -> None:
        """Round ``round_number`` (from 0)'s progress: a bar on a terminal, gone once the round is;
        nothing elsewhere."""
        if not self.tty:
            return
        if self._bar is not None and self._bar[0] != round_number:
            self._end_bar()
        if self._bar is None:
            bar = Progress(
                TextColumn("round {task.fields[round]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("done · {task.fields[failed]} failed · {task.fields[retried]} retried"),
                TextColumn("· {task.fields[elapsed]:.1f}s"),
                console=self._console,
                auto_refresh=False,  # redrawn on each call: no drawing thread
                transient=True,  # the keeper's line for the round stays, the bar goes
                redirect_stdout=False,
                redirect_stderr=False,
            )
            bar.start()
            task = bar.add_task(
                "round", total=selected, round=round_number + 1, failed=0, retried=0, elapsed=0.0
            )
            self._bar = (round_number, bar, task)
        _, bar, task = self._bar
        bar.update(
            task,
            total=selected,
            completed=done,
            failed=failed,
            retried=retried,
            elapsed=elapsed,
            refresh=True,
        )
        if done >= selected:
            self._end_bar()

    def _end_bar(self) -> None:
        if self._bar is not None:
            self._bar[1].stop()
            self._bar = None

    # ------------------------------------------------------------------ files
    def write_rounds(self, rounds: list[dict[str, Any]], plot: bool = True) -> None:
        """rounds.csv, and with ``plot`` accuracy.png."""
        rows = [r for r in rounds if r.get("metrics")]
        with (self.dir / "rounds.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ROUND_FIELDS)
            writer.writeheader()
            for r in rows:
                m = r["metrics"]
                writer.writerow(
                    {
                        "round": r["round"],
                        "accuracy": f"{m['accuracy']:.6f}",
                        "loss": f"{m['loss']:.6f}",
                        "train_loss": f"{m.get('train_loss', float('nan')):.6f}",
                        "train_accuracy": f"{m.get('train_accuracy', float('nan')):.6f}",
                        "selected": len(r.get("selected", [])),
                        "updates": len(m.get("accepted", [])),
                        "rejected": len(m.get("rejected", {})),
                        "retries": m.get("retries", 0),
                        "failed_clients": m.get("failed_clients", 0),
                        "update_bytes": m.get("update_bytes", ""),
                        "duration_s": f"{m.get('duration_s', 0.0):.3f}",
                        "federated_loss": _figure(m.get("federated_loss")),
                        "federated_accuracy": _figure(m.get("federated_accuracy")),
                        "evaluated_clients": m.get("evaluated_clients", ""),
                        "failed_evaluations": m.get("failed_evaluations", ""),
                        "cost": _amount(m.get("cost")),
                        "cumulative_cost": _amount(m.get("cumulative_cost")),
                        **{f"bytes_{link}": (m.get("bytes") or {}).get(link, "") for link in LINKS},
                        "late_folded": m.get("late_folded", ""),
                        "staleness_mean": _figure(m.get("staleness_mean")),
                        "staleness_max": m.get("staleness_max", ""),
                        "in_flight": m.get("in_flight", ""),
                        "cold_starts": m.get("cold_starts", ""),
                    }
                )
        if plot:
            self._plot(rows)

    def write_activations(self, entries: list[LedgerEntry]) -> None:
        with (self.dir / "activations.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ACTIVATION_FIELDS)
            writer.writeheader()
            for e in entries:
                writer.writerow(
                    {
                        "round": e.round,
                        "function": e.function,
                        "task": e.task.value,
                        "client": "" if e.client < 0 else e.client,
                        "attempt": e.attempt,
                        "platform": e.platform,
                        "cluster": e.cluster,
                        "activation_id": e.activation_id or "",
                        "target_platform": (e.target or "/").split("/", 1)[0],
                        "target_cluster": (e.target or "/").split("/", 1)[1],
                        "target_activation_id": e.target_activation_id or "",
                        "status": e.status,
                        "start": _iso_ms(e.start_ms),
                        "end": _iso_ms(e.end_ms),
                        "duration_ms": "" if e.duration_ms is None else e.duration_ms,
                        "error": (e.error or "")[:300],
                    }
                )

    def _plot(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # plots are a convenience; the CSV has the numbers
            return
        rounds = [r["round"] + 1 for r in rows]
        fig, ax_acc = plt.subplots(figsize=(7, 4))
        ax_acc.plot(
            rounds, [r["metrics"]["accuracy"] for r in rows], "o-", color="tab:blue", label="accuracy"
        )
        ax_acc.set_xlabel("round")
        ax_acc.set_ylabel("test accuracy", color="tab:blue")
        ax_acc.set_ylim(0, 1)
        ax_loss = ax_acc.twinx()
        ax_loss.plot(rounds, [r["metrics"]["loss"] for r in rows], "s--", color="tab:red", label="loss")
        ax_loss.set_ylabel("test loss", color="tab:red")
        ax_acc.set_title(f"session {self.dir.name}")
        ax_acc.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.dir / "accuracy.png", dpi=100)
        plt.close(fig)

    def close(self) -> None:
        self._end_bar()
        self._events.close()


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start
