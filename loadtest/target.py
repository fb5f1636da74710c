"""The server under test, seen from the CLI: loopback check, model listing, a probe request. Uses httpx."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import httpx

from loadtest.sse import error_message
from quantserve.constants import VARIANT_HEADER

TIMEOUT = httpx.Timeout(10.0, read=120.0)


class LoadtestError(RuntimeError):
    """The load test cannot go on; the message is meant for the user as is."""


def check_target(url: str, allow_remote: bool) -> str:
    """The target without a trailing slash; refuses anything but http(s) on loopback unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadtestError(f"target {url!r} is not an http(s) URL like http://127.0.0.1:8000")
    if not allow_remote and not is_loopback(parts.hostname):
        raise LoadtestError(f"target {parts.hostname} is not loopback; load tests stay on 127.0.0.1/localhost "
                            "unless you pass --allow-remote-target")
    return url.rstrip("/")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def list_models(client: httpx.Client, target: str) -> list[str]:
    """Model ids the server lists at /v1/models."""
    response = _send(client, "GET", f"{target}/v1/models")
    if response.status_code != 200:
        raise LoadtestError(f"{target}/v1/models answered {_describe(response)}; is this an OpenAI-compatible server?")
    try:
        return [str(item["id"]) for item in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise LoadtestError(f"{target}/v1/models did not return an OpenAI model list") from None


def probe(client: httpx.Client, target: str, model_id: str, endpoint: str) -> str:
    """Send one tiny request; return the variant that answered, or raise with the server's own error."""
    if endpoint == "embeddings":
        url, body = f"{target}/v1/embeddings", {"model": model_id, "input": "probe"}
    else:
        url = f"{target}/v1/chat/completions"
        body = {"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    response = _send(client, "POST", url, json=body)
    if response.status_code != 200:
        raise LoadtestError(f"the server refused {model_id!r}: {_describe(response)}")
    return response.headers.get(VARIANT_HEADER, "")


def select_model_ids(available: list[str], model: str, variants: str) -> list[str]:
    """`--model M[:V]` alone, `--variants all` (every `M:*` the server lists) or `--variants a,b`."""
    if not variants:
        return [model]
    base = model.split(":", 1)[0]
    if variants == "all":
        found = sorted(model_id for model_id in available if model_id.startswith(f"{base}:"))
        if not found:
            raise LoadtestError(f"the server lists no variants of {base!r} (ids like {base}:VARIANT); "
                                f"it lists {', '.join(available) or 'nothing'}")
        return found
    return [f"{base}:{name.strip()}" for name in variants.split(",") if name.strip()]


def _send(client: httpx.Client, method: str, url: str, **kwargs) -> httpx.Response:
    try:
        return client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise LoadtestError(f"cannot reach {url}: {type(exc).__name__}: {exc or 'no answer'}; "
                            "is the server running (quantserve serve) and the URL right?") from None


def _describe(response: httpx.Response) -> str:
    try:
        return f"HTTP {response.status_code}: {error_message(response.json())}"
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
