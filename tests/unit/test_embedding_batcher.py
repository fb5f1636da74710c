"""Embeddings in forward passes bounded by tokens (serving.embedding_batcher), on a tokenizer trained in-process
and an encoder stand-in that records each pass. Before it, `@serve.batch` joined up to 32 requests x 256 inputs
into one padded pass, and inputs past the window were silently cut."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from tokenizers import processors

from serving import protocol as p
from serving.embedding_batcher import EmbeddingBatcher
from tests.helpers.small_tokenizer import trained_tokenizer

WINDOW, DIMENSIONS = 16, 4


class RecordingEncoder:
    """What EmbeddingBatcher needs of an OnnxEmbedder: a session whose passes are recorded, pooling, a tokenizer
    with a start and an end token around each text (as BERT's [CLS] ... [SEP])."""

    def __init__(self) -> None:
        self.pooling = {"mode": "cls", "normalize": False, "max_tokens": WINDOW}
        self.tokenizer = trained_tokenizer()
        start, end = self.tokenizer.token_to_id("<|im_start|>"), self.tokenizer.token_to_id("<|im_end|>")
        self.tokenizer.post_processor = processors.TemplateProcessing(
            single="<|im_start|> $A <|im_end|>", special_tokens=[("<|im_start|>", start), ("<|im_end|>", end)])
        self.passes: list[tuple[int, int]] = []
        self.session = self

    def run(self, _outputs, feed: dict) -> list[np.ndarray]:
        ids = feed["input_ids"]
        self.passes.append(ids.shape)
        hidden = np.zeros((*ids.shape, DIMENSIONS), np.float32)
        hidden[:, 0, 0] = feed["attention_mask"].sum(axis=1)  # the CLS vector says how long its input was
        return [hidden]


def test_passes_stay_within_the_token_budget_across_requests_and_keep_each_requests_order():
    encoder = RecordingEncoder()
    batcher = EmbeddingBatcher(encoder, batch_tokens=40)  # raised to the window if below it
    texts = [["sunny " * n for n in (1, 2, 3)], ["Paris " * n for n in (6, 1, 4, 2)]]

    async def scenario():
        inputs = [batcher.encode(t, None) for t in texts]
        return inputs, await asyncio.gather(*(batcher.embed(i) for i in inputs))

    inputs, results = asyncio.run(scenario())
    for request_inputs, vectors in zip(inputs, results, strict=True):
        assert [v[0] for v in vectors] == [len(ids) for ids in request_inputs]
    assert all(rows * longest <= 40 for rows, longest in encoder.passes), encoder.passes
    assert sum(rows for rows, _ in encoder.passes) == 7 and len(encoder.passes) > 1


def test_an_input_past_the_window_is_a_400_unless_truncation_is_asked_for():
    batcher = EmbeddingBatcher(RecordingEncoder(), batch_tokens=64)
    long_text = "The weather in Paris is sunny " * 10
    with pytest.raises(p.ApiError) as refused:
        batcher.encode(["short", long_text], None)
    assert refused.value.param == "input" and "input 1" in refused.value.message
    assert refused.value.code == "context_length_exceeded"
    whole, cut = batcher.encode([long_text], -1)[0], batcher.encode([long_text], 5)[0]
    assert len(whole) == WINDOW and len(cut) == 5
    assert cut[0] == whole[0] and cut[-1] == whole[-1]  # the start and end tokens stay
    with pytest.raises(p.ApiError) as too_long:
        batcher.encode([long_text], WINDOW + 1)
    assert too_long.value.param == "truncate_prompt_tokens"


def test_the_inputs_of_a_request_that_left_are_skipped():
    encoder = RecordingEncoder()
    batcher = EmbeddingBatcher(encoder, batch_tokens=16)  # one input of up to 16 tokens per pass

    async def scenario():
        gone = asyncio.create_task(batcher.embed(batcher.encode(["sunny"] * 5, None)))
        await asyncio.sleep(0)
        gone.cancel()
        kept = await batcher.embed(batcher.encode(["Paris"], None))
        return kept

    assert len(asyncio.run(scenario())) == 1
    assert len(encoder.passes) <= 2  # at most the pass already running when the first request left, and its own
