"""The keeper's terminal output: a rich progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import os
import re
import select
from pathlib import Path

from fedkeeper.host.reporting import Reporter


def _drain(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _text(drawn: str) -> str:
    """What the terminal shows, colours and cursor moves left out."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)


def test_on_a_terminal_a_round_is_a_rich_bar_with_the_keepers_lines_above_it(tmp_path: Path) -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as terminal:
        reporter = Reporter(tmp_path, "s1", terminal)
        assert reporter.tty
        reporter.progress(0, 4, 1, 0, 0, 1.5)
        reporter.say("client 2 attempt 1 failed; retry in 0.2s")
        reporter.progress(0, 4, 3, 1, 2, 2.5)
        drawn = _drain(master)
        reporter.progress(0, 4, 4, 1, 2, 3.0)  # every client done: the bar goes
        reporter.say("round 1/3: accuracy 0.5000")
        reporter.close()
        after = _drain(master)
    os.close(master)
    assert "━" in drawn  # rich's bar, not a hand-drawn one
    assert "round 1 " in _text(drawn)  # rounds count from 1 on screen, as in the keeper's lines
    assert "3/4 done · 1 failed · 2 retried · 2.5s" in _text(drawn)
    assert "client 2 attempt 1 failed; retry in 0.2s" in _text(drawn)
    assert "round 1/3: accuracy 0.5000" in _text(after)
    assert "\x1b[2K" in after  # the transient bar was erased


def test_elsewhere_there_is_no_bar_only_plain_redacted_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    reporter = Reporter(tmp_path, "s1", out)
    reporter.progress(0, 4, 3, 1, 2, 2.5)
    reporter.say("store at mongodb://admin:hunter22@db:27017 is back")
    reporter.close()
    assert out.getvalue() == "store at mongodb://***@db:27017 is back\n"
