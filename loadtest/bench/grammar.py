"""Grammar libraries on SmolLM2's vocabulary: what a token mask costs and which JSON Schema keywords each enforces.

    python -m loadtest.bench.grammar [--quick] [--libraries llguidance xgrammar outlines-core]

For each library and workload (grammar_probes): the schema's compile time; the per-token mask time while walking the
workload's document token by token (one stream; every pass a fresh matcher on the compiled grammar, the first pass
reported apart since lexer caches start cold) and the time to apply that mask to a logits row (serving's
bitmask_to_bools and mask_logits); the mask time of a step of 8 streams at staggered positions, with the
library's batch call. Then a coverage probe per keyword. Writes bench/grammar.json and bench/grammar.md (figures
only from this run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from time import perf_counter_ns

import numpy as np
from tokenizers import Tokenizer

from loadtest.bench.grammar_libraries import LIBRARIES, SchemaRefused
from loadtest.bench.grammar_probes import PROBES, WORKLOADS, Probe
from loadtest.bench.grammar_report import render_grammar_report
from loadtest.machine import describe_machine, versions
from serving.engines.grammar import bitmask_to_bools, mask_logits

TOKENIZER = Path("models/smollm2-135m/base/tokenizer.json")
END_OF_SEQUENCE = "<|im_end|>"
OUT = Path("bench")
PLAN = {"full": {"passes": 20, "compiles": 3, "streams": 8}, "quick": {"passes": 3, "compiles": 1, "streams": 8}}


def words(vocab_size: int, rows: int = 1) -> np.ndarray:
    return np.full((rows, (vocab_size + 31) // 32), -1, np.int32)


def allows(bitmask: np.ndarray, row: int, token: int) -> bool:
    return bool((bitmask[row, token // 32] >> (token % 32)) & 1)


def compile_ms(library, schema: dict, repeats: int) -> tuple[float, object]:
    times, compiled = [], None
    for _ in range(repeats):
        start = perf_counter_ns()
        compiled = library.compile(schema)
        times.append((perf_counter_ns() - start) / 1e6)
    return statistics.median(times), compiled


def one_stream(library, compiled, tokens: list[int], vocab_size: int, passes: int) -> dict:
    """Mask, apply and accept times per token (µs) over `passes` walks of the document."""
    bitmask, masks, applies, accepts, first = words(vocab_size), [], [], [], []
    logits = np.random.default_rng(0).standard_normal((1, vocab_size)).astype(np.float32)
    for walk in range(passes):
        matcher = library.matcher(compiled)
        for token in tokens:
            start = perf_counter_ns()
            library.fill([matcher], bitmask)
            filled = perf_counter_ns()
            mask_logits(logits, bitmask_to_bools(bitmask, vocab_size))
            applied = perf_counter_ns()
            if not allows(bitmask, 0, token) or not library.accept(matcher, token):
                return {"error": "the mask or the matcher refused a token of the valid document"}
            (first if walk == 0 else masks).append((filled - start) / 1e3)
            applies.append((applied - filled) / 1e3)
            accepts.append((perf_counter_ns() - applied) / 1e3)
        if not library.complete(matcher):
            return {"error": "the valid document did not complete the grammar"}
    masks = masks or first
    return {"tokens": len(tokens), "passes": passes, "first_pass_mean_us": statistics.fmean(first),
            "mean_us": statistics.fmean(masks), "p50_us": float(np.percentile(masks, 50)),
            "p95_us": float(np.percentile(masks, 95)), "max_us": max(masks),
            "apply_p50_us": float(np.percentile(applies, 50)), "accept_mean_us": statistics.fmean(accepts)}


def many_streams(library, compiled, tokens: list[int], vocab_size: int, streams: int, steps: int) -> dict:
    """Time (µs) to fill the masks of `streams` sequences at once, stream k starting k/streams into the document
    (a stream that reaches the end starts again with a fresh matcher)."""
    bitmask, times = words(vocab_size, streams), []
    positions = [k * len(tokens) // streams for k in range(streams)]
    matchers = [library.matcher(compiled) for _ in range(streams)]
    for matcher, position in zip(matchers, positions, strict=True):
        for token in tokens[:position]:
            library.accept(matcher, token)
    for _ in range(steps):
        start = perf_counter_ns()
        library.fill(matchers, bitmask)
        times.append((perf_counter_ns() - start) / 1e3)
        for k in range(streams):
            library.accept(matchers[k], tokens[positions[k]])
            positions[k] += 1
            if positions[k] == len(tokens):
                matchers[k], positions[k] = library.matcher(compiled), 0
    step = statistics.fmean(times)
    return {"streams": streams, "steps": steps, "step_mean_us": step, "step_p50_us": float(np.percentile(times, 50)),
            "per_stream_p50_us": float(np.percentile(times, 50)) / streams}


def probe(library, tokenizer, check: Probe) -> dict:
    try:
        compiled = library.compile(check.schema)
    except SchemaRefused as refused:
        return {"status": "refused", "detail": str(refused)[:200]}

    def takes(text: str) -> bool:
        matcher = library.matcher(compiled)
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        return all(library.accept(matcher, token) for token in ids) and library.complete(matcher)

    if not takes(check.valid):
        return {"status": "wrong", "detail": f"refused the valid instance {check.valid}"}
    return {"status": "ignored" if takes(check.invalid) else "enforced"}


def bench_library(library, tokenizer, plan: dict) -> dict:
    vocab_size = tokenizer.get_vocab_size()
    workloads = {}
    for workload in WORKLOADS:
        print(f"grammar bench: {library.name}, {workload.name}", file=sys.stderr, flush=True)
        tokens = tokenizer.encode(workload.document, add_special_tokens=False).ids
        try:
            compile_time, compiled = compile_ms(library, workload.schema, plan["compiles"])
        except SchemaRefused as refused:
            workloads[workload.name] = {"error": f"schema refused: {refused}"}
            continue
        workloads[workload.name] = {
            "compile_ms": compile_time, "one_stream": one_stream(library, compiled, tokens, vocab_size, plan["passes"]),
            "many_streams": many_streams(library, compiled, tokens, vocab_size, plan["streams"],
                                         plan["passes"] * len(tokens))}
    print(f"grammar bench: {library.name}, keyword coverage", file=sys.stderr, flush=True)
    coverage = {check.keyword: probe(library, tokenizer, check) for check in PROBES}
    return {"version": library.version, "workloads": workloads, "coverage": coverage}


def run(tokenizer_path: Path, names: list[str], plan: dict) -> dict:
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    eos = tokenizer.token_to_id(END_OF_SEQUENCE)
    results = {"machine": describe_machine(), "versions": versions(), "vocab_size": tokenizer.get_vocab_size(),
               "plan": plan, "libraries": {}}
    for name in names:
        results["libraries"][name] = bench_library(LIBRARIES[name](tokenizer, eos), tokenizer, plan)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER)
    parser.add_argument("--libraries", nargs="+", choices=list(LIBRARIES), default=list(LIBRARIES))
    parser.add_argument("--quick", action="store_true", help="fewest passes and compiles (keeps the script working)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    results = run(args.tokenizer, args.libraries, PLAN["quick" if args.quick else "full"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grammar.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "grammar.md").write_text(render_grammar_report(results))
    print((args.out / "grammar.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
