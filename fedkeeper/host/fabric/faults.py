"""Fault injection: a seeded plan of failures, fabric-wide or per action.

A plan is JSON::

    {"seed": 7,
     "default": {"application_error": 0.1, "latency_ms": [0, 50]},
     "actions": {"fl_client": {"crash": 0.2, "lost_record": 0.05}},
     "targets": [{"action": "fl_client", "params": {"round": 1, "client": 2}, "latency_ms": 9000}]}

Per-action rules override the default rule field by field; a target overrides its action's rule
for the activations whose parameters hold all of its ``params`` (the first target that matches),
so a test can make one given activation fail or straggle whatever the arrival order. Each activation draws, in arrival
order from one ``random.Random(seed)``: one number picking at most one status fault
(``application_error``, ``developer_error``, ``internal_error``; their sum must be <= 1), then
``crash`` (the worker is killed mid-run), ``lost_record`` (the activation runs but its record is
never stored), and a latency from ``latency_ms`` (a number or ``[low, high]``) added before it runs;
a rule with ``straggler`` (a probability) then draws whether the activation is a straggler, which
waits ``straggler_ms`` more (plans without it draw nothing more, so their sequences stay the same).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedkeeper.host.fabric.records import Status

_PROBABILITIES = ("application_error", "developer_error", "internal_error", "crash", "lost_record")


class FaultPlanError(ValueError):
    """A fault plan that cannot be used (the message names the field)."""


@dataclass(frozen=True)
class FaultRule:
    """Failure probabilities and added latency for the activations it applies to."""

    application_error: float = 0.0
    developer_error: float = 0.0
    internal_error: float = 0.0
    crash: float = 0.0
    lost_record: float = 0.0
    latency_ms: tuple[float, float] = (0.0, 0.0)
    # a straggler: with this probability an activation waits straggler_ms more (async-vs-sync bench)
    straggler: float = 0.0
    straggler_ms: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def parse(cls, data: Any, where: str, base: FaultRule | None = None) -> FaultRule:
        if not isinstance(data, dict):
            raise FaultPlanError(f"{where} must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise FaultPlanError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {f.name: getattr(base or cls(), f.name) for f in fields(cls)}
        for name in (*_PROBABILITIES, "straggler"):
            if name in data:
                value = data[name]
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                    raise FaultPlanError(f"{where}.{name} must be a probability in [0, 1] (got {value!r})")
                values[name] = float(value)
        for name in ("latency_ms", "straggler_ms"):
            if name in data:
                values[name] = _latency(data[name], f"{where}.{name}")
        rule = cls(**values)
        total = rule.application_error + rule.developer_error + rule.internal_error
        if total > 1:
            raise FaultPlanError(f"{where}: status fault probabilities add up to {total:g} > 1")
        return rule

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in _PROBABILITIES}
        low, high = self.latency_ms
        out["latency_ms"] = low if low == high else [low, high]
        if self.straggler:  # plans without stragglers read as before
            low, high = self.straggler_ms
            out.update(straggler=self.straggler, straggler_ms=low if low == high else [low, high])
        return out


def _latency(value: Any, where: str) -> tuple[float, float]:
    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise FaultPlanError(f"{where} must be a non-negative number or [low, high] (got {value!r})")
        return float(v)

    if isinstance(value, list):
        if len(value) != 2:
            raise FaultPlanError(f"{where} must be a number or [low, high] (got {value!r})")
        low, high = number(value[0]), number(value[1])
        if low > high:
            raise FaultPlanError(f"{where}: low {low:g} is above high {high:g}")
        return (low, high)
    fixed = number(value)
    return (fixed, fixed)


@dataclass(frozen=True)
class FaultDecision:
    """What happens to one activation."""

    status: Status | None = None
    crash: bool = False
    lost_record: bool = False
    latency_s: float = 0.0

    @property
    def any(self) -> bool:
        return self.status is not None or self.crash or self.lost_record or self.latency_s > 0


NO_FAULT = FaultDecision()


@dataclass(frozen=True)
class FaultTarget:
    """A rule for the activations of one action whose parameters hold ``params``."""

    action: str
    params: tuple[tuple[str, Any], ...]
    rule: FaultRule

    @classmethod
    def parse(
        cls, data: Any, where: str, plan_default: FaultRule, actions: dict[str, FaultRule]
    ) -> FaultTarget:
        if not isinstance(data, dict):
            raise FaultPlanError(f"{where} must be a JSON object")
        action, params = data.get("action"), data.get("params", {})
        if not isinstance(action, str) or not action:
            raise FaultPlanError(f"{where}.action must be an action name (got {action!r})")
        if not isinstance(params, dict):
            raise FaultPlanError(f"{where}.params must be an object of parameter -> value (got {params!r})")
        fields_only = {k: v for k, v in data.items() if k not in ("action", "params")}
        rule = FaultRule.parse(fields_only, where, actions.get(action, plan_default))
        return cls(action, tuple(sorted(params.items())), rule)

    def matches(self, action: str, params: dict[str, Any]) -> bool:
        return action == self.action and all(
            key in params and params[key] == value for key, value in self.params
        )

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "params": dict(self.params), **self.rule.to_json()}


class FaultPlan:
    """A validated plan and its random generator."""

    def __init__(
        self,
        seed: int = 0,
        default: FaultRule | None = None,
        actions: dict[str, FaultRule] | None = None,
        targets: list[FaultTarget] | None = None,
    ):
        self.seed = seed
        self.default = default or FaultRule()
        self.actions = dict(actions or {})
        self.targets = list(targets or [])
        self._random = random.Random(seed)

    @classmethod
    def parse(cls, data: Any, where: str = "fault plan") -> FaultPlan:
        if not isinstance(data, dict):
            raise FaultPlanError(f"{where} must be a JSON object")
        unknown = set(data) - {"seed", "default", "actions", "targets"}
        if unknown:
            raise FaultPlanError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise FaultPlanError(f"{where}.seed must be an integer (got {seed!r})")
        default = FaultRule.parse(data.get("default", {}), f"{where}.default")
        actions_data = data.get("actions", {})
        if not isinstance(actions_data, dict):
            raise FaultPlanError(f"{where}.actions must be an object of action name -> rule")
        actions = {
            name: FaultRule.parse(rule, f"{where}.actions.{name}", default)
            for name, rule in actions_data.items()
        }
        targets_data = data.get("targets", [])
        if not isinstance(targets_data, list):
            raise FaultPlanError(f"{where}.targets must be a list of targeted rules")
        targets = [
            FaultTarget.parse(target, f"{where}.targets[{i}]", default, actions)
            for i, target in enumerate(targets_data)
        ]
        return cls(seed, default, actions, targets)

    @classmethod
    def load(cls, path: Path) -> FaultPlan:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise FaultPlanError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise FaultPlanError(f"{path}: invalid JSON: {exc.msg} at line {exc.lineno}") from None
        return cls.parse(data, str(path))

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "default": self.default.to_json(),
            "actions": {name: rule.to_json() for name, rule in self.actions.items()},
            "targets": [target.to_json() for target in self.targets],
        }

    def rule(self, action: str, params: dict[str, Any] | None = None) -> FaultRule:
        for target in self.targets:
            if target.matches(action, params or {}):
                return target.rule
        return self.actions.get(action, self.default)

    def decide(self, action: str, params: dict[str, Any] | None = None) -> FaultDecision:
        """Draw the faults of the next activation of ``action`` invoked with ``params``."""
        rule = self.rule(action, params)
        if rule == FaultRule():
            return NO_FAULT
        draw = self._random.random()
        status: Status | None = None
        for kind, probability in (
            (Status.APPLICATION_ERROR, rule.application_error),
            (Status.DEVELOPER_ERROR, rule.developer_error),
            (Status.INTERNAL_ERROR, rule.internal_error),
        ):
            if draw < probability:
                status = kind
                break
            draw -= probability
        # Drawn even under a status fault (which does not run the action), so that one plan
        # consumes the same random numbers per activation whatever happens.
        crash = self._random.random() < rule.crash and status is None
        lost = self._random.random() < rule.lost_record
        low, high = rule.latency_ms
        latency_ms = low if low == high else self._random.uniform(low, high)
        if rule.straggler and self._random.random() < rule.straggler:  # no draw in plans without
            latency_ms += self._random.uniform(*rule.straggler_ms)
        return FaultDecision(status=status, crash=crash, lost_record=lost, latency_s=latency_ms / 1000)
