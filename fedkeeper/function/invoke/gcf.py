"""Invoking Google Cloud Functions (2nd gen) HTTP functions.

The function's URL is looked up once on the control plane (the v2 ``FunctionServiceClient`` over
REST); deploying lives in :class:`~fedkeeper.host.providers.gcf.GcfProvider`. Invocation: an HTTPS POST to the function's URL carrying an ID
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

import json
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
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import functions_v2
from google.oauth2 import id_token as google_id_token
from google.oauth2 import service_account

from fedkeeper.function import catalog
from fedkeeper.function.config import GoogleCluster
from fedkeeper.function.errors import ConfigError, PayloadTooLarge, PlatformUnavailable, ProviderError
from fedkeeper.function.invoke.base import (
    ActivationRecord,
    ActivationStatus,
    Capabilities,
    InvokeClient,
    never_sent,
    now_ms,
)
from fedkeeper.function.invoke.credentials import ServiceAccountKey
from fedkeeper.function.redaction import redact

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
EXECUTION_ID_HEADER = "Function-Execution-Id"
_FUNCTION_ID = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
CONNECT_TIMEOUT_S = 10.0
# The REST transport lets connection failures through as requests (or google-auth) exceptions.
UNREACHABLE = (requests.RequestException, google.auth.exceptions.TransportError)
_UNAVAILABLE_HTTP = (429, 502, 503)  # the front end's answers when no instance can take the call
_TOKEN_SLACK_S = 300  # refresh an ID token this long before it expires


def function_id(name: str) -> str:
    """GCF's id for a fedkeeper function: ``fl_client`` -> ``fl-client`` (ids take no underscores)."""
    fid = name.replace("_", "-").lower()
    if not _FUNCTION_ID.match(fid):
        raise ProviderError(
            f"function name {name!r} cannot be a GCF id: lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters"
        )
    return fid


class GcfClient(InvokeClient):
    """Invokes the functions of one GCF project and region (``providers.google.<cluster>``)."""

    platform: ClassVar[str] = "google"
    capabilities: ClassVar[Capabilities] = catalog.platform("google").capabilities

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

    def _call(self, where: str, what: str, call: Any, *, not_found_ok: bool = False) -> Any:
        """``call()`` with API errors as one-line ProviderErrors (``NotFound`` raised as is if asked)."""
        try:
            return call()
        except gexc.NotFound:
            if not_found_ok:
                raise
            raise ProviderError(f"{where}: {what} refused: not found") from None
        except gexc.GoogleAPICallError as exc:
            message = f"{where}: {what} refused: {api_message(exc)}"
            if exc.code is not None and (exc.code in _UNAVAILABLE_HTTP or exc.code >= 500):
                raise PlatformUnavailable(self.where, message) from None
            raise ProviderError(message) from None
        except UNREACHABLE as exc:
            raise PlatformUnavailable(
                self.where, f"{where}: {what} failed: cannot reach the GCF API ({type(exc).__name__})"
            ) from None

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
                url, data=body, headers=headers, timeout=(CONNECT_TIMEOUT_S, timeout_s)
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


def api_message(exc: gexc.GoogleAPICallError, limit: int = 500) -> str:
    """The API's error on one line (build errors can quote whole tracebacks)."""
    text = " ".join(f"HTTP {exc.code}: {exc.message}".split())
    return redact(text if len(text) <= limit else text[: limit - 1] + "…")
