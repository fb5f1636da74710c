"""The batch sampler with constraints (serving.engines.sampling, step 0): rows with a grammar and free rows in one
batch, each constrained row drawing only what its grammar allows, free rows untouched; logit_bias moves the greedy
choice."""

import json

import numpy as np
import pytest

from serving.engines.base import SamplingParams
from serving.engines.grammar import LogitBias, TokenGrammars, json_schema_constraint, parse_logit_bias
from serving.engines.sampling import BatchSampler, GrammarRefused, SequenceSampling
from tests.helpers.small_tokenizer import END_OF_SEQUENCE, unit_tokenizer

SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "score": {"type": "integer",
                                                                                        "minimum": 0, "maximum": 9}},
          "required": ["answer", "score"], "additionalProperties": False}
MAX_STEPS = 60


@pytest.fixture(scope="module")
def tokenizer():
    return unit_tokenizer()


@pytest.fixture(scope="module")
def grammars(tokenizer) -> TokenGrammars:
    return TokenGrammars.from_tokenizer(tokenizer, [tokenizer.token_to_id(END_OF_SEQUENCE)])


def state(params: SamplingParams, grammars=None, tokenizer=None) -> SequenceSampling:
    eos = (tokenizer.token_to_id(END_OF_SEQUENCE),) if tokenizer else (2,)
    grammar = grammars.matcher(params.constraint) if params.constraint is not None else None
    return SequenceSampling.start(params, [1, 2, 3], eos, grammar)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_constrained_and_free_rows_share_a_batch(grammars, tokenizer, temperature):
    rng = np.random.default_rng(7)
    constraint = json_schema_constraint(SCHEMA, strict=True)
    params = SamplingParams(temperature=temperature, seed=3, constraint=constraint)
    constrained = [state(params, grammars, tokenizer) for _ in range(2)]
    free = state(SamplingParams(temperature=0.0))
    sampler = BatchSampler(np.random.default_rng(0), grammars)
    outputs: list[list[int]] = [[], []]
    for _ in range(MAX_STEPS):
        if all(s.complete for s in constrained):
            break
        logits = rng.standard_normal((3, grammars.vocab_size)).astype(np.float32)
        rows = [s for s in constrained if not s.complete]
        chosen = sampler.sample(logits[: len(rows) + 1], [*rows, free])
        assert chosen[-1] == int(logits[len(rows)].argmax())  # the free row is sampled as if alone
        for sequence, token in zip(rows, chosen, strict=False):
            sequence.record(token)
            outputs[constrained.index(sequence)].append(token)
    for tokens in outputs:
        document = json.loads(tokenizer.decode(tokens))
        assert document["answer"] in ("yes", "no") and 0 <= document["score"] <= 9


def test_a_token_the_grammar_refuses_fails_the_sequence(grammars, tokenizer):
    sequence = state(SamplingParams(constraint=json_schema_constraint(SCHEMA, strict=True)), grammars, tokenizer)
    with pytest.raises(GrammarRefused):
        sequence.record(tokenizer.encode("[", add_special_tokens=False).ids[0])


def test_logit_bias_minus_100_moves_the_greedy_choice():
    logits = np.random.default_rng(1).standard_normal((1, 50)).astype(np.float32)
    top = int(logits[0].argmax())
    params = SamplingParams(temperature=0.0, logit_bias=parse_logit_bias({str(top): -100}))
    biased = SequenceSampling.start(params, [1], (2,), bias=LogitBias.for_vocabulary(params.logit_bias, 50))
    assert BatchSampler().sample(logits, [biased])[0] != top
    assert BatchSampler().sample(logits, [state(SamplingParams(temperature=0.0))])[0] == top
