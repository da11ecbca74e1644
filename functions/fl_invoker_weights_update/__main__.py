"""OpenWhisk entry point of fl_invoker_weights_update."""

from typing import Any

from fedkeeper.function.tasks.entry import openwhisk_main


def main(params: dict[str, Any]) -> dict[str, Any]:
    return openwhisk_main("fl_invoker_weights_update", params)
