"""Embeddings in forward passes bounded by tokens, not by requests.

Each input is tokenized when its request arrives (an input longer than the model's window is a 400, unless the
request asks for truncation with vLLM's `truncate_prompt_tokens`), then waits in one queue. A worker takes inputs
in arrival order while the padded pass (inputs x the longest) stays within `batch_tokens`, runs it in a thread,
and hands each input its vector. Inputs from several requests share a pass; a request that is gone (its caller
left or timed out) has its waiting inputs skipped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from serving.engines.onnx_embedder import OnnxEmbedder, pool
from serving.protocol import ApiError

WHOLE_WINDOW = -1


@dataclass
class WaitingInput:
    ids: list[int]
    vector: asyncio.Future


class EmbeddingBatcher:
    def __init__(self, embedder: OnnxEmbedder, batch_tokens: int) -> None:
        self.embedder = embedder
        self.window = int(embedder.pooling["max_tokens"])
        self.batch_tokens = max(batch_tokens, self.window)
        self.tokenizer = Tokenizer.from_str(embedder.tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.queue: deque[WaitingInput] = deque()
        self.arrived = asyncio.Event()
        self.worker: asyncio.Task | None = None

    def encode(self, texts: list[str], truncate: int | None) -> list[list[int]]:
        """Token ids of each input; a 400 ApiError for an input past the window when truncation was not asked for."""
        limit = self.window if truncate in (None, WHOLE_WINDOW) else truncate
        if limit > self.window:
            raise ApiError(400, f"truncate_prompt_tokens is {truncate}; this model's window is {self.window} tokens",
                           param="truncate_prompt_tokens", code="invalid_request")
        encoded = [e.ids for e in self.tokenizer.encode_batch(texts)]
        for index, ids in enumerate(encoded):
            if len(ids) > limit and truncate is None:
                raise ApiError(400, f"input {index} has {len(ids)} tokens; this model's window is {self.window}. "
                                    "Shorten it, or send truncate_prompt_tokens (-1 cuts to the window)",
                               param="input", code="context_length_exceeded")
            if len(ids) > limit:
                encoded[index] = self._truncated(texts[index], limit)
        return encoded

    def _truncated(self, text: str, limit: int) -> list[int]:
        self.tokenizer.enable_truncation(limit)  # the tokenizer's own cut keeps the special tokens
        try:
            return self.tokenizer.encode(text).ids
        finally:
            self.tokenizer.no_truncation()

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """The vectors of `inputs` (token ids), in order, once the passes that hold them have run."""
        loop = asyncio.get_running_loop()
        waiting = [WaitingInput(ids, loop.create_future()) for ids in inputs]
        self.queue.extend(waiting)
        self.arrived.set()
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._work())
        return await asyncio.gather(*(w.vector for w in waiting))  # cancelling it cancels the futures

    def _next_pass(self) -> list[WaitingInput]:
        batch, longest = [], 0
        while self.queue:
            head = self.queue[0]
            if head.vector.done():  # its request is gone
                self.queue.popleft()
                continue
            if batch and (len(batch) + 1) * max(longest, len(head.ids)) > self.batch_tokens:
                break
            batch.append(self.queue.popleft())
            longest = max(longest, len(head.ids))
        return batch

    async def _work(self) -> None:
        while True:
            batch = self._next_pass()
            if not batch:
                self.arrived.clear()
                await self.arrived.wait()
                continue
            try:
                vectors = await asyncio.to_thread(self.forward, [w.ids for w in batch])
            except Exception as exc:
                for waiting in batch:
                    if not waiting.vector.done():
                        waiting.vector.set_exception(exc)
                continue
            for waiting, vector in zip(batch, vectors, strict=True):
                if not waiting.vector.done():
                    waiting.vector.set_result(vector.tolist())

    def forward(self, inputs: list[list[int]]) -> np.ndarray:
        """One padded forward pass, pooled and normalised as the embedder does (the model thread's work)."""
        longest = max(len(ids) for ids in inputs)
        input_ids = np.zeros((len(inputs), longest), dtype=np.int64)
        mask = np.zeros_like(input_ids)
        for row, ids in enumerate(inputs):
            input_ids[row, : len(ids)], mask[row, : len(ids)] = ids, 1
        feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        hidden = self.embedder.session.run(None, feed)[0]
        return pool(hidden, mask, self.embedder.pooling)
