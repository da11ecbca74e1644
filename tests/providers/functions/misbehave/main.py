"""GCF entry point (``handler``)."""

from __future__ import annotations

import json
from typing import Any

from behave import act


def handler(request: Any) -> tuple[str, int, dict[str, str]]:
    params = request.get_json(silent=True) or {}
    if "raw" in params:
        return str(params["raw"]), 200, {"Content-Type": "text/plain"}
    result = act(params)
    return json.dumps(result), 500 if "error" in result else 200, {"Content-Type": "application/json"}
