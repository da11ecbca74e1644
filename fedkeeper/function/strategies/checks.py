"""Range checks for strategy parameters: each raises ``ValueError`` naming the parameter."""

from __future__ import annotations


def positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0 (got {value!r})")
    return float(value)


def non_negative(name: str, value: float) -> float:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0 (got {value!r})")
    return float(value)


def below_one(name: str, value: float) -> float:
    """A decay rate or fraction in ``[0, 1)``."""
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1) (got {value!r})")
    return float(value)


def count(name: str, value: int) -> int:
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (got {value!r})")
    return int(value)


def fraction(name: str, value: float) -> float:
    """A share in ``[0, 1]``."""
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1] (got {value!r})")
    return float(value)


def at_least_one(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be >= 1 (got {value!r})")
    return int(value)
