"""``main.py -d`` / ``-r``: deploy and remove what a :class:`~fedkeeper.host.plan.Plan` lists.

The plan decides what goes where and what each function is bound to (store and platform
credentials, at deploy time and nowhere else); this module only carries it out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkeeper.function.errors import ProviderError
from fedkeeper.function.redaction import redact_value
from fedkeeper.host.plan import Key, Plan
from fedkeeper.host.providers.base import Provider


@dataclass(frozen=True)
class Step:
    """One deploy or remove action, for progress output."""

    function: str
    platform: str
    cluster: str
    outcome: str


def write_params(plan: Plan, params_dir: Path) -> list[Path]:
    """``params/<function>.json``: each function's deployment and default parameters (redacted)."""
    params_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Any]] = {}
    for d in plan.deployments:
        spec = d.spec
        doc = written.setdefault(spec.name, {"function": spec.name, "deployments": []})
        doc["deployments"].append(
            {
                "platform": d.platform,
                "cluster": d.cluster,
                "memory_mb": spec.memory_mb,
                "timeout_s": spec.timeout_s,
                "concurrency": spec.concurrency,
                "instances": spec.instances,
                "bound": redact_value(dict(spec.bound)),
            }
        )
    paths = []
    for name, doc in written.items():
        path = params_dir / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)  # atomic: a crash never leaves a half-written params file
        paths.append(path)
    return paths


def deploy(plan: Plan, providers: Mapping[Key, Provider], say: Callable[[str], None] = print) -> list[Step]:
    steps = []
    for d in plan.deployments:
        providers[d.key].deploy(d.spec)
        suffix = f" x{d.spec.instances}" if d.spec.instances > 1 else ""
        say(f"deployed {d.spec.name}{suffix} to {d.where}")
        steps.append(Step(d.spec.name, d.platform, d.cluster, "deployed"))
    return steps


def remove(plan: Plan, providers: Mapping[Key, Provider], say: Callable[[str], None] = print) -> list[Step]:
    """Remove every function the plan may have deployed; safe to run twice."""
    steps = []
    errors = []
    for d in plan.deployments:
        try:
            existed = providers[d.key].remove(d.spec.name)
        except ProviderError as exc:
            errors.append(str(exc))
            say(f"could not remove {d.spec.name} from {d.where}: {exc}")
            continue
        outcome = "removed" if existed else "not deployed"
        say(f"{outcome}: {d.spec.name} on {d.where}")
        steps.append(Step(d.spec.name, d.platform, d.cluster, outcome))
    if errors:
        raise ProviderError(f"{len(errors)} function(s) could not be removed; first: {errors[0]}")
    return steps
