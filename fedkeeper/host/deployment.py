"""``main.py -d`` / ``-r``: deploy and remove a configuration's functions.

The managing functions go to the server cluster; ``fl_client`` goes to every cluster that hosts
clients. Store and platform credentials are bound at deploy time here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkeeper.function.catalog import CLIENT_FUNCTION, INVOKER_FUNCTION, MANAGING_FUNCTIONS
from fedkeeper.function.config import Config
from fedkeeper.function.errors import ProviderError
from fedkeeper.function.redaction import redact_value
from fedkeeper.host.packaging import function_dir
from fedkeeper.host.placement import Route, clients_per_cluster, place_clients, route_for
from fedkeeper.host.providers.base import FunctionSpec, Provider
from fedkeeper.host.services import store_url


@dataclass(frozen=True)
class Step:
    """One deploy or remove action, for progress output."""

    function: str
    platform: str
    cluster: str
    outcome: str


def _store_binding(config: Config) -> dict[str, Any]:
    mongo = config.fl.mongo_config
    return {"store": {"url": store_url(mongo), "database": mongo.database}}


def _targets(config: Config, providers: dict[tuple[str, str], Provider]) -> dict[str, Any]:
    """Bindings for the invoker: every client cluster it must reach, with its credentials."""
    targets: dict[str, Any] = {}
    for platform, cluster in clients_per_cluster(place_clients(config)):
        provider = providers[(platform, cluster)]
        if route_for(provider.capabilities) is Route.VIA_INVOKER:
            targets[f"{platform}/{cluster}"] = {
                "platform": platform,
                "cluster": cluster,
                "settings": provider.settings.model_dump(mode="json"),
            }
    return targets


def _spec(config: Config, name: str, bound: dict[str, Any], instances: int = 1) -> FunctionSpec:
    settings = config.fl.functions.settings(name)
    return FunctionSpec(
        name=name,
        source=function_dir(name),
        memory_mb=settings.memory,
        timeout_s=settings.timeout,
        concurrency=settings.concurrency,
        bound=bound,
        instances=instances,
    )


def plan(config: Config, providers: dict[tuple[str, str], Provider]) -> list[tuple[Provider, FunctionSpec]]:
    """Every (provider, function) pair this configuration deploys."""
    store = _store_binding(config)
    server = providers[(config.server_platform, config.fl.server_config.cluster)]
    invoker = {**store, "targets": _targets(config, providers)}
    pairs = [
        (server, _spec(config, name, invoker if name == INVOKER_FUNCTION else store))
        for name in MANAGING_FUNCTIONS
    ]
    for (platform, cluster), count in clients_per_cluster(place_clients(config)).items():
        provider = providers[(platform, cluster)]
        bound = store if provider.capabilities.store_access else {}
        pairs.append((provider, _spec(config, CLIENT_FUNCTION, bound, instances=count)))
    return pairs


def write_params(pairs: list[tuple[Provider, FunctionSpec]], params_dir: Path) -> list[Path]:
    """``params/<function>.json``: each function's deployment and default parameters (redacted)."""
    params_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Any]] = {}
    for provider, spec in pairs:
        doc = written.setdefault(spec.name, {"function": spec.name, "deployments": []})
        doc["deployments"].append(
            {
                "platform": provider.platform,
                "cluster": provider.cluster,
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


def deploy(
    config: Config, providers: dict[tuple[str, str], Provider], say: Callable[[str], None] = print
) -> list[Step]:
    steps = []
    for provider, spec in plan(config, providers):
        where = f"{provider.platform}/{provider.cluster}"
        provider.deploy(spec)
        suffix = f" x{spec.instances}" if spec.instances > 1 else ""
        say(f"deployed {spec.name}{suffix} to {where}")
        steps.append(Step(spec.name, provider.platform, provider.cluster, "deployed"))
    return steps


def remove(
    config: Config, providers: dict[tuple[str, str], Provider], say: Callable[[str], None] = print
) -> list[Step]:
    """Remove every function this configuration may have deployed; safe to run twice."""
    steps = []
    errors = []
    for provider, spec in plan(config, providers):
        where = f"{provider.platform}/{provider.cluster}"
        try:
            existed = provider.remove(spec.name)
        except ProviderError as exc:
            errors.append(str(exc))
            say(f"could not remove {spec.name} from {where}: {exc}")
            continue
        outcome = "removed" if existed else "not deployed"
        say(f"{outcome}: {spec.name} on {where}")
        steps.append(Step(spec.name, provider.platform, provider.cluster, outcome))
    if errors:
        raise ProviderError(f"{len(errors)} function(s) could not be removed; first: {errors[0]}")
    return steps
