"""The report's figures, drawn with matplotlib (Agg) from run figures and records; PNG bytes out."""

from __future__ import annotations

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from loadtest.records import RequestRecord  # noqa: E402
from loadtest.results import LevelSummary, label_of, measured  # noqa: E402

DPI = 100


def latency_vs_throughput(summaries: list[LevelSummary]) -> bytes:
    """TTFT, ITL, TPOT and end-to-end percentiles (p50 solid, p90 dashed, p99 dotted) against throughput, one line
    per variant.

    Throughput is output tokens/s; for endpoints without output tokens (embeddings), requests/s.
    """
    by_tokens = any(s.output_tokens for s in summaries)
    xlabel = "output tokens/s" if by_tokens else "requests/s"
    figure, axes = plt.subplots(1, 4, figsize=(16, 4))
    for axis, (metric, title) in zip(axes, _LATENCIES, strict=True):
        for label, points in _by_label(summaries).items():
            points = [s for s in points if getattr(s, metric)["p50"] is not None]
            _percentile_lines(axis, label, points, metric, by_tokens)
        finish_axes(axis, xlabel, f"{title} (ms)", f"{title} vs throughput")
    return to_png(figure)


_LATENCIES = (("ttft_ms", "time to first token"), ("itl_ms", "inter-token latency"),
              ("tpot_ms", "time per output token"), ("e2e_ms", "end-to-end"))


def _percentile_lines(axis, label: str, points: list[LevelSummary], metric: str, by_tokens: bool) -> None:
    if not points:
        return
    xs = [s.output_tokens_per_s if by_tokens else s.requests_per_s for s in points]
    p50, p90, p99 = ([getattr(s, metric).get(q) for s in points] for q in ("p50", "p90", "p99"))
    line = axis.plot(xs, p50, "o-", label=f"{label} p50")[0]
    axis.plot(xs, p90, "s--", color=line.get_color(), label=f"{label} p90")
    axis.plot(xs, p99, "^:", color=line.get_color(), label=f"{label} p99")
    for s, x, y in zip(points, xs, p50, strict=True):
        axis.annotate(_level_text(s), (x, y), fontsize=7, alpha=0.7)


def latency_vs_cost(summaries: list[LevelSummary]) -> bytes:
    """p90 end-to-end latency against $ per 1M output tokens; the Pareto front joined and ringed."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    priced = [s for s in summaries if s.usd_per_m_output_tokens is not None and s.e2e_ms["p90"] is not None]
    for label, points in _by_label(priced).items():
        axis.scatter([s.usd_per_m_output_tokens for s in points], [s.e2e_ms["p90"] for s in points], label=label)
        for s in points:
            axis.annotate(_level_text(s), (s.usd_per_m_output_tokens, s.e2e_ms["p90"]), fontsize=7, alpha=0.7)
    front = sorted((s for s in priced if s.pareto), key=lambda s: s.usd_per_m_output_tokens)
    if front:
        xs, ys = [s.usd_per_m_output_tokens for s in front], [s.e2e_ms["p90"] for s in front]
        axis.plot(xs, ys, "k:", linewidth=1, label="Pareto front")
        axis.scatter(xs, ys, s=160, facecolors="none", edgecolors="black")
    finish_axes(axis, "$ per 1M output tokens", "p90 end-to-end latency (ms)", "Latency vs cost")
    return to_png(figure)


def offered_vs_achieved(summaries: list[LevelSummary]) -> bytes:
    """Rate mode: achieved against offered requests/s (the diagonal is keeping up) and p90 TTFT against offered."""
    figure, (rates, ttft) = plt.subplots(1, 2, figsize=(11, 4))
    open_loop = [s for s in summaries if s.offered_rps is not None]
    for label, points in _by_label(open_loop).items():
        offered = [s.offered_rps for s in points]
        rates.plot(offered, [s.achieved_rps for s in points], "o-", label=label)
        ttft.plot(offered, [s.ttft_ms["p90"] for s in points], "o-", label=label)
    top = max((s.offered_rps for s in open_loop), default=1.0)
    rates.plot([0, top], [0, top], "k:", linewidth=1, label="achieved = offered")
    finish_axes(rates, "offered requests/s", "achieved requests/s", "Offered vs achieved")
    finish_axes(ttft, "offered requests/s", "p90 TTFT from schedule (ms)", "Queueing shows in TTFT")
    return to_png(figure)


def ttft_distribution(records: list[RequestRecord]) -> bytes:
    """Empirical CDF of time to first token per variant, measured successful requests, all levels."""
    figure, axis = plt.subplots(figsize=(7, 4))
    values: dict[str, list[float]] = defaultdict(list)
    for record in measured(records):
        if record.ok and record.ttft_ms is not None:
            values[label_of(record)].append(record.ttft_ms)
    for label, ttfts in sorted(values.items()):
        ordered = sorted(ttfts)
        axis.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post",
                  label=f"{label} (n={len(ordered)})")
    finish_axes(axis, "time to first token (ms)", "share of requests", "TTFT distribution")
    return to_png(figure)


def _by_label(summaries: list[LevelSummary]) -> dict[str, list[LevelSummary]]:
    grouped: dict[str, list[LevelSummary]] = defaultdict(list)
    for summary in summaries:
        grouped[summary.label].append(summary)
    return {label: sorted(points, key=lambda s: s.level) for label, points in sorted(grouped.items())}


def _level_text(summary: LevelSummary) -> str:
    return f"{summary.level:g}u" if summary.mode == "users" else f"{summary.level:g}/s"


def finish_axes(axis, xlabel: str, ylabel: str, title: str) -> None:
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7)


def to_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()
