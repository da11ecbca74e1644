"""Invoking Apache OpenWhisk actions (a real deployment or the local fabric) through its REST API.

One ``requests.Session`` per cluster, with bounded retries (tenacity, waiting by its :class:`~fedkeeper.function.backoff.Backoff`) on
connection errors, 429 and 5xx. A blocking invoke's 502 and a 500 that carries an activation
record are *results* (application/developer/whisk errors), never retried: the keeper decides
what to revive.

An invoke is re-sent only when it provably never reached the platform (connection refused, DNS,
connect timeout) or was refused by throttling (429, answered before any activation exists). After
a 5xx, a dropped connection or a read timeout it may have started an activation, so it is not
re-sent: one keeper attempt is at most one activation, and the keeper decides what comes next.

An asynchronous invoke goes first over a keep-alive ``http.client`` connection of its own (half
the CPU of requests', which a round of a thousand clients pays a thousand times), under the same
rules; whenever that connection cannot be made, requests sends it, with its retries.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Collection, Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import requests
from requests.auth import AuthBase
from requests.hooks import dispatch_hook
from requests.structures import CaseInsensitiveDict
from requests.utils import get_environ_proxies
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from fedkeeper.function import catalog
from fedkeeper.function.backoff import Backoff
from fedkeeper.function.config import OpenWhiskCluster
from fedkeeper.function.errors import PayloadTooLarge, PlatformUnavailable, ProviderError, Throttled
from fedkeeper.function.invoke.base import (
    ActivationRecord,
    ActivationStatus,
    Capabilities,
    InvokeClient,
    never_sent,
)

log = logging.getLogger(__name__)

ACTIVATION_ID_HEADER = "x-openwhisk-activation-id"
_STATUSES = {s.value: s for s in ActivationStatus}
_CODES = {
    0: ActivationStatus.SUCCESS,
    1: ActivationStatus.APPLICATION_ERROR,
    2: ActivationStatus.DEVELOPER_ERROR,
    3: ActivationStatus.INTERNAL_ERROR,
}


class _Retryable(Exception):
    """A failure worth another attempt (connection error, 429, 5xx without a record)."""

    def __init__(self, message: str, response: requests.Response | None = None) -> None:
        super().__init__(message)
        self.response = response


def _environ_ca_bundle() -> str | None:
    """The CA bundle the environment names, as requests looks it up when it trusts the environment."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def _is_record(body: Any) -> bool:
    return isinstance(body, dict) and "activationId" in body and isinstance(body.get("response"), dict)


def to_record(body: Mapping[str, Any]) -> ActivationRecord:
    """Map an OpenWhisk activation record onto :class:`ActivationRecord`."""
    response = body.get("response") or {}
    code = response.get("statusCode", body.get("statusCode"))
    status = _STATUSES.get(str(response.get("status"))) or _CODES.get(
        code if isinstance(code, int) else -1, ActivationStatus.INTERNAL_ERROR
    )
    annotations = {a.get("key"): a.get("value") for a in body.get("annotations") or [] if isinstance(a, dict)}
    result = response.get("result")
    init_ms = annotations.get("initTime")  # OpenWhisk annotates it on cold starts only
    return ActivationRecord(
        activation_id=str(body["activationId"]),
        status=status,
        result=result if isinstance(result, dict) else ({"value": result} if result is not None else None),
        start_ms=body.get("start"),
        end_ms=body.get("end"),
        timeout=bool(annotations.get("timeout", False)),
        logs=list(body.get("logs") or []),
        init_ms=init_ms if isinstance(init_ms, int) else None,
    )


class _NotSent(Exception):
    """The invoke's connection could not be made: nothing reached the platform."""


