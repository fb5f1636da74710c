"""The ONNX Runtime backend: tokenizer, chat template and a continuous batcher over one decoder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from serving.engines.base import EngineError, EngineStats, GenerationOutput, SamplingParams
from serving.engines.grammar import TokenGrammars
from serving.engines.onnx_model import SlotKVModel
from serving.engines.prompts import PromptEncoder
from serving.engines.scheduler import ContinuousBatcher

_NOTHING = object()


@dataclass(frozen=True)
class OnnxEngineConfig:
    folder: Path
    max_batch_size: int = 8
    max_queue: int = 64
    context_length: int = 2048
    threads: int = 1


class OnnxEngine:
    def __init__(self, config: OnnxEngineConfig) -> None:
        self.config = config
        self.prompts = PromptEncoder(config.folder)
        self.render_chat, self.encode = self.prompts.render_chat, self.prompts.encode
        model = SlotKVModel(config.folder, config.max_batch_size, config.context_length, config.threads)
        grammars = TokenGrammars.from_tokenizer(self.prompts.tokenizer, model.shape.eos_token_ids,
                                                model.shape.vocab_size, config.threads)
        self.batcher = ContinuousBatcher(model, self.prompts.tokenizer, config.max_queue, grammars)

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
        return EngineStats(running=len(batcher.running), waiting=len(batcher.waiting), slots=batcher.model.slots,
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
