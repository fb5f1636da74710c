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
    """TTFT, ITL, TPOT and end-to-end percentiles (p50 solid, p90 dashed, p99 dotted) against load, one colour per
    variant. Load is the offered request rate when every step had one (open loop, where an overloaded server's
    throughput stops growing while its latency climbs); otherwise output tokens/s, or requests/s for embeddings."""
    x_of, xlabel = _load_axis(summaries)
    figure, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    for axis, (metric, title) in zip(axes, _LATENCIES, strict=True):
        for label, points in _by_label(summaries).items():
            _percentile_lines(axis, label, [s for s in points if getattr(s, metric)["p50"] is not None], metric, x_of)
        _log_if_wide(axis)
        finish_axes(axis, xlabel, f"{title} (ms)", f"{title}\n(p50 solid, p90 dashed, p99 dotted)")
    return to_png(figure)


_LATENCIES = (("ttft_ms", "time to first token"), ("itl_ms", "inter-token latency"),
              ("tpot_ms", "time per output token"), ("e2e_ms", "end-to-end"))
WIDE_RANGE = 30  # a y axis whose values span more than this factor is drawn in log scale


def _load_axis(summaries: list[LevelSummary]):
    if summaries and all(s.offered_rps is not None for s in summaries):
        return (lambda s: s.offered_rps), "offered requests/s"
    if any(s.output_tokens for s in summaries):
        return (lambda s: s.output_tokens_per_s), "output tokens/s"
    return (lambda s: s.requests_per_s), "requests/s"


def _percentile_lines(axis, label: str, points: list[LevelSummary], metric: str, x_of) -> None:
    if not points:
        return
    xs = [x_of(s) for s in points]
    p50, p90, p99 = ([getattr(s, metric).get(q) for s in points] for q in ("p50", "p90", "p99"))
    line = axis.plot(xs, p50, "o-", label=label)[0]
    axis.plot(xs, p90, "s--", color=line.get_color(), alpha=0.8)
    axis.plot(xs, p99, "^:", color=line.get_color(), alpha=0.6)


def _log_if_wide(axis) -> None:
    values = [y for line in axis.get_lines() for y in line.get_ydata() if y is not None and y > 0]
    if values and max(values) / min(values) > WIDE_RANGE:
        axis.set_yscale("log")


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
