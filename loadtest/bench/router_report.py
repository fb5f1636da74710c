"""Section 1 of BENCHMARKS.md, the router: one row per data plane, issue 17's targets checked on each, and for a
target not met the profile that shows where the time goes (py-spy samples of the router and of Serve's proxy)."""

from __future__ import annotations

from loadtest.bench.isa import vector_isa
from loadtest.bench.markdown import figure as _f
from loadtest.bench.markdown import table as _table

# Issue 17's targets, all ratios or per-token costs measured in one run: (label, key, limit, lower is better).
TARGETS = [("added p50 ≤ 2.5 ms", "added_p50_ms", 2.5, True), ("added p99 ≤ 8 ms", "added_p99_ms", 8.0, True),
           ("throughput ≥ 0.9× direct at 8 clients", "throughput_ratio", 0.9, False),
           ("ITL ≤ 1.03× the replica's", "itl_ratio", 1.03, True),
           ("router CPU per streamed token ≤ 100 µs", "router_us_per_token", 100.0, True)]
PROFILE_ROWS = 8


def _value(row: dict, key: str):
    return (row.get("cpu") or {}).get(key) if key.endswith("_per_token") else row.get(key)


def met(row: dict, key: str, limit: float, lower: bool) -> bool | None:
    value = _value(row, key)
    return None if value is None else (value <= limit if lower else value >= limit)


def _ratio_at(row: dict, clients: int) -> str:
    level = next((t for t in row.get("throughput", []) if t["clients"] == clients), None)
    return f"{level['ratio']:.2f} ({_f(level['direct_rps'])} / {_f(level['routed_rps'])})" if level else "–"


def _levels(rows: list[dict]) -> list[int]:
    return sorted({t["clients"] for r in rows for t in r.get("throughput", [])}) or [rows[0]["clients"]]


def router_section(rows: list[dict], machine: dict, run: dict | None = None) -> list[str]:
    first = rows[0]
    lines = ["## 1. Router overhead", ""]
    if run:
        lines += [f"Measured {run['date']} on {run['machine']['cpu']} ({run['machine']['logical_cpus']} logical "
                  f"CPUs, {vector_isa(run['machine'].get('cpu_flags'))}).", ""]
    lines += ["The same request (`max_tokens` 1, non-streaming) sent straight to the handle of the replica's "
              f"deployment (`{first['deployment']}`) from a Ray driver, and through the router over HTTP; then "
              f"{', '.join(map(str, _levels(rows)))} concurrent clients on each path; one "
              f"{first['stream_tokens']}-token stream on each path; then {first.get('streams', '–')} concurrent "
              "streams through the router while the CPU time of the router's replica process and of the HTTP front "
              "(Serve's proxy, or HAProxy and its manager) is read, less what each uses idle over the same time, "
              "÷ the tokens streamed. The first row is the local default.", ""]
    lines += _table(["data plane", "added p50 ms", "added p99 ms",
                     *(f"throughput ratio at {c} clients (direct / router req/s)" for c in _levels(rows)),
                     "ITL ratio (router ÷ replica)", "router CPU µs / token", "front CPU µs / token",
                     "GET /health p50 ms", "direct p50 / p99 ms", "router p50 / p99 ms", "direct / router ITL ms",
                     "load average"],
                    [[r["mode"], _f(r["added_p50_ms"]), _f(r["added_p99_ms"]),
                      *(_ratio_at(r, c) for c in _levels(rows)), _f(r["itl_ratio"], 2),
                      _f(_value(r, "router_us_per_token"), 0), _f(_value(r, "front_us_per_token"), 0),
                      _f(r["health_p50_ms"]), f"{_f(r['direct_p50_ms'])} / {_f(r['direct_p99_ms'])}",
                      f"{_f(r['routed_p50_ms'])} / {_f(r['routed_p99_ms'])}",
                      f"{_f(r['direct_itl_ms'])} / {_f(r['routed_itl_ms'])}",
                      _f((r.get("machine_load") or {}).get("load_average"), 2)] for r in rows])
    explained = [text for text in (throughput_paragraph(first), itl_paragraph(rows), cpu_paragraph(first)) if text]
    return [*lines, "", *targets_table(rows), "", router_paragraph(first, machine),
            *(line for text in explained for line in ("", text)), *profiles(rows)]


