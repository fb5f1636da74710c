"""The figures of one run as typed records: what a variant costs, what a step's Locust process saw of its window,
and the summary of one (variant, load level)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

LATENCIES = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")


@dataclass(frozen=True)
class VariantCost:
    """What the replicas behind one swept label cost."""

    label: str
    hardware_profile: str
    replicas: int
    usd_per_hour: float


@dataclass(frozen=True)
class StepWindow:
    """What the Locust process that ran a step knew: its measured window (epoch seconds) and, in rate mode, how many
    arrivals were due in it (its `schedule.json`)."""

    label: str
    level: float
    measure_start_s: float
    measure_end_s: float
    arrivals: str  # poisson | constant (rate mode); unused in users mode
    rate_users: int  # rate mode: the client's cap on requests in flight
    arrivals_due: int | None = None  # rate mode only
    stopped_early: bool = False  # the step ended before its time (--max-requests)

    @property
    def length_s(self) -> float:
        return self.measure_end_s - self.measure_start_s


@dataclass
class LevelSummary:
    """Figures for one label (variant) at one load level. Token totals sum the successful measured records."""

    label: str
    mode: str
    level: float
    hardware_profile: str
    usd_per_hour: float
    requests: int
    errors: int
    window_s: float  # first measured request sent .. last one finished
    prompt_tokens: int
    output_tokens: int
    total_tokens: int
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    usd_per_m_output_tokens: float | None
    usd_per_m_total_tokens: float | None
    ttft_ms: dict[str, float | None]
    itl_ms: dict[str, float | None]  # over every gap between streamed tokens
    tpot_ms: dict[str, float | None]  # over requests, each its mean gap
    e2e_ms: dict[str, float | None]
    itl_gaps: int  # how many gaps the ITL figures rest on
    offered_rps: float | None = None  # rate mode: arrivals due in the measured window / its length
    achieved_rps: float = 0.0  # successful requests that finished inside the measured window / its length
    arrivals: str = "closed loop"  # poisson | constant | closed loop (users mode)
    schedule_lag_ms: dict[str, float | None] = field(default_factory=dict)  # sent minus due
    cap_hits: int = 0  # measured requests that came due while every user was busy (the client's cap)
    rate_users: int | None = None  # rate mode: that cap
    stopped_early: bool = False
    prompt_len: dict[str, float | None] = field(default_factory=dict)  # prompt tokens per request, from usage
    output_len: dict[str, float | None] = field(default_factory=dict)  # output tokens per request, from usage
    prompt_reused: float | None = None  # share of prompt tokens the server took from its prefix cache (usage)
    short_outputs: int = 0  # successful requests that stopped before their max_tokens
    slo_met: int = 0
    slo_attainment: float = 0.0  # share of measured requests that succeeded within the SLO
    goodput_rps: float = 0.0
    answered_by: dict[str, int] = field(default_factory=dict)  # x-quantserve-variant values seen
    error_kinds: dict[str, int] = field(default_factory=dict)
    pareto: bool = False  # on the cost / p90 end-to-end latency front

    def as_dict(self) -> dict:
        return asdict(self)
