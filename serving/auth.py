"""API keys: `Authorization: Bearer KEY` on every /v1 route, when keys are configured.

Keys come from an environment variable (comma-separated; the Helm chart fills it from a Secret) and/or a
file, one key per line, optionally followed by that key's own rate limits:

    sk-team-a
    sk-batch-job  requests_per_minute=30 tokens_per_minute=20000

With no key configured, authentication is off, which suits the loopback default. A key never leaves this
module: logs, metrics and rate limits see its key id, a short hash.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from quantserve.config import AuthConfig, ConfigError, RateLimitConfig, format_validation_error
from serving import protocol as p

ANONYMOUS = "anonymous"  # the key id of every request while authentication is off


def key_id(key: str) -> str:
    """A stable, non-reversible name for a key: safe for logs and metric labels."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ApiKey:
    secret: str
    limits: dict = field(default_factory=dict)  # fields of RateLimitConfig that override server.rate_limits


def read_keys(auth: AuthConfig, environ: dict[str, str] | None = None) -> list[ApiKey]:
    environ = os.environ if environ is None else environ
    keys = [ApiKey(k.strip()) for k in environ.get(auth.api_keys_env, "").split(",") if k.strip()]
    if auth.api_keys_file:
        path = Path(auth.api_keys_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read server.auth.api_keys_file {path}: {exc.strerror}") from None
        keys += [_parse_line(line, path, number) for number, line in enumerate(lines, 1)
                 if line.strip() and not line.lstrip().startswith("#")]
    return keys


def _parse_line(line: str, path: Path, number: int) -> ApiKey:
    secret, *options = line.split()
    limits = {}
    for option in options:
        name, _, value = option.partition("=")
        limits[name] = value
    try:
        RateLimitConfig.model_validate(limits)
    except ValidationError as exc:  # the message names the option, never the key
        raise ConfigError(f"{path}, line {number}: {format_validation_error(exc)}") from None
    return ApiKey(secret, limits)


class ApiKeys:
    """Who may call the API. `authenticate` returns the caller's key id or raises a 401 ApiError."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._ids = {hashlib.sha256(k.secret.encode()).digest(): key_id(k.secret) for k in keys}
        self.limits = {key_id(k.secret): k.limits for k in keys if k.limits}

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def enabled(self) -> bool:
        return bool(self._ids)

    def authenticate(self, authorization: str | None) -> str:
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("You didn't provide an API key. Send it as the header `Authorization: Bearer KEY`.")
        found = self._ids.get(hashlib.sha256(token.strip().encode()).digest())
        if found is None:
            raise unauthorized("Incorrect API key provided.")
        return found


def unauthorized(message: str) -> p.ApiError:
    return p.ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
