"""The OpenAI-compatible API of the real application (the `serving_app` fixture), driven by the official
`openai` client: models, chat and text completions (sync, async, streaming), sampling, logprobs,
embeddings and fallbacks. Error shapes, health and disconnects are in test_serving_errors.py."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from tokenizers import Tokenizer

from serving.engines.chat_template import ChatTemplate

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
FP32 = f"{MODEL}:onnx-fp32"
EMBEDDER = "minilm-l6-v2"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 24}


def chat(client, messages=FRANCE, model=MODEL, **params):
    return client.chat.completions.create(model=model, messages=messages, **params)


def prompt_tokens(models_dir, messages: list[dict]) -> int:
    """Tokens of the chat-templated prompt, counted the way the engine must count them."""
    folder = models_dir / MODEL / "onnx-int4"
    text = ChatTemplate.from_folder(folder).render(messages)
    return len(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids)


@pytest.fixture(scope="module")
def greedy(openai_client):
    """The non-streaming greedy answer to FRANCE from the default variant, with its raw response."""
    raw = openai_client.chat.completions.with_raw_response.create(model=MODEL, messages=FRANCE, **GREEDY)
    return raw, raw.parse()


# --- /v1/models -------------------------------------------------------------------------------------


def test_models_lists_models_and_variants_with_metadata(openai_client):
    cards = {card.id: card.model_dump() for card in openai_client.models.list()}
    expected = {MODEL, EMBEDDER, *(f"{MODEL}:{v}" for v in ("onnx-fp32", "onnx-int8", "onnx-int4", "gptq-int4"))}
    assert expected <= set(cards)
    assert cards[MODEL]["default_variant"] == "onnx-int4"
    for card_id in expected:
        card = cards[card_id]
        assert {"backend", "bits", "size_bytes", "price_per_hour"} <= set(card), card_id
        assert card["size_bytes"] > 0 and card["price_per_hour"] >= 0, card_id
    assert cards[f"{MODEL}:onnx-int4"]["bits"] == 4 and cards[f"{MODEL}:onnx-fp32"]["bits"] == 32
    assert cards[f"{MODEL}:onnx-fp32"]["size_bytes"] > cards[f"{MODEL}:onnx-int4"]["size_bytes"]


# --- chat completions -------------------------------------------------------------------------------


def test_chat_greedy_answer_usage_and_variant_header(greedy, built_models):
    raw, response = greedy
    assert raw.headers["x-quantserve-variant"] == "onnx-int4"
    assert "Paris" in response.choices[0].message.content
    assert response.choices[0].message.role == "assistant"
    assert response.usage.prompt_tokens == prompt_tokens(built_models, FRANCE)
    assert response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_chat_fp32_knows_paris(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(model=FP32, messages=FRANCE, **GREEDY)
    assert raw.headers["x-quantserve-variant"] == "onnx-fp32"
    assert "Paris" in raw.parse().choices[0].message.content


def test_chat_stream_matches_non_streaming(openai_client, greedy):
    _, full = greedy
    chunks = list(chat(openai_client, stream=True, stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_chat_token_limit_ends_with_length(openai_client, limit):
    response = chat(openai_client, temperature=0, **{limit: 5})
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5


@pytest.mark.parametrize("stop", ["Paris", ["Paris", "zzz-never"]])
def test_chat_stop_strings_cut_the_text(openai_client, greedy, stop):
    response = chat(openai_client, stop=stop, **GREEDY)
    text = response.choices[0].message.content
    assert "Paris" not in text
    assert greedy[1].choices[0].message.content.startswith(text)
    assert response.choices[0].finish_reason == "stop"


def test_chat_stop_string_in_a_stream(openai_client):
    chunks = list(chat(openai_client, stop=["Paris"], stream=True, **GREEDY))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" not in text
    assert chunks[-1].choices[0].finish_reason == "stop"


# --- sampling ---------------------------------------------------------------------------------------

STORY = [{"role": "user", "content": "Write one sentence about a cat."}]


def test_same_seed_same_sample(openai_client):
    texts = [chat(openai_client, STORY, seed=1234, temperature=1.0, max_tokens=16).choices[0].message.content
             for _ in range(2)]
    assert texts[0] == texts[1]


def test_different_seeds_different_samples(openai_client):
    texts = {chat(openai_client, STORY, seed=seed, temperature=1.0, max_tokens=16).choices[0].message.content
             for seed in (1, 2, 3)}
    assert len(texts) > 1


def test_n_choices_are_counted_in_usage(openai_client):
    response = chat(openai_client, STORY, n=2, seed=7, temperature=1.0, max_tokens=8, logprobs=True)
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.message.content for c in response.choices)
    per_choice = [len(c.logprobs.content) for c in response.choices]
    assert response.usage.completion_tokens == sum(per_choice) > max(per_choice)


def test_chat_logprobs_with_top_alternatives(openai_client):
    response = chat(openai_client, logprobs=True, top_logprobs=2, **GREEDY)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 2
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert item.top_logprobs[0].token == item.token  # greedy: the chosen token is the most likely one


# --- text completions -------------------------------------------------------------------------------

PROMPT = "The capital of France is"


def test_completion_and_its_stream_agree(openai_client):
    full = openai_client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=8)
    assert full.object == "text_completion"
    assert full.usage.completion_tokens == 8 and full.choices[0].finish_reason == "length"
    chunks = list(openai_client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=8,
                                                   stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completion_echo_prefixes_the_prompt(openai_client):
    plain = openai_client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=4)
    echoed = openai_client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=4, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text


def test_completion_logprobs(openai_client):
    response = openai_client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=6, logprobs=2)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == response.usage.completion_tokens == 6
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) == 2 for top in logprobs.top_logprobs)


# --- continuous batching ----------------------------------------------------------------------------

QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "What is 2 plus 2?",
             "Say hello in Spanish."]


def test_concurrent_greedy_requests_match_sequential_ones(async_openai_client):
    async def ask(question: str) -> str:
        response = await async_openai_client.chat.completions.create(
            model=FP32, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=24)
        return response.choices[0].message.content

    async def both() -> tuple[list[str], list[str]]:
        sequential = [await ask(q) for q in QUESTIONS]
        return sequential, list(await asyncio.gather(*(ask(q) for q in QUESTIONS)))

    sequential, concurrent = asyncio.run(both())
    assert concurrent == sequential


# --- embeddings -------------------------------------------------------------------------------------

SENTENCES = ["The cat sits on the mat.", "A cat is sitting on a rug.", "Stock markets fell sharply today."]


def test_embeddings_of_a_string_and_a_list(openai_client):
    one = openai_client.embeddings.create(model=EMBEDDER, input=SENTENCES[0])
    many = openai_client.embeddings.create(model=EMBEDDER, input=SENTENCES)
    assert len(one.data) == 1 and [d.index for d in many.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in many.data])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(vectors[0], one.data[0].embedding, atol=1e-5)
    assert one.usage.prompt_tokens > 0 and many.usage.prompt_tokens > one.usage.prompt_tokens
    cosine = vectors @ vectors[0]
    assert cosine[1] > cosine[2]


def test_embeddings_base64_decodes_to_the_float_vector(openai_client):
    as_float = openai_client.embeddings.create(model=EMBEDDER, input=SENTENCES[1])
    raw = openai_client.embeddings.with_raw_response.create(model=EMBEDDER, input=SENTENCES[1],
                                                            encoding_format="base64")
    encoded = raw.http_response.json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    np.testing.assert_allclose(decoded, as_float.data[0].embedding, atol=1e-6)


# --- fallbacks --------------------------------------------------------------------------------------


def test_variant_without_replica_falls_back(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(model=f"{MODEL}:onnx-int8", messages=FRANCE,
                                                                  **GREEDY)
    assert raw.headers["x-quantserve-variant"] == "onnx-int4"
    assert raw.headers["x-quantserve-fallback-from"] == "onnx-int8"
    assert "Paris" in raw.parse().choices[0].message.content


def test_usage_reports_the_prompt_tokens_the_prefix_cache_supplied(openai_client):
    """A second request that repeats the first one's system prompt reuses its computed prefix, and says so in
    `usage.prompt_tokens_details.cached_tokens` (as OpenAI and vLLM report it), streamed or not."""
    system = {"role": "system", "content": "You are a terse assistant for a geography quiz. " * 12}
    first = chat(openai_client, [system, {"role": "user", "content": "Capital of Spain?"}], max_tokens=2)
    second = chat(openai_client, [system, {"role": "user", "content": "Capital of Italy?"}], max_tokens=2)
    assert first.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0.5 * second.usage.prompt_tokens < cached < second.usage.prompt_tokens
    streamed = list(openai_client.chat.completions.create(
        model=MODEL, messages=[system, {"role": "user", "content": "Capital of Peru?"}], max_tokens=2, stream=True,
        stream_options={"include_usage": True}))
    assert streamed[-1].usage.prompt_tokens_details.cached_tokens > 0.5 * streamed[-1].usage.prompt_tokens
