"""Shared fixtures: a real MongoDB wire-protocol server for the whole session."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pymongo
import pytest

from fedkeeper.host.store.embedded import EmbeddedMongo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
CHECKOUT = str(Path(__file__).resolve().parent.parent)


# Every process this run starts inherits the token; a process started meanwhile by another run
# (a second checkout, a bench, another developer's pytest) does not, so it is never counted here.
RUN_TOKEN_ENV = "FEDKEEPER_TEST_RUN"
os.environ.setdefault(RUN_TOKEN_ENV, uuid.uuid4().hex)  # xdist workers inherit the controller's
RUN_TOKEN = os.environ[RUN_TOKEN_ENV]


def _run_token(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(RUN_TOKEN_ENV)
    except psutil.Error:
        return None


def _ours_started_after(since: float) -> list[psutil.Process]:
    """Processes of this checkout (its venv's python, its firmware, ...) that this run started
    after ``since``.

    A process is this run's when it carries the run's token, or carries none (the fabric's workers
    get a scrubbed environment) and descends from a process that does or was orphaned. Processes
    of another run or tool, even from the same venv, are left alone.
    """
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        info = proc.info
        if info["pid"] == me or (info["create_time"] or 0) < since:
            continue
        cmdline = " ".join(info["cmdline"] or [])
        if not (sys.prefix in cmdline or CHECKOUT in cmdline) or _under_another_pytest(proc, me):
            continue
        token = _run_token(proc)
        if token == RUN_TOKEN or (token is None and _descends_from_this_run(proc)):
            found.append(proc)
    return found


def _descends_from_this_run(proc: psutil.Process) -> bool:
    try:
        parents = proc.parents()
    except psutil.Error:
        return False
    if not parents or parents[0].pid == 1:
        return True  # orphaned: whoever started it is gone, so it is left behind by someone
    return any(_run_token(parent) == RUN_TOKEN for parent in parents)


def _under_another_pytest(proc: psutil.Process, me: int) -> bool:
    """A process another test run (in this checkout, at the same time) is, or is responsible for.

    The nearest pytest among it and its ancestors decides; this run's own ancestors (the shell
    that started it) and its xdist workers (``python -c ...``) don't count as another run.
    """
    try:
        mine = {me, *(p.pid for p in psutil.Process(me).parents())}
        for process in (proc, *proc.parents()):
            if process.pid in mine:
                return False
            if _is_pytest(process.cmdline()):
                return True
    except psutil.Error:
        pass
    return False


def _is_pytest(argv: list[str]) -> bool:
    """A pytest run (``pytest ...``, ``python -m pytest ...``), not merely a path under pytest's tmp."""
    names = [Path(arg).name for arg in argv[:4]]
    return (
        "pytest" in names
        or "py.test" in names
        or any(a == "-m" and b == "pytest" for a, b in itertools.pairwise(argv))
    )


_SESSION_STARTED = time.time() - 1


@pytest.hookimpl(trylast=True)  # after tests/e2e/conftest.py has marked its tests slow
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first: with ``-n 2`` the short ones then fill both workers to the end, instead
    of one worker finishing a long end-to-end test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Every fixture and command stops what it started: the process table proves it at the end.

    Checked once, by the run that started every worker (``-n 2`` runs this in the controller,
    after its workers are gone), so one worker never counts another's processes as left behind.
    """
    if hasattr(session.config, "workerinput"):
        return
    deadline = time.monotonic() + 15
    while (left := _ours_started_after(_SESSION_STARTED)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for proc in left:  # don't leak them into the next run, but fail this one
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        listed = "; ".join(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:160]}" for p in left)
        if reporter is not None:
            reporter.write_line(f"FAILED: processes left behind: {listed}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    """``FEDKEEPER_TEST_MONGO_URL`` when set (a real mongod), else a ``secantusd-py`` in memory."""
    external = os.environ.get("FEDKEEPER_TEST_MONGO_URL")
    if external:
        yield external
        return
    with EmbeddedMongo(":memory:") as server:
        yield server.url


@pytest.fixture
def mongo_db_name() -> str:
    """A fresh database name per test, so tests sharing the server never see each other's data."""
    return f"fk_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mongo_db(mongo_url: str, mongo_db_name: str) -> Iterator[pymongo.database.Database]:
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_url)
    yield client[mongo_db_name]
    client.drop_database(mongo_db_name)
    client.close()
