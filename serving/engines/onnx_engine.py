"""The ONNX Runtime backend: tokenizer, chat template and a continuous batcher over one decoder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from serving.engines.base import EngineError, EngineStats, GenerationOutput, SamplingParams
from serving.engines.grammar import TokenGrammars
from serving.engines.onnx_model import SlotKVModel
from serving.engines.prefill_plan import ChunkPlanner
from serving.engines.prefix_cache import PrefixCache
from serving.engines.prompts import PromptEncoder
from serving.engines.scheduler import ContinuousBatcher

_NOTHING = object()


@dataclass(frozen=True)
class OnnxEngineConfig:
    """`prefill_chunk_tokens` 0 runs each prompt whole (running streams wait for it); `prefill_share`: see
    prefill_plan.ChunkPlanner; `prefix_cache_mib` 0 turns the prefix cache off."""

    folder: Path
    max_batch_size: int = 8
    max_queue: int = 64
    context_length: int = 2048
    threads: int = 1
    prefill_chunk_tokens: int = 512
    prefill_share: float = 0.8
    prefix_cache_mib: int = 256

    @classmethod
    def from_variant(cls, variant) -> OnnxEngineConfig:
        """From a serving.catalog.ServedVariant (its `onnx` dict is quantserve.config.OnnxSpec)."""
        onnx = variant.onnx
        return cls(Path(variant.folder), variant.max_batch_size, variant.max_queue, variant.max_context,
                   variant.threads, onnx.get("prefill_chunk_tokens", cls.prefill_chunk_tokens),
                   onnx.get("prefill_share", cls.prefill_share),
                   onnx.get("prefix_cache_mib", cls.prefix_cache_mib) if onnx.get("prefix_cache", True) else 0)


class OnnxEngine:
    def __init__(self, config: OnnxEngineConfig) -> None:
        self.config = config
        self.prompts = PromptEncoder(config.folder)
        self.render_chat, self.encode = self.prompts.render_chat, self.prompts.encode
        model = SlotKVModel(config.folder, config.max_batch_size, config.context_length, config.threads)
        grammars = TokenGrammars.from_tokenizer(self.prompts.tokenizer, model.shape.eos_token_ids,
                                                model.shape.vocab_size, config.threads)
        planner = ChunkPlanner(config.prefill_chunk_tokens, config.prefill_share)
        cache_tokens = config.prefix_cache_mib * 2**20 // model.kv_bytes_per_token
        prefix_cache = PrefixCache(cache_tokens) if cache_tokens else None
        self.batcher = ContinuousBatcher(model, self.prompts.tokenizer, config.max_queue, grammars, planner,
                                         prefix_cache)

    async def start(self) -> None:
        return None

    async def generate(self, request_id: str, prompt: str | list[int],
                       params: SamplingParams) -> AsyncIterator[GenerationOutput]:
        """Outputs as they come; when the consumer is slow, the tokens that piled up arrive merged."""
        prompt_ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        sequence = self.batcher.submit(request_id, prompt_ids, params)
        finished, pending = False, _NOTHING
        try:
            while not finished:
                output = await sequence.events.get() if pending is _NOTHING else pending
                pending = _NOTHING
                if output is None:  # end of stream
                    return
                if isinstance(output, EngineError):
                    finished = True
                    raise output
                while not sequence.events.empty():
                    following = sequence.events.get_nowait()
                    if following is None or isinstance(following, EngineError):
                        pending = following
                        break
                    output = output.followed_by(following)
                finished = output.finish_reason is not None
                yield output
        finally:
            if not finished:
                self.batcher.abort(request_id)

    def abort(self, request_id: str) -> None:
        self.batcher.abort(request_id)

    def stats(self) -> EngineStats:
        batcher = self.batcher
        return EngineStats(running=batcher.occupied, waiting=len(batcher.waiting), slots=batcher.model.slots,
                           context_length=batcher.model.context_length,
                           generated_tokens_total=batcher.generated_tokens_total, ready=True,
                           busy_seconds_total=batcher.busy_seconds_total)

    def shutdown(self) -> None:
        self.batcher.shutdown()


async def collect(outputs: AsyncIterator[GenerationOutput]) -> GenerationOutput:
    """All outputs of one request merged into one (for non-streaming responses and tests)."""
    merged = None
    async for output in outputs:
        merged = output if merged is None else merged.followed_by(output)
    if merged is None:
        raise RuntimeError("the engine stream ended without any output")
    return merged
