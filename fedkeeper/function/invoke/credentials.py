"""Platform credentials: loaded once, never shown in a log line or an exception message.

Two guards keep key material out of sight:

* Errors about a credential name where it came from (a config field, a file path, an
  environment variable) and what is wrong with it, never its content.
* Every secret a provider loads is registered with :func:`fedkeeper.function.redaction.register_secret`;
  from then on the one redactor masks it in every log record, error and status line.
"""

from __future__ import annotations

import json
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any

from fedkeeper.function.errors import ConfigError
from fedkeeper.function.redaction import register_secret

# --------------------------------------------------------------------------- GCF service accounts
_REQUIRED_FIELDS = ("type", "private_key", "client_email", "token_uri")


class ServiceAccountKey:
    """A Google service-account key, held in memory.

    Use :meth:`load`; :meth:`file` writes the key to a private (0600) temporary file for tools
    that only take a path, and :meth:`close` removes that file again.
    """

    def __init__(self, info: dict[str, Any], source: str) -> None:
        self.info = info
        self.source = source
        self._path: Path | None = None
        self._finalizer: weakref.finalize[Any, ServiceAccountKey] | None = None
        private_key = str(info["private_key"])
        register_secret(private_key, str(info.get("private_key_id", "")))
        # Lines of the PEM body, so that a fragment (or the JSON-escaped form) is masked too.
        register_secret(*(line.strip() for line in private_key.splitlines() if "-----" not in line))

    @property
    def client_email(self) -> str:
        return str(self.info["client_email"])

    @classmethod
    def load(cls, value: str | None, where: str) -> ServiceAccountKey | None:
        """Read a key from ``value`` (a file path or the JSON text itself) or, when ``value`` is
        empty, from the file named by ``GOOGLE_APPLICATION_CREDENTIALS``; ``None`` if neither.

        ``where`` names the config field in error messages.
        """
        if value and value.lstrip()[:1] in ("{", "["):
            return cls._parse(value, f"{where} (inline JSON)")
        if value:
            return cls._read(Path(value).expanduser(), f"{where}: file {value}")
        env_path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if env_path:
            return cls._read(Path(env_path).expanduser(), f"GOOGLE_APPLICATION_CREDENTIALS file {env_path}")
        return None

    @classmethod
    def _read(cls, path: Path, source: str) -> ServiceAccountKey:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read ({type(exc).__name__})") from None
        return cls._parse(text, source)

    @classmethod
    def _parse(cls, text: str, source: str) -> ServiceAccountKey:
        try:
            info = json.loads(text)
        except json.JSONDecodeError as exc:
            # Position only: the decoder's document (the key itself) must not travel with the error.
            raise ConfigError(f"{source}: not valid JSON (line {exc.lineno} column {exc.colno})") from None
        if not isinstance(info, dict):
            raise ConfigError(f"{source}: a service-account key must be a JSON object")
        missing = [f for f in _REQUIRED_FIELDS if not info.get(f)]
        if missing:
            raise ConfigError(f"{source}: service-account key lacks {', '.join(missing)}")
        if info["type"] != "service_account":
            raise ConfigError(f"{source}: type is {info['type']!r}, expected 'service_account'")
        return cls(info, source)

    def file(self) -> Path:
        """The key as a 0600 temporary file (created on first use, removed by :meth:`close`)."""
        if self._path is None:
            fd, name = tempfile.mkstemp(prefix="fedkeeper-sa-", suffix=".json")  # mkstemp: mode 0600
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, json.dumps(self.info).encode())
            finally:
                os.close(fd)
            self._path = Path(name)
            # Removed even if the owner forgets close(): at garbage collection or interpreter exit.
            self._finalizer = weakref.finalize(self, _unlink, self._path)
        return self._path

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = None
        self._path = None

    def __repr__(self) -> str:
        return f"ServiceAccountKey({self.client_email}, from {self.source})"


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
