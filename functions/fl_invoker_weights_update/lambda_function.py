"""AWS Lambda entry point of fl_invoker_weights_update (handler lambda_function.handler)."""

from typing import Any

from fedkeeper.function.tasks.entry import lambda_handler


def handler(event: Any, context: Any) -> dict[str, Any]:
    return lambda_handler("fl_invoker_weights_update", event, context)
