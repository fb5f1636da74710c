"""Completions' logprobs as clients read them, against the real application (the session's `serving_app`):
`text_offset` into the choice's text (streamed chunks included), `echo` streamed and not, with the prompt's
logprobs, and `max_tokens: 0` with `echo` scoring a prompt as vLLM's completions endpoint does (what lm-eval's
loglikelihood tasks send).

On the previous code: every streamed chunk's offsets restarted at 0, `echo` was ignored when streaming, echo
returned no prompt logprobs and `max_tokens: 0` was a 400."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m:onnx-fp32"
PROMPT = "The capital of France is"
GREEDY = {"temperature": 0, "max_tokens": 8, "logprobs": 2}


def complete(client, **fields):
    return client.completions.create(model=MODEL, prompt=PROMPT, **{**GREEDY, **fields})


def offsets_follow_the_tokens(logprobs, start: int = 0) -> bool:
    expected = [start]
    for token in logprobs.tokens[:-1]:
        expected.append(expected[-1] + len(token))
    return logprobs.text_offset == expected


def streamed(client, **fields) -> tuple[str, list, list, list]:
    """Text, tokens, token logprobs and offsets of a completion stream, joined over its chunks."""
    text, tokens, values, offsets = "", [], [], []
    for chunk in complete(client, stream=True, **fields):
        for choice in chunk.choices:
            text += choice.text
            if choice.logprobs:
                tokens += choice.logprobs.tokens
                values += choice.logprobs.token_logprobs
                offsets += choice.logprobs.text_offset
    return text, tokens, values, offsets


def test_offsets_point_into_the_text_and_the_tokens_spell_it(openai_client):
    choice = complete(openai_client).choices[0]
    assert "".join(choice.logprobs.tokens) == choice.text
    assert offsets_follow_the_tokens(choice.logprobs)


def test_streamed_offsets_continue_across_chunks(openai_client):
    full = complete(openai_client).choices[0]
    text, tokens, values, offsets = streamed(openai_client)
    assert text == full.text and tokens == full.logprobs.tokens
    assert offsets == full.logprobs.text_offset and offsets[-1] > 0
    assert values == pytest.approx(full.logprobs.token_logprobs, abs=1e-4)


def test_echo_with_logprobs_scores_the_prompt_too(openai_client):
    plain = complete(openai_client)
    echoed = complete(openai_client, echo=True)
    choice, prompt_tokens = echoed.choices[0], echoed.usage.prompt_tokens
    assert choice.text == PROMPT + plain.choices[0].text
    assert "".join(choice.logprobs.tokens) == choice.text and offsets_follow_the_tokens(choice.logprobs)
    assert len(choice.logprobs.tokens) == prompt_tokens + echoed.usage.completion_tokens
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    assert all(value <= 0 for value in choice.logprobs.token_logprobs[1:])
    assert choice.logprobs.token_logprobs[prompt_tokens:] == pytest.approx(plain.choices[0].logprobs.token_logprobs,
                                                                           abs=1e-4)


def test_echo_streams_the_prompt_first(openai_client):
    echoed = complete(openai_client, echo=True).choices[0]
    chunks = [c for c in complete(openai_client, echo=True, stream=True) if c.choices]
    assert chunks[0].choices[0].text.startswith(PROMPT)
    text, tokens, _values, offsets = streamed(openai_client, echo=True)
    assert text == echoed.text and tokens == echoed.logprobs.tokens and offsets == echoed.logprobs.text_offset


def test_max_tokens_0_with_echo_scores_the_prompt_as_vllm_does(openai_client):
    generated = complete(openai_client).choices[0]
    scored = openai_client.completions.create(model=MODEL, prompt=PROMPT + generated.text, max_tokens=0, echo=True,
                                              logprobs=1, temperature=0)
    choice = scored.choices[0]
    assert choice.text == PROMPT + generated.text and scored.usage.completion_tokens == 0
    assert len(choice.logprobs.tokens) == scored.usage.prompt_tokens and choice.logprobs.token_logprobs[0] is None
    # The greedy continuation, scored as a prompt, has the logprobs it had when it was generated (same logits).
    tail = choice.logprobs.token_logprobs[-len(generated.logprobs.tokens):]
    if choice.logprobs.tokens[-len(generated.logprobs.tokens):] == generated.logprobs.tokens:
        assert tail == pytest.approx(generated.logprobs.token_logprobs, abs=0.05)
    assert all(top is None or len(top) >= 1 for top in choice.logprobs.top_logprobs)


def test_max_tokens_0_without_echo_is_400_naming_it(openai_client):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0)
    assert refused.value.param == "max_tokens"
