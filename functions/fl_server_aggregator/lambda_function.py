"""AWS Lambda entry point of fl_server_aggregator (handler lambda_function.handler)."""

from typing import Any

from fedkeeper.function.tasks.entry import lambda_handler


def handler(event: Any, context: Any) -> dict[str, Any]:
    return lambda_handler("fl_server_aggregator", event, context)
