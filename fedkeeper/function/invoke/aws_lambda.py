"""Invoking AWS Lambda functions through boto3 (deploying lives in
:class:`~fedkeeper.host.providers.aws_lambda.LambdaProvider`).

Invocation is ``invoke`` with ``RequestResponse``; the response's RequestId is the activation id.
``invoke_event`` starts an ``Event`` (fire-and-forget) run, but Lambda keeps no record of its
outcome that a caller could fetch, so ``async_invoke`` stays false and the keeper reaches
Lambda clients through ``fl_invoker_weights_update``.

Outcome -> :class:`ActivationRecord` status:

=========================================================  =====================================
200, no ``FunctionError``                                  SUCCESS (a non-object payload: DEVELOPER_ERROR)
``FunctionError`` with the handler's own exception         APPLICATION_ERROR, ``result = {"error": errorMessage}``
``FunctionError`` of type ``Runtime.*`` / ``Function.*``   DEVELOPER_ERROR (crash, bad handler, oversize reply)
``Sandbox.Timedout`` / "Task timed out", read timeout      DEVELOPER_ERROR, ``timeout=True``
connection closed after sending                            INTERNAL_ERROR
throttling, 5xx (``ServiceException``), endpoint            raises PlatformUnavailable (an outage: the
unreachable (refused, DNS, connect timeout)                keeper waits for it, at no cost to retries)
function not found, access denied, bad parameters          raises ProviderError
request past 6 MB                                          raises PayloadTooLarge before sending
=========================================================  =====================================
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, NoReturn

import boto3
import botocore.exceptions
from botocore.config import Config as BotoConfig

from fedkeeper.function import catalog
from fedkeeper.function.config import AwsCluster
from fedkeeper.function.errors import PayloadTooLarge, PlatformUnavailable, ProviderError
from fedkeeper.function.invoke.base import (
    MB,
    ActivationRecord,
    ActivationStatus,
    Capabilities,
    InvokeClient,
    now_ms,
)
from fedkeeper.function.redaction import redact, register_secret

_PLATFORM_ERROR_PREFIXES = ("Runtime.", "Function.", "Sandbox.")
_THROTTLED = {
    "TooManyRequestsException",
    "ServiceException",
    "EC2ThrottledException",
    "ResourceNotReadyException",
}
_PROBE_TIMEOUT_S = 10.0


class LambdaClient(InvokeClient):
    """Invokes the functions of one AWS account and region (``providers.aws.<cluster>``)."""

    platform: ClassVar[str] = "aws"
    capabilities: ClassVar[Capabilities] = catalog.platform("aws").capabilities

    def __init__(self, cluster: str, settings: AwsCluster) -> None:
        super().__init__(cluster, settings)
        self.settings: AwsCluster = settings
        key_id = settings.access_key_id.get_secret_value() if settings.access_key_id else None
        secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
        token = settings.session_token.get_secret_value() if settings.session_token else None
        register_secret(key_id, secret, token)
        # Keys from the config, else the standard chain (environment, shared files, instance role).
        self._session = boto3.session.Session(
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=token,
            region_name=settings.region,
        )
        if key_id is None:
            # Keys found by the chain are masked in logs too (botocore logs the signing key id).
            found = self._session.get_credentials()
            if found is not None:
                frozen = found.get_frozen_credentials()
                register_secret(frozen.access_key, frozen.secret_key, frozen.token)
        self._invokers: dict[int, Any] = {}

    def _client(self, config: BotoConfig) -> Any:
        return self._session.client("lambda", endpoint_url=self.settings.endpoint_url, config=config)

    def _invoker(self, timeout_s: float) -> Any:
        """A client whose read timeout covers the run; no automatic retries, since the keeper
        tracks every attempt itself and a hidden retry would be an untracked activation."""
        key = max(1, int(timeout_s + 0.999))
        client = self._invokers.get(key)
        if client is None:
            client = self._client(
                BotoConfig(
                    read_timeout=key,
                    connect_timeout=10,
                    retries={"mode": "standard", "total_max_attempts": 1},
                )
            )
            self._invokers[key] = client
        return client

    def _where(self, name: str) -> str:
        return f"Lambda cluster {self.cluster!r}: function {name}"

    # ------------------------------------------------------------------ invocation
    def _payload(self, name: str, params: Mapping[str, Any], limit: int) -> bytes:
        body = json.dumps(params).encode()
        if len(body) > limit:
            raise PayloadTooLarge(
                f"{self._where(name)}: request of {len(body)} bytes is past Lambda's {limit} byte limit"
            )
        return body

    def invoke_sync(self, name: str, params: Mapping[str, Any], timeout_s: float) -> ActivationRecord:
        body = self._payload(name, params, self.capabilities.max_request_bytes)
        start = now_ms()
        try:
            response = self._invoker(timeout_s).invoke(
                FunctionName=name, InvocationType="RequestResponse", LogType="Tail", Payload=body
            )
        except botocore.exceptions.ReadTimeoutError:
            return _local_record(
                ActivationStatus.DEVELOPER_ERROR, start, f"no answer within {timeout_s:g} s", True
            )
        except botocore.exceptions.EndpointConnectionError as exc:  # refused, DNS, connect timeout
            raise PlatformUnavailable(
                self.where, f"{self._where(name)}: cannot reach Lambda ({type(exc).__name__})"
            ) from None
        except botocore.exceptions.ConnectionClosedError as exc:  # after sending: it may have run
            return _local_record(
                ActivationStatus.INTERNAL_ERROR, start, f"lost Lambda after sending ({type(exc).__name__})"
            )
        except botocore.exceptions.ClientError as exc:
            self._client_error(name, exc)
        except botocore.exceptions.BotoCoreError as exc:  # no credentials, bad endpoint, ...
            raise ProviderError(f"{self._where(name)}: invoke failed: {redact(str(exc))}") from None
        return self._record(response, start)

    def probe(self, name: str) -> bool:
        """``get_function`` through the retry-less client (raises PlatformUnavailable when down)."""
        try:
            self._invoker(_PROBE_TIMEOUT_S).get_function(FunctionName=name)
        except botocore.exceptions.EndpointConnectionError as exc:
            raise PlatformUnavailable(
                self.where, f"{self._where(name)}: cannot reach Lambda ({type(exc).__name__})"
            ) from None
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
                raise PlatformUnavailable(self.where, f"{self._where(name)}: {client_message(exc)}") from None
        except botocore.exceptions.BotoCoreError:
            pass  # it answered something: the next attempt tells what is wrong
        return True

    def invoke_event(self, name: str, params: Mapping[str, Any]) -> str:
        """Start an asynchronous (``Event``) run and return its RequestId; its result is not kept.

        The Invoke API takes at most 1 MB for asynchronous payloads (6 MB for synchronous ones).
        """
        body = self._payload(name, params, 1 * MB)
        try:
            response = self._invoker(30).invoke(FunctionName=name, InvocationType="Event", Payload=body)
        except botocore.exceptions.ClientError as exc:
            raise ProviderError(f"{self._where(name)}: Event invoke refused: {client_message(exc)}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ProviderError(f"{self._where(name)}: Event invoke failed: {redact(str(exc))}") from None
        request_id: str = response["ResponseMetadata"]["RequestId"]
        return request_id

    def _client_error(self, name: str, exc: botocore.exceptions.ClientError) -> NoReturn:
        """Raise what an invoke's ``ClientError`` means (the handler's own errors never get here)."""
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise ProviderError(f"{self._where(name)} is not deployed") from None
        if code in ("RequestTooLargeException", "RequestEntityTooLargeException"):
            raise PayloadTooLarge(f"{self._where(name)}: {client_message(exc)}") from None
        if code in _THROTTLED or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
            raise PlatformUnavailable(self.where, f"{self._where(name)}: {client_message(exc)}") from None
        raise ProviderError(f"{self._where(name)}: invoke refused: {client_message(exc)}") from None

    def _record(self, response: dict[str, Any], start: int) -> ActivationRecord:
        end = now_ms()
        request_id = response.get("ResponseMetadata", {}).get("RequestId") or uuid.uuid4().hex
        raw = response["Payload"].read()
        logs = _tail_logs(response.get("LogResult"))
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None

        def record(
            status: ActivationStatus, result: dict[str, Any], timeout: bool = False
        ) -> ActivationRecord:
            return ActivationRecord(request_id, status, result, start, end, timeout, logs)

        if "FunctionError" not in response:
            if not isinstance(payload, dict):
                return record(
                    ActivationStatus.DEVELOPER_ERROR, {"error": "the function did not return a JSON object"}
                )
            return record(ActivationStatus.SUCCESS, payload)
        error = payload if isinstance(payload, dict) else {}
        message = str(error.get("errorMessage") or "the function failed without a message")
        error_type = str(error.get("errorType") or "")
        if error_type == "Sandbox.Timedout" or "Task timed out" in message:
            return record(ActivationStatus.DEVELOPER_ERROR, {"error": message}, timeout=True)
        if error_type.startswith(_PLATFORM_ERROR_PREFIXES):
            return record(ActivationStatus.DEVELOPER_ERROR, {"error": f"{error_type}: {message}"})
        return record(ActivationStatus.APPLICATION_ERROR, {"error": message})

    def close(self) -> None:
        for client in self._invokers.values():
            client.close()
        self._invokers.clear()


def _tail_logs(encoded: str | None) -> list[str]:
    if not encoded:
        return []
    return base64.b64decode(encoded).decode(errors="replace").splitlines()


def _local_record(
    status: ActivationStatus, start: int, message: str, timeout: bool = False
) -> ActivationRecord:
    """A record for a call that got no answer: no RequestId came back, so mint one."""
    return ActivationRecord(uuid.uuid4().hex, status, {"error": message}, start, now_ms(), timeout)


def client_message(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    return redact(f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": "))
