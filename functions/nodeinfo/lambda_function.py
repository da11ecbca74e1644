"""AWS Lambda entry point of nodeinfo (handler lambda_function.handler)."""

from typing import Any

from fedkeeper.function.tasks.entry import lambda_handler


def handler(event: Any, context: Any) -> dict[str, Any]:
    return lambda_handler("nodeinfo", event, context)