def targets_table(rows: list[dict]) -> list[str]:
    def cell(row: dict, key: str, limit: float, lower: bool) -> str:
        verdict = met(row, key, limit, lower)
        digits = 0 if key.endswith("_per_token") else 2 if key.endswith("ratio") else 1
        return "–" if verdict is None else f"{_f(_value(row, key), digits)} {'met' if verdict else '**not met**'}"

    return ["Issue 17's targets, on each data plane:", "",
            *_table(["target", *(r["mode"] for r in rows)],
                    [[label, *(cell(r, key, limit, lower) for r in rows)] for label, key, limit, lower in TARGETS])]


def router_paragraph(row: dict, machine: dict) -> str:
    added, front = row["added_p50_ms"], row["health_p50_ms"]
    text = f"What limits it: of the {_f(added)} ms the router adds at p50 ({row['mode']}), "
    if front < added:
        text += (f"{_f(front)} ms is the HTTP front alone (the ingress answering /health, no replica call); the "
                 f"other {_f(added - front)} ms is the ingress's request handling (validation, the admission checks, "
                 "SSE or JSON formatting) and its extra deployment-handle hop.")
    else:
        text += (f"the HTTP front alone (the ingress answering /health, no replica call) takes {_f(front)} ms, as "
                 "much as the whole difference: the rest is within the noise.")
    return text + (f" Both paths share this machine's {machine['logical_cpus']} logical CPUs with the replica and "
                   f"the load generator, and with {row['clients']} clients the router path makes "
                   f"{_f(row['throughput_ratio'], 2)}x the direct path's requests/s.")


def _profile_of(row: dict, role: str) -> dict | None:
    summary = (row.get("profile") or {}).get(role)
    return summary if summary and summary.get("samples") else None


def _top(entries: list[dict], key: str, count: int = 3) -> str:
    return ", ".join(f"{e[key].split(' (C++')[0]} {e['share'] * 100:.0f} %" for e in entries[:count])


def throughput_paragraph(row: dict) -> str:
    """Why the router path makes fewer requests/s than the direct one, from the one-token profile's CPU figures."""
    router, front = _profile_of(row, "router"), _profile_of(row, "front")
    if met(row, "throughput_ratio", 0.9, False) or not router:
        return ""
    text = (f"Throughput ({row['mode']}, {_f(row['throughput_ratio'], 2)}x direct at {row['clients']} clients): "
            f"while {row['clients']} clients sent one-token requests through the router for "
            f"{_f(router['seconds'])} s, the router's process used {_f(router['process_cpu_s'])} CPU s")
    if front:
        text += f" and Serve's Python proxy {_f(front['process_cpu_s'])} CPU s"
    return text + (", on a machine whose two CPUs also run the replica and the clients (load average "
                   f"{_f((row.get('machine_load') or {}).get('load_average'), 2)}): the direct path has neither "
                   "process. Where the router's Python time goes (profile below): "
                   f"{_top(router.get('components', []), 'component')}.")


def itl_paragraph(rows: list[dict]) -> str:
    ratios = [r["itl_ratio"] for r in rows]
    if all(met(r, "itl_ratio", 1.03, True) for r in rows):
        return ""
    return (f"Streaming ITL: one {rows[0]['stream_tokens']}-token stream per path and repeat, on a shared machine; "
            f"the ratio ranges {_f(min(ratios), 2)}–{_f(max(ratios), 2)} across the data planes of this one run, "
            "wider than the target's 3 %, so a plane's ITL verdict here is within the noise of its measurement.")


