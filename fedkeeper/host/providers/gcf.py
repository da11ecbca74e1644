"""Google Cloud Functions (2nd gen): HTTP functions deployed from a source zip.

Control plane: the v2 ``FunctionServiceClient`` over REST (``generate_upload_url``, a PUT of the
zip to the signed URL, ``create_function`` / ``update_function`` / ``delete_function`` with the
long-running operation awaited). Invocation: an HTTPS POST to the function's URL carrying an ID
token for that URL (unless the cluster says the function is public). GCF keeps no activation
records a caller can list, so ``invoke_sync`` is the only way in; the keeper reaches GCF clients
through ``fl_invoker_weights_update``.

HTTP outcome -> :class:`ActivationRecord` status:

=================================================  ===========================================
200 with a JSON object                             SUCCESS
4xx / 500 with ``{"error": ...}`` (the function's) APPLICATION_ERROR, ``result = {"error"}``
500 without a JSON error (a crash), other codes     DEVELOPER_ERROR
408 / 504 or no answer within ``timeout_s``        DEVELOPER_ERROR, ``timeout=True``
connection reset after sending                     INTERNAL_ERROR (the platform, not the code)
429 / 502 / 503, connection refused, DNS, connect  raises PlatformUnavailable (an outage: the
timeout (function URL or control plane), API 5xx   keeper waits for it, at no cost to retries)
401 / 403 / 404 / 413                              raises ProviderError / PayloadTooLarge
=================================================  ===========================================
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

import google.auth
import google.auth.exceptions
import google.auth.jwt
import google.auth.transport.requests
import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.future import polling
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import functions_v2
from google.oauth2 import id_token as google_id_token
from google.oauth2 import service_account

from fedkeeper.function.config import GoogleCluster
from fedkeeper.function.errors import ConfigError, PayloadTooLarge, PlatformUnavailable, ProviderError
from fedkeeper.function.redaction import redact
from fedkeeper.function.tasks.entry import BOUND_ENV
from fedkeeper.host.packaging import build_zip
from fedkeeper.host.providers.base import (
    MB,
    ActivationRecord,
    ActivationStatus,
    Capabilities,
    FunctionSpec,
    Provider,
    never_sent,
    now_ms,
)
from fedkeeper.host.providers.credentials import ServiceAccountKey

log = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
ENTRY_POINT = "handler"  # main.py's function in every folder under functions/
EXECUTION_ID_HEADER = "Function-Execution-Id"
_FUNCTION_ID = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_CONNECT_TIMEOUT_S = 10.0
_MEMORY_MB = (128, 32768)
# The REST transport lets connection failures through as requests (or google-auth) exceptions.
_UNREACHABLE = (requests.RequestException, google.auth.exceptions.TransportError)
_UNAVAILABLE_HTTP = (429, 502, 503)  # the front end's answers when no instance can take the call
_TOKEN_SLACK_S = 300  # refresh an ID token this long before it expires
# Poll operations from 0.25 s up to every 10 s (the library starts at 1 s, grows to 20 s): a small
# function's update is often done within a second.
_POLLING = polling.DEFAULT_POLLING.with_delay(initial=0.25, maximum=10.0, multiplier=1.5)


def function_id(name: str) -> str:
    """GCF's id for a fedkeeper function: ``fl_client`` -> ``fl-client`` (ids take no underscores)."""
    fid = name.replace("_", "-").lower()
    if not _FUNCTION_ID.match(fid):
        raise ProviderError(
            f"function name {name!r} cannot be a GCF id: lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters"
        )
    return fid


