"""What the load test sends: prompt sets (shipped in `loadtest/prompts/`, a JSONL file, or synthetic ones written
as JSONL by `loadtest.synthetic`) and token length distributions."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROMPTS_DIR = Path(__file__).with_name("prompts")
MAX_OUTPUT_TOKENS = 4096


class WorkloadError(ValueError):
    """A prompt set or length distribution the user named is unusable; the message says why."""


RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: list[dict]
    response_format: dict | None = None  # sent as it is (OpenAI's form): the prompt's answer is constrained

    @property
    def constrained(self) -> bool:
        """The answer is held to a JSON object or schema (constrained decoding), not free text."""
        return (self.response_format or {}).get("type", "text") != "text"

    @property
    def text(self) -> str:
        """All message contents joined, for endpoints that take plain text (embeddings)."""
        return "\n".join(str(message.get("content", "")) for message in self.messages)


def prompt_set_names() -> list[str]:
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.jsonl"))


def load_prompt_set(name_or_path: str) -> list[Prompt]:
    """A shipped set by name (`short`, `long`, `mix`, `extraction`) or any JSONL file of {"id", "messages"} lines,
    each with an optional "response_format" (`extraction`'s are JSON schemas)."""
    path = PROMPTS_DIR / f"{name_or_path}.jsonl"
    if not path.exists():
        path = Path(name_or_path)
    if not path.is_file():
        raise WorkloadError(f"unknown prompt set {name_or_path!r}; shipped sets: {', '.join(prompt_set_names())}")
    prompts = [_parse_line(path, number, line) for number, line in enumerate(path.read_text().splitlines(), 1)]
    prompts = [prompt for prompt in prompts if prompt is not None]
    if not prompts:
        raise WorkloadError(f"prompt set {path} is empty")
    return prompts


def _parse_line(path: Path, number: int, line: str) -> Prompt | None:
    if not line.strip():
        return None
    try:
        item = json.loads(line)
        messages = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
        prompt_id = str(item.get("id", f"{path.stem}-{number}"))
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
        raise WorkloadError(f"{path}:{number}: expected {{'id', 'messages'}} or {{'id', 'prompt'}}") from None
    response_format = item.get("response_format")
    if response_format is not None and (problem := response_format_problem(response_format)):
        raise WorkloadError(f"{path}:{number}: bad response_format: {problem}")
    return Prompt(id=prompt_id, messages=messages, response_format=response_format)


def response_format_problem(response_format: object) -> str | None:
    """Why a prompt's `response_format` is not in OpenAI's form, or None. Its shape only: whether the server can
    enforce a schema is the server's to say (a 400 naming the keyword), and tests/unit checks the shipped ones."""
    if not isinstance(response_format, dict):
        return "expected a JSON object"
    kind = response_format.get("type")
    if kind not in RESPONSE_FORMAT_TYPES:
        return f"type {kind!r} is not one of {', '.join(RESPONSE_FORMAT_TYPES)}"
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema"), dict):
        return 'json_schema needs {"name": a string, "schema": an object}'
    if not isinstance(spec.get("strict", False), bool):
        return "json_schema.strict must be true or false"
    return None


def output_length_sampler(spec: str, rng: random.Random) -> Callable[[], int]:
    """`64` or `fixed:64`, `uniform:16:128`, `normal:64:16`, `exp:64`; samples are clipped to 1..4096."""
    return length_sampler(spec, rng, "output length")


def length_sampler(spec: str, rng: random.Random, what: str) -> Callable[[], int]:
    """Token counts drawn from `N` (`fixed:N`), `uniform:LO:HI`, `normal:MEAN:SD` or `exp:MEAN`, clipped to 1..4096."""
    kind, _, rest = spec.partition(":") if ":" in spec else ("fixed", "", spec)
    try:
        args = [float(part) for part in rest.split(":")]
    except ValueError:
        raise WorkloadError(f"bad {what} {spec!r}; e.g. 64, uniform:16:128, normal:64:16, exp:64") from None
    draw = _DISTRIBUTIONS.get((kind, len(args)))
    if draw is None or any(arg < 0 for arg in args):
        raise WorkloadError(f"bad {what} {spec!r}; e.g. 64, uniform:16:128, normal:64:16, exp:64")
    return lambda: max(1, min(MAX_OUTPUT_TOKENS, round(draw(rng, *args))))


_DISTRIBUTIONS = {
    ("fixed", 1): lambda rng, n: n,
    ("uniform", 2): lambda rng, low, high: rng.uniform(low, high),
    ("normal", 2): lambda rng, mean, sd: rng.gauss(mean, sd),
    ("exp", 1): lambda rng, mean: rng.expovariate(1 / mean),
}


class PromptCycle:
    """The prompts in one seeded order, then again: every prompt is sent once before any is repeated."""

    def __init__(self, prompts: list[Prompt], rng: random.Random) -> None:
        self._prompts = list(prompts)
        rng.shuffle(self._prompts)
        self._next = 0

    def take(self) -> Prompt:
        prompt = self._prompts[self._next % len(self._prompts)]
        self._next += 1
        return prompt


def chat_request(model: str, messages: list[dict], max_tokens: int, temperature: float | None, exact: bool,
                 response_format: dict | None = None) -> dict:
    """A streamed chat request with usage. `exact`: exactly `max_tokens` tokens (ignore_eos, min_tokens, as vLLM
    names them). The temperature is sent only when the workload sets one: else the server's default, OpenAI's 1.0.
    `response_format` (the prompt's own) is sent when the prompt has one."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    if response_format is not None:
        body["response_format"] = response_format
    if temperature is not None:
        body["temperature"] = temperature
    if exact:
        body.update(ignore_eos=True, min_tokens=max_tokens)
    return body
