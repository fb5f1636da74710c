"""Per-request records of a made-up two-variant run (fp32 2.5x slower than int4, two failed requests), and the
report rendered from them: what the report tests check against."""

from __future__ import annotations

import random
from pathlib import Path

from loadtest.cost import Slo
from loadtest.records import RequestRecord
from loadtest.report import write_report
from loadtest.results import VariantCost, build_results

COSTS = {"onnx-int4": VariantCost("onnx-int4", "cpu-2vcpu", 1, 0.08925),
         "onnx-fp32": VariantCost("onnx-fp32", "cpu-4vcpu", 2, 0.357)}
SLO = Slo(ttft_ms=300, tpot_ms=40)
SPEED = {"onnx-int4": 1.0, "onnx-fp32": 2.5}  # fp32 is slower: latency multiplier


def synthetic_records(seed: int = 7) -> list[RequestRecord]:
    rng, records = random.Random(seed), []
    for label, slow in SPEED.items():
        clock = 1_800_000_000.0
        for level in (1, 2, 4):
            for index in range(40):
                records.append(_record(rng, label, level, slow, clock, "warmup" if index < 5 else "measure"))
                clock += 0.25 * slow / level
    records[12].ok, records[12].error, records[12].status = False, "HTTP 503: queue full (overloaded)", 503
    records[90].ok, records[90].error, records[90].status = False, "stream ended before [DONE]", 200
    return records


def _record(rng, label, level, slow, clock, phase) -> RequestRecord:
    output = rng.randint(8, 64)
    ttft = rng.uniform(50, 150) * slow * (1 + level / 4)
    gaps = [rng.uniform(10, 20) * slow for _ in range(output - 1)]
    itl = sum(gaps) / len(gaps)
    e2e = ttft + sum(gaps)
    return RequestRecord(start_s=clock, end_s=clock + e2e / 1000, model=f"smollm2-135m:{label}", variant=label,
                         run_label=label, level=level, phase=phase, prompt_id="short-01", max_tokens=64, status=200,
                         ok=True, ttft_ms=ttft, tpot_ms=itl, itl_max_ms=max(gaps), e2e_ms=e2e, prompt_tokens=20,
                         output_tokens=output, total_tokens=20 + output, chunks=output, finish_reason="length",
                         usage_checked=True, token_gaps_ms=gaps, scheduled_s=clock)


def meta() -> dict:
    config = {"target": "http://127.0.0.1:8000", "model": "smollm2-135m", "model_ids": [], "endpoint": "chat",
              "mode": "users", "levels": [1, 2, 4], "warmup_s": 5, "step_s": 30, "prompts": "short",
              "max_tokens": "64"}
    return {"run_id": "synthetic", "status": "complete", "error": "", "config": config, "versions": {},
            "machine": {"cpu": "test", "logical_cpus": 2}, "server": {}}


def write_synthetic_report(folder: Path) -> Path:
    records = synthetic_records()
    write_report(folder, build_results(meta(), records, COSTS, SLO, attainment=0.9), records)
    return folder
