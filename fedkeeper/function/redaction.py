"""The one redactor: no credential reaches an error, a log record, a status line or a params file.

Three kinds of secret are masked with ``***``:

* the user-info part of any URL (``mongodb://user:pass@host``, ``mongodb+srv://``,
  ``https://user:pass@host``): the whole ``user:pass`` goes, since a password may hold ``:``;
* ``password=…``-style query parameters and ``key: value`` pairs of known secret names;
* every value registered with :func:`register_secret` (platform keys a provider loaded).

Importing this module installs a log-record factory that passes every record of every logger
through :func:`redact`, so libraries we do not control (botocore logs the signed
``Authorization`` header at DEBUG) are covered too.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from typing import Any

MASK = "***"
# Mapping keys whose values are credentials (deploy-time bindings, params files, configs).
SECRET_KEYS = frozenset(
    {
        "auth",
        "credentials",
        "secret_access_key",
        "access_key_id",
        "session_token",
        "password",
        "private_key",
        "token",
        "url",
    }
)
# Shorter values would mask innocent words in logs; real keys are far longer than this.
_MIN_SECRET_LENGTH = 8

# scheme://userinfo@ — greedy up to the last "@" of the run, because a careless password holds "@".
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s'\"<>]*@")
_SECRET_NAMES = r"password|passwd|pwd|secret|token|api[_-]?key|secret[_-]?access[_-]?key|session[_-]?token"
# ``password=…`` in a query string, and ``"password": "…"`` in JSON text.
_SECRET_PAIR = re.compile(rf"(?i)\b({_SECRET_NAMES})(=)([^\s&'\"]+)|\"({_SECRET_NAMES})(\"\s*:\s*\")([^\"]*)")

_secrets: set[str] = set()
_lock = threading.Lock()


def redact(text: str) -> str:
    """``text`` with URL passwords, secret-named values and registered secrets replaced by ``***``."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = _SECRET_PAIR.sub(_mask_pair, text)
    if _secrets:
        # Longest first, so that a secret containing another one is masked whole.
        for secret in sorted(_secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
    return text


def _mask_pair(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        return f"{match.group(1)}={MASK}"
    return f'"{match.group(4)}{match.group(5)}{MASK}'


def redact_value(value: Any) -> Any:
    """A copy of a JSON-like value with credentials masked: secret keys whole, strings by :func:`redact`."""
    if isinstance(value, dict):
        return {k: MASK if k in SECRET_KEYS and v else redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def register_secret(*values: str | None) -> None:
    """Mask ``values`` wherever :func:`redact` runs from now on (short or empty values are ignored)."""
    with _lock:
        _secrets.update(v for v in values if v and len(v) >= _MIN_SECRET_LENGTH)


# --------------------------------------------------------------------------- logging
def _scrub(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: logging reports that itself when it formats it
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        clean = redact(text)
        if clean != text:
            # Formatters use a pre-set exc_text instead of formatting exc_info again.
            record.exc_text = clean


def _install_factory() -> None:
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(factory)


_install_factory()
