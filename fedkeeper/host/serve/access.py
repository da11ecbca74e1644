"""Who may change state through ``fedkeeper serve``: the holder of its token, and nobody without one.

Reading needs no token. A request that changes state sends ``Authorization: Bearer TOKEN``; the
token comes from ``FEDKEEPER_API_TOKEN`` or the config's ``serve.token``, is compared in constant
time, and is registered with the redactor, so no log line or error can show it.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from fedkeeper.function.config import ServeConfig
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.redaction import register_secret

TOKEN_ENV = "FEDKEEPER_API_TOKEN"
MIN_TOKEN_CHARS = 16


class Verdict(Enum):
    ALLOWED = "allowed"
    NO_TOKEN_SET = "no token set"  # the server accepts no change at all
    REFUSED = "refused"  # missing or wrong token


@dataclass(frozen=True)
class Access:
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, serve: ServeConfig, environ: Mapping[str, str] = os.environ) -> Access:
        """The token from the environment (which wins) or the config; none when neither has one."""
        token = environ.get(TOKEN_ENV) or (serve.token.get_secret_value() if serve.token else None)
        if token is None:
            return cls()
        where = TOKEN_ENV if environ.get(TOKEN_ENV) else "serve.token"
        if len(token) < MIN_TOKEN_CHARS or token != token.strip():
            raise ConfigError(
                f"{where}: the API token must be at least {MIN_TOKEN_CHARS} characters without surrounding "
                "spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
            )
        register_secret(token)
        return cls(token)

    def check(self, authorization: str | None) -> Verdict:
        """Whether a request with this ``Authorization`` header may change state."""
        if self.token is None:
            return Verdict.NO_TOKEN_SET
        scheme, _, given = (authorization or "").partition(" ")
        # compare_digest on bytes takes as long whatever the first difference; on a wrong scheme too.
        matches = hmac.compare_digest(given.strip().encode("utf-8"), self.token.encode("utf-8"))
        return Verdict.ALLOWED if matches and scheme.lower() == "bearer" else Verdict.REFUSED
