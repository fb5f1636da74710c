"""One record per request, as the Locust users write it and the summary reads it (`requests.csv`)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO


@dataclass
class RequestRecord:
    """What one request did. Times in ms; token counts from the server's usage; empty where not measured."""

    scheduled_s: float = 0.0  # epoch seconds when the request was due: its arrival (rate mode), or its send
    start_s: float = 0.0  # wall-clock (epoch seconds) when the request was sent
    end_s: float = 0.0  # when the last byte of the response arrived
    endpoint: str = "chat"  # chat | embeddings
    model: str = ""  # the model id that was asked for
    variant: str = ""  # the variant that answered (x-quantserve-variant header)
    run_label: str = ""  # which variant sweep this belongs to (the CLI's label; may differ from `variant` on fallback)
    mode: str = "users"  # users (fixed concurrency) | rate (open-loop arrivals)
    level: float = 0.0  # users, or requests per second offered
    phase: str = "measure"  # warmup | measure; warm-up requests are kept here but left out of every figure
    prompt_id: str = ""
    max_tokens: int = 0
    status: int = 0  # HTTP status; 0 when no response came
    ok: bool = False
    error: str = ""
    lag_ms: float = 0.0  # schedule lag: sent minus due (rate mode; 0 in users mode)
    waited_for_user: bool = False  # rate mode: every user was busy when it was due (the client's cap was hit)
    ttft_ms: float | None = None  # from when the request was due (rate mode: its scheduled time) to the first token
    tpot_ms: float | None = None  # time per output token: this request's mean gap between tokens after the first
    itl_max_ms: float | None = None  # largest gap between streamed chunks
    e2e_ms: float | None = None  # from when the request was due to its last byte
    token_gaps_ms: list[float] = field(default_factory=list)  # every gap between content chunks (inter-token latency)
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens the server reused from its prefix cache (usage), when it says
    chunks: int = 0  # content-bearing stream chunks received
    finish_reason: str = ""
    usage_checked: bool = False  # usage was present and agreed with the stream


FIELDS = [f.name for f in fields(RequestRecord)]
_TYPES = {f.name: f.type for f in fields(RequestRecord)}


def open_writer(handle: IO[str]) -> csv.DictWriter:
    writer = csv.DictWriter(handle, fieldnames=FIELDS)
    writer.writeheader()
    return writer


def write_records(path: Path, records: Iterable[RequestRecord]) -> None:
    with path.open("w", newline="") as handle:
        writer = open_writer(handle)
        for record in records:
            writer.writerow(to_row(record))


def to_row(record: RequestRecord) -> dict[str, object]:
    return {key: _format(value) for key, value in asdict(record).items()}


def _format(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(f"{item:.3f}" for item in value)
    return value


def read_records(path: Path) -> list[RequestRecord]:
    with path.open(newline="") as handle:
        return [from_row(row) for row in csv.DictReader(handle)]


def from_row(row: dict[str, str]) -> RequestRecord:
    return RequestRecord(**{key: _parse(_TYPES[key], value) for key, value in row.items() if key in _TYPES})


def _parse(type_name: str, value: str) -> object:
    optional = "None" in type_name
    if type_name.startswith("list"):
        return [float(item) for item in value.split()]
    if value == "" and optional:
        return None
    if type_name.startswith("bool"):
        return value == "True"
    if type_name.startswith("int"):
        return int(float(value))
    if type_name.startswith("float"):
        return float(value)
    return value
