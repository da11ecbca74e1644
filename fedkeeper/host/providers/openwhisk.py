"""Deploying to Apache OpenWhisk (a real deployment or the local fabric) through its REST API.

Invoking lives in :class:`~fedkeeper.function.invoke.openwhisk.OpenWhiskClient` (the invoker
function needs it); this adds the control plane: PUT and DELETE of actions.
"""

from __future__ import annotations

import base64
from typing import Any

from fedkeeper.function.invoke.openwhisk import OpenWhiskClient
from fedkeeper.host.packaging import build_zip
from fedkeeper.host.providers.base import FunctionSpec, Provider


class OpenWhiskProvider(OpenWhiskClient, Provider):
    """A cluster from ``providers.openwhisk`` (``settings`` is its :class:`OpenWhiskCluster`)."""

    # ------------------------------------------------------------------ control plane
    def action_body(self, spec: FunctionSpec) -> dict[str, Any]:
        """The PUT body deploying ``spec``: its zip, bound parameters, limits, annotations."""
        code = base64.b64encode(build_zip(spec.source)).decode("ascii")
        exec_: dict[str, Any] = {"kind": self.settings.kind, "code": code, "binary": True, "main": "main"}
        if self.settings.image:
            exec_ = {
                "kind": "blackbox",
                "image": self.settings.image,
                "code": code,
                "binary": True,
                "main": "main",
            }
        annotations: list[dict[str, Any]] = []
        if spec.bound:
            # Bound values (store URL, credentials) must win over anything a caller sends.
            annotations.append({"key": "final", "value": True})
        if spec.web_export:
            annotations.append({"key": "web-export", "value": True})
        return {
            "exec": exec_,
            "parameters": [{"key": k, "value": v} for k, v in spec.bound.items()],
            "annotations": annotations,
            "limits": {
                "timeout": int(spec.timeout_s * 1000),
                "memory": int(spec.memory_mb),
                "concurrency": int(spec.concurrency),
            },
        }

    def deploy(self, spec: FunctionSpec) -> None:
        url = self.action_url(spec.name)
        self._request("PUT", url, params={"overwrite": "true"}, json=self.action_body(spec), timeout=120)

    def get_action(self, name: str) -> dict[str, Any] | None:
        """The deployed action (without code), or None."""
        url = self.action_url(name)
        response = self._request("GET", url, ok=(200, 404), params={"code": "false"})
        return None if response.status_code == 404 else dict(response.json())

    def remove(self, name: str) -> bool:
        response = self._request("DELETE", self.action_url(name), ok=(200, 404))
        return response.status_code == 200