class GcfProvider(Provider):
    """One GCF project and region (``providers.google.<cluster>``)."""

    platform: ClassVar[str] = "google"
    capabilities: ClassVar[Capabilities] = Capabilities(
        async_invoke=False,
        batch_listing=False,
        store_access=True,
        max_request_bytes=32 * MB,
        max_result_bytes=32 * MB,
        max_duration_s=3600,  # 2nd-gen HTTP functions; event-driven ones stop at 540 s
        web_actions=False,
    )

    def __init__(self, cluster: str, settings: GoogleCluster) -> None:
        super().__init__(cluster, settings)
        self.settings: GoogleCluster = settings
        secret = settings.credentials.get_secret_value() if settings.credentials else None
        self._key = ServiceAccountKey.load(secret, f"providers.google.{cluster}.credentials")
        self._client: functions_v2.FunctionServiceClient | None = None
        self._http = requests.Session()
        self._urls: dict[str, str] = {}
        self._id_tokens: dict[str, Credentials] = {}
        self._metadata_tokens: dict[str, tuple[str, float]] = {}

    # ------------------------------------------------------------------ names and clients
    @property
    def parent(self) -> str:
        return f"projects/{self.settings.project}/locations/{self.settings.region}"

    def resource(self, name: str) -> str:
        return f"{self.parent}/functions/{function_id(name)}"

    def _where(self, name: str) -> str:
        return f"GCF cluster {self.cluster!r}: function {name}"

    def _control_credentials(self) -> Credentials:
        if self._key is not None:
            credentials: Credentials = service_account.Credentials.from_service_account_info(
                self._key.info, scopes=[CLOUD_PLATFORM_SCOPE]
            )
            return credentials
        if self.settings.api_endpoint:
            # No key and an explicit endpoint: a local emulator, which takes anonymous calls.
            return AnonymousCredentials()
        try:
            found, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        except google.auth.exceptions.DefaultCredentialsError:
            raise ConfigError(
                f"providers.google.{self.cluster}: no credentials; set credentials (a service-account "
                "key file or its JSON) or GOOGLE_APPLICATION_CREDENTIALS"
            ) from None
        default_credentials: Credentials = found
        return default_credentials

    @property
    def client(self) -> functions_v2.FunctionServiceClient:
        """The control-plane client, created on first use (invocations of a known URL skip it)."""
        if self._client is None:
            options = (
                ClientOptions(api_endpoint=self.settings.api_endpoint) if self.settings.api_endpoint else None
            )
            self._client = functions_v2.FunctionServiceClient(
                credentials=self._control_credentials(), transport="rest", client_options=options
            )
        return self._client

    # ------------------------------------------------------------------ control plane
    def deploy(self, spec: FunctionSpec) -> None:
        self._check_limits(spec)
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
            raise ProviderError(f"{where}: create refused: {_api_message(exc)}") from None
        except _UNREACHABLE as exc:
            raise ProviderError(
                f"{where}: create failed: cannot reach the GCF API ({type(exc).__name__})"
            ) from None
        deployed = self._await(operation, where, action)
        if deployed.state != functions_v2.Function.State.ACTIVE:
            messages = "; ".join(m.message for m in deployed.state_messages) or "no detail"
            raise ProviderError(f"{where}: {action} left it {deployed.state.name}: {messages}")
        self._urls[spec.name] = deployed.service_config.uri
        log.info("%s: %sd (%d bytes, %.1f s)", where, action, len(archive), time.monotonic() - started)

    def _check_limits(self, spec: FunctionSpec) -> None:
        where = self._where(spec.name)
        if not 1 <= spec.timeout_s <= self.capabilities.max_duration_s:
            raise ProviderError(
                f"{where}: timeout {spec.timeout_s} s is outside 1..{self.capabilities.max_duration_s} s"
            )
        low, high = _MEMORY_MB
        if not low <= spec.memory_mb <= high:
            raise ProviderError(f"{where}: memory {spec.memory_mb} MB is outside {low}..{high} MB")

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
                timeout=(_CONNECT_TIMEOUT_S, self.settings.operation_timeout_s),
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
            raise ProviderError(f"{where}: {action} failed: {_api_message(exc)}") from None
        except _UNREACHABLE as exc:
            raise ProviderError(f"{where}: {action}: lost the GCF API ({type(exc).__name__})") from None
        return result

    def _call(self, where: str, what: str, call: Any, *, not_found_ok: bool = False) -> Any:
        """``call()`` with API errors as one-line ProviderErrors (``NotFound`` raised as is if asked)."""
        try:
            return call()
        except gexc.NotFound:
            if not_found_ok:
                raise
            raise ProviderError(f"{where}: {what} refused: not found") from None
        except gexc.GoogleAPICallError as exc:
            message = f"{where}: {what} refused: {_api_message(exc)}"
            if exc.code is not None and (exc.code in _UNAVAILABLE_HTTP or exc.code >= 500):
                raise PlatformUnavailable(self.where, message) from None
            raise ProviderError(message) from None
        except _UNREACHABLE as exc:
            raise PlatformUnavailable(
                self.where, f"{where}: {what} failed: cannot reach the GCF API ({type(exc).__name__})"
            ) from None

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
            raise ProviderError(f"{where}: delete failed: {_api_message(exc)}") from None
        except _UNREACHABLE as exc:
            raise ProviderError(f"{where}: delete: lost the GCF API ({type(exc).__name__})") from None
        log.info("%s: deleted", where)
        return True

    def url(self, name: str) -> str:
        """The function's HTTPS endpoint (looked up once, then cached)."""
        cached = self._urls.get(name)
        if cached:
            return cached
        where = self._where(name)
        try:
            function = self._call(
                where,
                "look-up",
                lambda: self.client.get_function(name=self.resource(name)),
                not_found_ok=True,
            )
        except gexc.NotFound:
            raise ProviderError(f"{where} is not deployed") from None
        uri: str = function.service_config.uri
        if not uri:
            raise ProviderError(f"{where} has no URL yet (state {function.state.name})")
        self._urls[name] = uri
        return uri

    def probe(self, name: str) -> bool:
        """A look-up of the function on the control plane (raises PlatformUnavailable when down)."""
        self._urls.pop(name, None)
        self.url(name)
        return True

    # ------------------------------------------------------------------ invocation
    def _auth_headers(self, url: str) -> dict[str, str]:
        """An ID token whose audience is the function's URL, as GCF's front end demands."""
        if self.settings.allow_unauthenticated:
            return {}
        request = google.auth.transport.requests.Request(self._http)
        try:
            if self._key is not None:
                credentials = self._id_tokens.get(url)
                if credentials is None:
                    credentials = service_account.IDTokenCredentials.from_service_account_info(
                        self._key.info, target_audience=url
                    )
                    self._id_tokens[url] = credentials
                if not credentials.valid:
                    credentials.refresh(request)
                token = str(credentials.token)
            else:
                token = self._metadata_token(request, url)
        except google.auth.exceptions.GoogleAuthError as exc:
            raise ProviderError(
                f"GCF cluster {self.cluster!r}: cannot obtain an ID token: {redact(type(exc).__name__)}: "
                f"{redact(str(exc).splitlines()[0] if str(exc) else '')}"
            ) from None
        return {"Authorization": f"Bearer {token}"}

    def _metadata_token(self, request: Any, url: str) -> str:
        """Without a key: the metadata server's ID token (on GCP), cached until near expiry."""
        cached = self._metadata_tokens.get(url)
        if cached and cached[1] - _TOKEN_SLACK_S > time.time():
            return cached[0]
        token: str = google_id_token.fetch_id_token(request, url)
        claims = google.auth.jwt.decode(token, verify=False)
        self._metadata_tokens[url] = (token, float(claims.get("exp", 0)))
        return token

    def invoke_sync(self, name: str, params: Mapping[str, Any], timeout_s: float) -> ActivationRecord:
        body = json.dumps(params).encode()
        if len(body) > self.capabilities.max_request_bytes:
            raise PayloadTooLarge(
                f"{self._where(name)}: request of {len(body)} bytes is past GCF's "
                f"{self.capabilities.max_request_bytes} byte limit"
            )
        url = self.url(name)
        headers = {"Content-Type": "application/json", **self._auth_headers(url)}
        start = now_ms()
        try:
            response = self._http.post(
                url, data=body, headers=headers, timeout=(_CONNECT_TIMEOUT_S, timeout_s)
            )
        except requests.ConnectionError as exc:  # ConnectTimeout included: it is both
            if never_sent(exc):
                raise PlatformUnavailable(
                    self.where, f"{self._where(name)}: cannot reach the function URL ({type(exc).__name__})"
                ) from None
            return _local_record(
                ActivationStatus.INTERNAL_ERROR,
                start,
                f"connection to the function URL lost after sending ({type(exc).__name__})",
            )
        except requests.Timeout:
            return _local_record(
                ActivationStatus.DEVELOPER_ERROR, start, f"no answer within {timeout_s:g} s", timeout=True
            )
        return self._record(name, response, start)

    def _record(self, name: str, response: requests.Response, start: int) -> ActivationRecord:
        end = now_ms()
        activation_id = response.headers.get(EXECUTION_ID_HEADER) or uuid.uuid4().hex
        status_code = response.status_code
        where = self._where(name)
        if status_code in (401, 403):
            raise ProviderError(f"{where}: the function refused the ID token (HTTP {status_code})")
        if status_code == 404:
            self._urls.pop(name, None)
            raise ProviderError(f"{where} is not deployed (its URL answered 404)")
        if status_code == 413:
            raise PayloadTooLarge(f"{where}: the request is past GCF's limit (HTTP 413)")
        payload = _json_object(response)

        def record(
            status: ActivationStatus, result: dict[str, Any], timeout: bool = False
        ) -> ActivationRecord:
            return ActivationRecord(activation_id, status, result, start, end, timeout)

        if status_code == 200:
            if payload is None:
                return record(
                    ActivationStatus.DEVELOPER_ERROR, {"error": "the function did not return a JSON object"}
                )
            return record(ActivationStatus.SUCCESS, payload)
        if payload is not None and "error" in payload and (400 <= status_code < 500 or status_code == 500):
            return record(ActivationStatus.APPLICATION_ERROR, {"error": str(payload["error"])})
        if status_code in (408, 504):
            return record(
                ActivationStatus.DEVELOPER_ERROR, {"error": f"timed out (HTTP {status_code})"}, True
            )
        if status_code in _UNAVAILABLE_HTTP:
            raise PlatformUnavailable(self.where, f"{where}: the front end answered HTTP {status_code}")
        return record(
            ActivationStatus.DEVELOPER_ERROR, {"error": f"the function failed (HTTP {status_code})"}
        )

    def close(self) -> None:
        self._http.close()
        if self._client is not None:
            self._client.transport.close()
            self._client = None
        if self._key is not None:
            self._key.close()


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _local_record(
    status: ActivationStatus, start: int, message: str, *, timeout: bool = False
) -> ActivationRecord:
    """A record for a call that got no answer: no execution id came back, so mint one."""
    return ActivationRecord(uuid.uuid4().hex, status, {"error": message}, start, now_ms(), timeout)


def _api_message(exc: gexc.GoogleAPICallError, limit: int = 500) -> str:
    """The API's error on one line (build errors can quote whole tracebacks)."""
    text = " ".join(f"HTTP {exc.code}: {exc.message}".split())
    return redact(text if len(text) <= limit else text[: limit - 1] + "…")
