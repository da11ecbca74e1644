"""Google Cloud Functions entry point of fl_invoker_weights_update (--entry-point handler)."""

from typing import Any

from fedkeeper.function.tasks.entry import gcf_handler


def handler(request: Any) -> tuple[str, int, dict[str, str]]:
    return gcf_handler("fl_invoker_weights_update", request)
