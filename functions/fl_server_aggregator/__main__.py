"""OpenWhisk entry point of fl_server_aggregator."""

from typing import Any

from fedkeeper.function.tasks.entry import openwhisk_main


def main(params: dict[str, Any]) -> dict[str, Any]:
    return openwhisk_main("fl_server_aggregator", params)
