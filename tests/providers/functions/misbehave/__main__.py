"""OpenWhisk entry point (``main``)."""

from __future__ import annotations

from typing import Any

from behave import act


def main(params: dict[str, Any]) -> dict[str, Any]:
    return act(params)