def cpu_paragraph(row: dict) -> str:
    """Router CPU per streamed token, explained by the streamed profile."""
    cpu, streamed = row.get("cpu") or {}, _profile_of(row, "router_streaming")
    if met(row, "router_us_per_token", 100.0, True) is not False or not streamed:
        return ""
    per_stream_ms = cpu["router_us_per_token"] * cpu["tokens"] / row["streams"] / 1000
    return (f"Router CPU per streamed token ({row['mode']}): {_f(cpu['router_us_per_token'], 0)} µs net of its idle "
            f"use ({_f(cpu['router_idle_cores'] * 100, 1)} % of a core, the once-a-second probe included), "
            f"{_f(cpu['router_gross_us_per_token'], 0)} µs gross; {row['streams']} streams carried {cpu['tokens']} "
            f"tokens, {_f(per_stream_ms)} ms of router CPU per streamed request. In the streamed profile the router "
            f"used {_f(streamed['process_cpu_s'])} CPU s in {_f(streamed['seconds'])} s, "
            f"{_f(streamed['samples'] / 100)} s of it holding the GIL; by component: "
            f"{_top(streamed.get('components', []), 'component', 4)}; quantserve's functions on the stack: "
            f"{_top(streamed.get('quantserve', []), 'function', 4)}.{_probe_sentence(cpu, streamed)}")


def _probe_sentence(cpu: dict, streamed: dict) -> str:
    probe = next((c["share"] for c in streamed.get("components", []) if c["component"].startswith("Serve's status")),
                 0.0)
    if not probe:
        return ""
    cores = probe * streamed["samples"] / 100 / streamed["seconds"]
    return (f" The probe's serve.status() read alone held the GIL {_f(cores * 100, 1)} % of the time, against the "
            f"{_f(cpu['router_idle_cores'] * 100, 1)} % of a core subtracted as idle use: the net figure is the "
            "streams' own cost.")


def profiles(rows: list[dict]) -> list[str]:
    """The py-spy tables of each data plane that has one (full runs)."""
    lines = []
    for row in rows:
        for role, summary in (row.get("profile") or {}).items():
            if summary and summary.get("samples"):
                lines += ["", *profile_lines(row, role, summary)]
    return lines


def profile_lines(row: dict, role: str, summary: dict) -> list[str]:
    who = "Serve's Python proxy" if role == "front" else "the router's replica"
    tokens = summary.get("max_tokens", 1)
    requests = "one-token requests" if tokens == 1 else f"streamed {tokens}-token requests"
    python_s = summary["samples"] / 100
    text = (f"Profile of {who}, {row['mode']}, {requests}: py-spy, 100 samples/s of the thread holding the GIL, "
            f"while {row['clients']} clients sent {requests} through the router for "
            f"{_f(summary.get('seconds'))} s: {summary['samples']:,} samples, {_f(python_s)} s of Python holding "
            "the GIL (also while waiting for a CPU)")
    if summary.get("process_cpu_s"):
        text += (f", against {_f(summary['process_cpu_s'])} CPU s the process used (the rest, "
                 f"{_f(max(0.0, summary['process_cpu_s'] - python_s))} s, is C and C++ without the GIL: Ray's core "
                 "worker, gRPC, system calls)")
    mine = ", ".join(f"`{q['function']}` {q['share'] * 100:.1f} %" for q in summary.get("quantserve", [])[:6])
    text += (f". quantserve's own functions on the stack: {mine}." if mine else
             ". No quantserve function was on the stack.")
    table = _table(["component (innermost frame)", "share of Python samples", "function (innermost frame)",
                    "share"],
                   [[c["component"], f"{c['share'] * 100:.1f} %", f"`{f['function']}`", f"{f['share'] * 100:.1f} %"]
                    for c, f in zip(summary.get("components", []), summary["self"], strict=False)][:PROFILE_ROWS])
    return [text, "", *table]