class _InvokeConnection:
    """One keep-alive HTTP/1.1 connection of one thread, for invokes only (``http.client``).

    A POST through requests costs the keeper about twice the CPU of the same POST through
    ``http.client`` (1.2 vs 0.5 ms here), and a round of a thousand clients is a thousand of them.
    It classifies failures as :meth:`OpenWhiskClient._request` does: :class:`_NotSent` when no
    connection could be made (the caller hands the invoke to requests, which retries it), and
    after the request may have gone out, never a re-send.
    """

    def __init__(self, base_url: str, verify: bool | str, connect_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.connect_timeout_s = connect_timeout_s
        self.context: ssl.SSLContext | None = None
        if self.https:
            self.context = ssl.create_default_context(cafile=_ca_file(verify))
            if verify is False:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
        self._conn: http.client.HTTPConnection | None = None

    def post(
        self, path: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers and body of the answer to one POST."""
        conn = self._connection()
        conn.sock.settimeout(timeout_s)
        try:
            conn.request("POST", path, body, dict(headers))
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, response.getheaders(), data

    def _connection(self) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is not None and conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
            self.close()  # the server closed it while idle (or sent what nobody asked): a new one
            conn = None
        if conn is None or conn.sock is None:
            if self.https:
                conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.connect_timeout_s, context=self.context
                )
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout_s)
            try:
                conn.connect()
            except (OSError, ssl.SSLError) as exc:
                conn.close()
                raise _NotSent(f"{type(exc).__name__}: {exc}") from None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _ca_file(verify: bool | str) -> str | None:
    """The CA bundle requests would verify with (its own, certifi's, by default)."""
    if isinstance(verify, str):
        return verify
    return requests.utils.DEFAULT_CA_BUNDLE_PATH if verify else None


class OpenWhiskClient(InvokeClient):
    """Invokes the actions of a cluster from ``providers.openwhisk`` (``settings`` is its
    :class:`OpenWhiskCluster`); :class:`~fedkeeper.host.providers.openwhisk.OpenWhiskProvider`
    adds deploying."""

    platform: ClassVar[str] = "openwhisk"
    capabilities: ClassVar[Capabilities] = catalog.platform("openwhisk").capabilities
    # Retry policy of one HTTP request (class attributes so tests and callers can tune them).
    max_attempts: int = 5
    backoff: Backoff = Backoff(base_s=0.2, cap_s=5.0, jitter_s=0.2)
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 60.0
    page_size: int = 200
    max_pages: int = 10
    max_single_gets: int = 50
    poll_interval_s: float = 0.25

    def __init__(self, cluster: str, settings: OpenWhiskCluster) -> None:
        super().__init__(cluster, settings)
        self.settings: OpenWhiskCluster = settings
        self.base_url = settings.base_url.rstrip("/")
        self.namespace = settings.namespace
        self.session = requests.Session()
        user, _, key = settings.auth.partition(":")
        self.session.auth = (user, key)
        self.session.headers["User-Agent"] = "fedkeeper"
        self._templates: dict[str, requests.PreparedRequest] = {}  # by URL: see _post_json
        self._invokes = threading.local()  # each thread's _InvokeConnection
        self._invoke_headers = {
            "Authorization": "Basic " + base64.b64encode(settings.auth.encode()).decode("ascii"),
            "User-Agent": "fedkeeper",
            "Content-Type": "application/json",
            "Accept": "*/*",
        }
        # requests reads the proxy variables and CA bundle from the environment on every request
        # (trust_env), a large share of the keeper's CPU per invoke: read them once per cluster.
        self.session.proxies.update(get_environ_proxies(self.base_url))
        self.session.verify = _environ_ca_bundle() or True
        self.session.trust_env = False
        if settings.insecure:
            # (with trust_env, REQUESTS_CA_BUNDLE would silently turn verification back on)
            self.session.verify = False
            # Silence urllib3's warning for this host only; other clusters keep it.
            host = urlsplit(self.base_url).hostname or ""
            warnings.filterwarnings(
                "ignore", message=rf".*host '{re.escape(host)}'", module="urllib3", append=False
            )

    # ------------------------------------------------------------------ plumbing
    def _url(self, *parts: str) -> str:
        return "/".join([self.base_url, "api/v1/namespaces", quote(self.namespace, safe=""), *parts])

    def action_url(self, name: str) -> str:
        return self._url("actions", quote(name, safe=""))

    def web_url(self, name: str, extension: str = "json") -> str:
        return f"{self.base_url}/api/v1/web/{quote(self.namespace, safe='')}/default/{quote(name, safe='')}.{extension}"

    def _fail(self, method: str, url: str, response: requests.Response) -> ProviderError:
        try:
            detail = response.json().get("error", response.text[:300])
        except ValueError:
            detail = response.text[:300]
        message = (
            f"openwhisk cluster {self.cluster!r}: {method} {url} -> HTTP {response.status_code}: {detail}"
        )
        if response.status_code == 413:
            return PayloadTooLarge(message)
        if response.status_code == 429:
            return Throttled(self.where, message)
        if response.status_code == 429 or response.status_code >= 500:  # the controller, not the action
            return PlatformUnavailable(self.where, message)
        return ProviderError(message)

    def _request(
        self,
        method: str,
        url: str,
        *,
        ok: Collection[int] = (200,),
        results: Collection[int] = (),
        timeout: float | None = None,
        resend: bool = True,
        retry_throttled: bool = True,
        prepared: requests.PreparedRequest | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send with retries; return a response whose status is in ``ok`` or ``results``.

        ``results`` are statuses whose body may be an activation record (a blocking invoke's 502
        and 500): with a record they are returned, never retried. ``resend=False`` (invokes)
        retries only what never reached the platform, or a 429; ``retry_throttled=False`` raises
        :class:`Throttled` at the first 429. ``prepared`` is sent as it is (``kwargs`` unused).
        """
        timeout_pair = (self.connect_timeout_s, timeout or self.request_timeout_s)

        def attempt() -> requests.Response:
            try:
                if prepared is not None:
                    response = self.session.send(prepared, timeout=timeout_pair)
                else:
                    response = self.session.request(method, url, timeout=timeout_pair, **kwargs)
            except requests.ConnectionError as exc:
                if resend or never_sent(exc):
                    raise _Retryable(f"cannot reach {url}: {type(exc).__name__}") from exc
                raise ProviderError(
                    f"openwhisk cluster {self.cluster!r}: {method} {url}: connection lost after sending "
                    f"({type(exc).__name__}); not re-sent, since it may have started an activation"
                ) from None
            if response.status_code in ok:
                return response
            if response.status_code in results:
                try:
                    if _is_record(response.json()):
                        return response
                except ValueError:
                    pass
            if response.status_code == 429 and not retry_throttled:
                raise self._fail(method, url, response)
            if response.status_code == 429 or (resend and response.status_code >= 500):
                raise _Retryable(f"HTTP {response.status_code}", response)
            raise self._fail(method, url, response)

        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self.backoff.tenacity_wait,
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
            before_sleep=lambda state: log.info(
                "openwhisk %s: %s %s failed (%s); retrying",
                self.cluster,
                method,
                url,
                state.outcome.exception() if state.outcome else "?",
            ),
        )
        try:
            return retrying(attempt)
        except _Retryable as exc:
            if exc.response is not None:
                raise self._fail(method, url, exc.response) from None
            raise PlatformUnavailable(
                self.where,
                f"openwhisk cluster {self.cluster!r}: {method} {url} failed after {self.max_attempts} attempts: {exc}",
            ) from None
        except requests.Timeout:
            raise ProviderError(
                f"openwhisk cluster {self.cluster!r}: {method} {url} got no answer within {timeout_pair[1]:g} s"
            ) from None
        except requests.RequestException as exc:
            raise ProviderError(f"openwhisk cluster {self.cluster!r}: {method} {url} failed: {exc}") from None

    def _post_json(self, url: str, body: Mapping[str, Any]) -> requests.PreparedRequest:
        """A POST of ``body`` to ``url``, copied from a request prepared once per URL.

        Preparing a request merges the session's headers, auth, cookies and hooks anew each time,
        which was most of the keeper's CPU per invoke; the session's hooks are taken as they are
        now, so one added later still sees every request.
        """
        template = self._templates.get(url)
        if template is None:
            template = self._templates[url] = self.session.prepare_request(requests.Request("POST", url))
        prepared = template.copy()
        prepared.prepare_body(None, None, json=dict(body))
        prepared.hooks = self.session.hooks
        return prepared

    def _invoke_directly(self, url: str, params: Mapping[str, Any]) -> requests.Response | None:
        """POST an invoke over this thread's :class:`_InvokeConnection`; None when it was not sent
        (no connection could be made, or a proxy is configured): requests sends it then.

        Answers as :meth:`_request`'s first attempt of an invoke would (a 202 is returned, a 429
        raises :class:`Throttled` or, when 429s are retried, is handed to requests, since nothing
        started). The session's response hooks see the answer, as they see requests' own.
        """
        if self.session.proxies:
            return None
        conn: _InvokeConnection | None = getattr(self._invokes, "conn", None)
        if conn is None:
            verify = self.session.verify if isinstance(self.session.verify, (bool, str)) else True
            conn = self._invokes.conn = _InvokeConnection(self.base_url, verify, self.connect_timeout_s)
        path = url[len(self.base_url) :] or "/"
        body = json.dumps(dict(params), separators=(",", ":")).encode()
        try:
            status, headers, data = conn.post(path, body, self._invoke_headers, self.request_timeout_s)
        except _NotSent:
            return None
        except TimeoutError:
            raise ProviderError(
                f"openwhisk cluster {self.cluster!r}: POST {url} got no answer within {self.request_timeout_s:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise ProviderError(
                f"openwhisk cluster {self.cluster!r}: POST {url}: connection lost after sending "
                f"({type(exc).__name__}); not re-sent, since it may have started an activation"
            ) from None
        response = requests.Response()
        response.status_code, response._content, response.url = status, data, url
        response.headers = CaseInsensitiveDict(headers)
        response.request = requests.PreparedRequest()
        response.request.method, response.request.url = "POST", url
        response = dispatch_hook("response", self.session.hooks, response)
        if status == 202:
            return response
        if status == 429 and self.retry_throttled:
            return None
        raise self._fail("POST", url, response)

    # ------------------------------------------------------------------ invocations
    def invoke_async(self, name: str, params: Mapping[str, Any]) -> str:
        url = self.action_url(name)
        response = self._invoke_directly(url, params)
        if response is None:
            response = self._request(
                "POST",
                url,
                ok=(202,),
                resend=False,
                retry_throttled=self.retry_throttled,
                prepared=self._post_json(url, params),
            )
        activation_id = response.headers.get(ACTIVATION_ID_HEADER) or response.json().get("activationId")
        if not activation_id:
            raise ProviderError(f"openwhisk cluster {self.cluster!r}: POST {url} returned no activation id")
        return str(activation_id)

    def invoke_sync(self, name: str, params: Mapping[str, Any], timeout_s: float) -> ActivationRecord:
        """Blocking invoke; when the platform's wait runs out (202), poll the record until ``timeout_s``.

        Returns a PENDING record if it has not finished by then.
        """
        url = self.action_url(name)
        deadline = time.monotonic() + timeout_s
        response = self._request(
            "POST",
            url,
            ok=(200, 202),
            results=(500, 502),
            params={"blocking": "true"},
            json=dict(params),
            timeout=timeout_s + 10,
            resend=False,
        )
        body = response.json()
        if response.status_code != 202 and _is_record(body):
            return to_record(body)
        activation_id = response.headers.get(ACTIVATION_ID_HEADER) or body.get("activationId")
        if not activation_id:
            raise ProviderError(f"openwhisk cluster {self.cluster!r}: POST {url} returned no activation id")
        while True:
            record = self.get_activation(str(activation_id))
            if record is not None:
                return record
            if time.monotonic() >= deadline:
                return ActivationRecord(str(activation_id), ActivationStatus.PENDING)
            time.sleep(min(self.poll_interval_s, max(0.0, deadline - time.monotonic())))

    def get_activation(self, activation_id: str) -> ActivationRecord | None:
        """One activation's record, or None while it does not exist (404)."""
        response = self._request("GET", self._url("activations", activation_id), ok=(200, 404))
        return None if response.status_code == 404 else to_record(response.json())

    def list_activations(
        self, name: str | None = None, since_ms: int | None = None, limit: int = 200, skip: int = 0
    ) -> list[dict[str, Any]]:
        """One page of full records (``docs=true``), newest first."""
        params: dict[str, Any] = {"docs": "true", "limit": limit, "skip": skip}
        if name:
            params["name"] = name
        if since_ms is not None:
            params["since"] = since_ms
        body = self._request("GET", self._url("activations"), params=params).json()
        if not isinstance(body, list):
            raise ProviderError(f"openwhisk cluster {self.cluster!r}: activation list is not a JSON array")
        return body

    def fetch(self, name: str, activation_ids: Collection[str], since_ms: int) -> dict[str, ActivationRecord]:
        """Finished records among ``activation_ids``, from the list API in pages of 200.

        Pages (``skip``) until every id is found or the listing since ``since_ms`` is exhausted.
        Only when the listing is cut short by ``max_pages`` are the ids still missing fetched one
        by one (at most ``max_single_gets``); an id absent from an exhausted listing has simply
        not finished yet.
        """
        wanted = set(activation_ids)
        found: dict[str, ActivationRecord] = {}
        if not wanted:
            return found
        exhausted = False
        for page in range(self.max_pages):
            rows = self.list_activations(name, since_ms, self.page_size, page * self.page_size)
            for row in rows:
                activation_id = row.get("activationId")
                if activation_id in wanted and _is_record(row):
                    found[activation_id] = to_record(row)
            if len(rows) < self.page_size:
                exhausted = True
                break
            if wanted <= found.keys():
                break
        missing = wanted - found.keys()
        if missing and not exhausted:
            for activation_id in sorted(missing)[: self.max_single_gets]:
                record = self.get_activation(activation_id)
                if record is not None:
                    found[activation_id] = record
        return found

    def invoke_web(
        self,
        name: str,
        params: Mapping[str, Any],
        *,
        secret: str | None = None,
        basic_auth: bool = False,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        """Call a web action (``.json``).

        ``secret`` answers a ``require-whisk-auth`` secret; ``basic_auth`` sends the namespace key
        (for ``require-whisk-auth: true``). Otherwise no credentials leave the keeper.
        """
        url = self.web_url(name)
        headers = {"X-Require-Whisk-Auth": secret} if secret else {}
        auth = None if basic_auth else _NoAuth()
        response = self._request(
            "POST", url, json=dict(params), headers=headers, auth=auth, timeout=timeout_s + 10, resend=False
        )
        body = response.json()
        if not isinstance(body, dict):
            raise ProviderError(
                f"openwhisk cluster {self.cluster!r}: POST {url} did not return a JSON object"
            )
        return body

    def close(self) -> None:
        conn: _InvokeConnection | None = getattr(self._invokes, "conn", None)
        if conn is not None:
            conn.close()
        self.session.close()


class _NoAuth(AuthBase):
    """Send no Authorization header (web actions must not see the namespace key)."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop("Authorization", None)
        return request
