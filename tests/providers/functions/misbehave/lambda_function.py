"""Lambda entry point (``lambda_function.handler``)."""

from __future__ import annotations

from typing import Any

from behave import act


class Failed(Exception):
    """The handler's own error (Lambda reports its type and message)."""


def handler(event: dict[str, Any], context: Any) -> Any:
    if "raw" in event:
        return str(event["raw"])  # a JSON string, not an object
    result = act(event)
    if "error" in result:
        raise Failed(result["error"])
    return {**result, "request_id": context.aws_request_id}
