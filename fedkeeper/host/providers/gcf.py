"""Deploying to Google Cloud Functions (2nd gen): HTTP functions deployed from a source zip.

Control plane: the v2 ``FunctionServiceClient`` over REST (``generate_upload_url``, a PUT of the
zip to the signed URL, ``create_function`` / ``update_function`` / ``delete_function`` with the
long-running operation awaited). Invoking lives in :class:`~fedkeeper.function.invoke.gcf.GcfClient`
(the invoker function needs it).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
from typing import Any

import requests
from google.api_core import exceptions as gexc
from google.api_core.future import polling
from google.cloud import functions_v2

from fedkeeper.function.errors import ProviderError
from fedkeeper.function.invoke.gcf import CONNECT_TIMEOUT_S, UNREACHABLE, GcfClient, api_message, function_id
from fedkeeper.function.tasks.entry import BOUND_ENV
from fedkeeper.host.packaging import build_zip
from fedkeeper.host.providers.base import FunctionSpec, Provider

log = logging.getLogger(__name__)

ENTRY_POINT = "handler"  # main.py's function in every folder under functions/
# Poll operations from 0.25 s up to every 10 s (the library starts at 1 s, grows to 20 s): a small
# function's update is often done within a second.
_POLLING = polling.DEFAULT_POLLING.with_delay(initial=0.25, maximum=10.0, multiplier=1.5)


class GcfProvider(GcfClient, Provider):
    """One GCF project and region (``providers.google.<cluster>``)."""

    # ------------------------------------------------------------------ control plane
    def deploy(self, spec: FunctionSpec) -> None:
        self.refuse_unsupported(spec)
        where = self._where(spec.name)
        archive = build_zip(spec.source)
        storage_source = self._upload(archive, where)
        function = self._function_message(spec, storage_source)
        started = time.monotonic()
        try:
            operation = self.client.create_function(
                parent=self.parent, function=function, function_id=function_id(spec.name)
            )
            action = "create"
        except gexc.Conflict:  # AlreadyExists: replace source and settings
            operation = self._call(where, "update", lambda: self.client.update_function(function=function))
            action = "update"
        except gexc.GoogleAPICallError as exc:
            raise ProviderError(f"{where}: create refused: {api_message(exc)}") from None
        except UNREACHABLE as exc:
            raise ProviderError(
                f"{where}: create failed: cannot reach the GCF API ({type(exc).__name__})"
            ) from None
        deployed = self._await(operation, where, action)
        if deployed.state != functions_v2.Function.State.ACTIVE:
            messages = "; ".join(m.message for m in deployed.state_messages) or "no detail"
            raise ProviderError(f"{where}: {action} left it {deployed.state.name}: {messages}")
        self._urls[spec.name] = deployed.service_config.uri
        log.info("%s: %sd (%d bytes, %.1f s)", where, action, len(archive), time.monotonic() - started)

    def _upload(self, archive: bytes, where: str) -> functions_v2.StorageSource:
        upload = self._call(
            where,
            "generate an upload URL",
            lambda: self.client.generate_upload_url(request={"parent": self.parent}),
        )
        try:
            # The signed URL is bound to this content type; the URL itself is a credential and
            # stays out of every message below.
            response = self._http.put(
                upload.upload_url,
                data=archive,
                headers={"Content-Type": "application/zip"},
                timeout=(CONNECT_TIMEOUT_S, self.settings.operation_timeout_s),
            )
        except requests.RequestException as exc:
            raise ProviderError(f"{where}: upload of the source zip failed ({type(exc).__name__})") from None
        if response.status_code >= 300:
            raise ProviderError(f"{where}: upload of the source zip failed with HTTP {response.status_code}")
        source: functions_v2.StorageSource = upload.storage_source
        return source

    def _function_message(
        self, spec: FunctionSpec, storage_source: functions_v2.StorageSource
    ) -> functions_v2.Function:
        service = functions_v2.ServiceConfig(
            available_memory=f"{spec.memory_mb}Mi",
            timeout_seconds=spec.timeout_s,
            max_instance_count=self.settings.max_instances,
            environment_variables={BOUND_ENV: json.dumps(dict(spec.bound))} if spec.bound else {},
            ingress_settings=functions_v2.ServiceConfig.IngressSettings.ALLOW_ALL,
            all_traffic_on_latest_revision=True,
        )
        if spec.concurrency > 1:
            # GCF serves concurrent requests per instance only with at least one whole CPU.
            service.max_instance_request_concurrency = spec.concurrency
            service.available_cpu = "1"
        return functions_v2.Function(
            name=self.resource(spec.name),
            environment=functions_v2.Environment.GEN_2,
            build_config=functions_v2.BuildConfig(
                runtime=self.settings.runtime,
                entry_point=ENTRY_POINT,
                source=functions_v2.Source(storage_source=storage_source),
            ),
            service_config=service,
            labels={"fedkeeper": "function"},
        )

    def _await(self, operation: Any, where: str, action: str) -> functions_v2.Function:
        timeout = self.settings.operation_timeout_s
        try:
            result: functions_v2.Function = operation.result(
                timeout=timeout, polling=_POLLING.with_timeout(timeout)
            )
        except (concurrent.futures.TimeoutError, gexc.RetryError):
            raise ProviderError(
                f"{where}: {action} did not finish within {timeout:g} s (operation {operation.operation.name})"
            ) from None
        except gexc.GoogleAPICallError as exc:
            raise ProviderError(f"{where}: {action} failed: {api_message(exc)}") from None
        except UNREACHABLE as exc:
            raise ProviderError(f"{where}: {action}: lost the GCF API ({type(exc).__name__})") from None
        return result

    def remove(self, name: str) -> bool:
        where = self._where(name)
        self._urls.pop(name, None)
        try:
            operation = self._call(
                where,
                "delete",
                lambda: self.client.delete_function(name=self.resource(name)),
                not_found_ok=True,
            )
        except gexc.NotFound:
            return False
        timeout = self.settings.operation_timeout_s
        try:
            operation.result(timeout=timeout, polling=_POLLING.with_timeout(timeout))
        except gexc.NotFound:  # deleted concurrently by someone else: gone all the same
            return True
        except (concurrent.futures.TimeoutError, gexc.RetryError):
            raise ProviderError(f"{where}: delete did not finish within {timeout:g} s") from None
        except gexc.GoogleAPICallError as exc:
            raise ProviderError(f"{where}: delete failed: {api_message(exc)}") from None
        except UNREACHABLE as exc:
            raise ProviderError(f"{where}: delete: lost the GCF API ({type(exc).__name__})") from None
        log.info("%s: deleted", where)
        return True
