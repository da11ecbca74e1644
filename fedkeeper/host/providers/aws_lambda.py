"""Deploying to AWS Lambda: functions deployed from a zip through boto3.

Deploy is ``create_function`` or, when the function exists, ``update_function_code`` then
``update_function_configuration`` (each awaited until ``LastUpdateStatus`` is Successful).
Invoking lives in :class:`~fedkeeper.function.invoke.aws_lambda.LambdaClient` (the invoker
function needs it).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import botocore.exceptions
from botocore.config import Config as BotoConfig

from fedkeeper.function.config import AwsCluster
from fedkeeper.function.errors import ProviderError
from fedkeeper.function.invoke.aws_lambda import LambdaClient, client_message
from fedkeeper.function.invoke.base import MB
from fedkeeper.function.redaction import redact
from fedkeeper.function.tasks.entry import BOUND_ENV
from fedkeeper.host.packaging import build_zip
from fedkeeper.host.providers.base import FunctionSpec, Provider

log = logging.getLogger(__name__)

HANDLER = "lambda_function.handler"  # lambda_function.py in every folder under functions/
MAX_ZIP_BYTES = 50 * MB  # direct upload limit of create_function / update_function_code
_WAIT_DELAY_S = 1


class LambdaProvider(LambdaClient, Provider):
    """One AWS account and region (``providers.aws.<cluster>``)."""

    def __init__(self, cluster: str, settings: AwsCluster) -> None:
        super().__init__(cluster, settings)
        self._control = self._client(BotoConfig(retries={"mode": "standard", "max_attempts": 5}))

    # ------------------------------------------------------------------ control plane
    def deploy(self, spec: FunctionSpec) -> None:
        where = self._where(spec.name)
        self.refuse_unsupported(spec)
        archive = build_zip(spec.source)
        if len(archive) > MAX_ZIP_BYTES:
            raise ProviderError(
                f"{where}: zip of {len(archive)} bytes is past Lambda's {MAX_ZIP_BYTES} byte upload limit"
            )
        configuration = {
            "Runtime": self.settings.runtime,
            "Role": self.settings.role_arn,
            "Handler": HANDLER,
            "MemorySize": spec.memory_mb,
            "Timeout": spec.timeout_s,
            "Environment": {"Variables": {BOUND_ENV: json.dumps(dict(spec.bound))} if spec.bound else {}},
        }
        started = time.monotonic()
        try:
            self._control.create_function(
                FunctionName=spec.name, Code={"ZipFile": archive}, Publish=False, **configuration
            )
            action = "created"
        except self._control.exceptions.ResourceConflictException:
            self._update(spec.name, archive, configuration)
            action = "updated"
        except botocore.exceptions.ClientError as exc:
            raise ProviderError(f"{where}: create refused: {client_message(exc)}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ProviderError(f"{where}: create failed: {redact(str(exc))}") from None
        self._wait(spec.name, "function_active_v2")
        log.info("%s: %s (%d bytes, %.1f s)", where, action, len(archive), time.monotonic() - started)

    def _update(self, name: str, archive: bytes, configuration: dict[str, Any]) -> None:
        where = self._where(name)
        try:
            # A previous update may still be in progress; Lambda refuses a second one meanwhile.
            self._wait(name, "function_updated_v2")
            self._control.update_function_code(FunctionName=name, ZipFile=archive, Publish=False)
            self._wait(name, "function_updated_v2")
            self._control.update_function_configuration(FunctionName=name, **configuration)
            self._wait(name, "function_updated_v2")
        except botocore.exceptions.ClientError as exc:
            raise ProviderError(f"{where}: update refused: {client_message(exc)}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ProviderError(f"{where}: update failed: {redact(str(exc))}") from None

    def _wait(self, name: str, waiter_name: str) -> None:
        """Wait for State Active / LastUpdateStatus Successful, within ``operation_timeout_s``."""
        attempts = max(1, int(self.settings.operation_timeout_s / _WAIT_DELAY_S))
        try:
            self._control.get_waiter(waiter_name).wait(
                FunctionName=name, WaiterConfig={"Delay": _WAIT_DELAY_S, "MaxAttempts": attempts}
            )
        except botocore.exceptions.WaiterError as exc:
            reason = (
                exc.last_response.get("Configuration", exc.last_response).get("LastUpdateStatusReason") or ""
            )
            raise ProviderError(
                f"{self._where(name)}: not ready within {self.settings.operation_timeout_s:g} s "
                f"({waiter_name}) {redact(str(reason))}".rstrip()
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ProviderError(f"{self._where(name)}: waiting failed: {redact(str(exc))}") from None

    def remove(self, name: str) -> bool:
        try:
            self._control.delete_function(FunctionName=name)
        except self._control.exceptions.ResourceNotFoundException:
            return False
        except botocore.exceptions.ClientError as exc:
            raise ProviderError(f"{self._where(name)}: delete refused: {client_message(exc)}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ProviderError(f"{self._where(name)}: delete failed: {redact(str(exc))}") from None
        log.info("%s: deleted", self._where(name))
        return True

    def close(self) -> None:
        self._control.close()
        super().close()
