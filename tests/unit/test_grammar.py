"""Constrained decoding (serving.engines.grammar) on a real tokenizer (SmolLM2's when the models folder has it, else
one trained here): the mask allows exactly the tokens that keep the output valid, random walks through the mask end
in documents that parse and validate, and what llguidance cannot enforce is refused by name."""

import json
import re

import numpy as np
import pytest

from serving.engines.grammar import (
    ConstraintError,
    LogitBias,
    TokenGrammars,
    json_object_constraint,
    json_schema_constraint,
    mask_logits,
    parse_logit_bias,
)
from tests.helpers.small_tokenizer import END_OF_SEQUENCE, unit_tokenizer

COLORS = ["red", "green", "blue"]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "color": {"enum": COLORS},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        "address": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                                     "verified": {"type": "boolean"}},
                    "required": ["zip", "verified"], "additionalProperties": False},
    },
    "required": ["name", "age", "color", "tags", "address"],
    "additionalProperties": False,
}
WALKS = 6
MAX_STEPS = 400


@pytest.fixture(scope="module")
def tokenizer():
    return unit_tokenizer()


@pytest.fixture(scope="module")
def grammars(tokenizer) -> TokenGrammars:
    return TokenGrammars.from_tokenizer(tokenizer, [tokenizer.token_to_id(END_OF_SEQUENCE)])


@pytest.fixture(scope="module")
def token_texts(tokenizer) -> list[str]:
    return [tokenizer.decode([i]) for i in range(tokenizer.get_vocab_size())]


def consumed(grammars, constraint, tokenizer, text: str):
    matcher = grammars.matcher(constraint)
    for token in tokenizer.encode(text, add_special_tokens=False).ids:
        assert matcher.accept(token), matcher.error()
    return matcher


def walk(grammars, constraint, tokenizer, seed: int, weights: np.ndarray | None = None) -> str:
    """Tokens drawn at random among those the mask allows (in proportion to `weights` if given) until the matcher
    is finished or draws an end-of-sequence token."""
    rng, matcher, tokens = np.random.default_rng(seed), grammars.matcher(constraint), []
    eos = tokenizer.token_to_id(END_OF_SEQUENCE)
    for _ in range(MAX_STEPS):
        if matcher.is_finished():
            return tokenizer.decode(tokens)
        allowed = np.flatnonzero(matcher.allowed_tokens_mask())
        p = None if weights is None else weights[allowed] / weights[allowed].sum()
        token = int(rng.choice(allowed, p=p))
        if token == eos:
            return tokenizer.decode(tokens)
        assert matcher.accept(token), matcher.error()
        tokens.append(token)
    pytest.fail(f"no end after {MAX_STEPS} tokens: {tokenizer.decode(tokens)!r}")


def check_person(person: dict) -> None:
    assert set(person) == set(PERSON["required"])
    assert isinstance(person["name"], str) and len(person["name"]) <= 12
    assert isinstance(person["age"], int) and 0 <= person["age"] <= 130
    assert person["color"] in COLORS
    assert len(person["tags"]) <= 3 and set(person["tags"]) <= {"a", "b"}
    assert re.fullmatch("[0-9]{5}", person["address"]["zip"]) and isinstance(person["address"]["verified"], bool)
    assert set(person["address"]) == {"zip", "verified"}


def allowed_set(matcher) -> set[int]:
    return set(np.flatnonzero(matcher.allowed_tokens_mask()).tolist())


def test_random_walks_through_the_schema_mask_end_in_valid_documents(grammars, tokenizer):
    constraint = json_schema_constraint(PERSON, strict=True)
    for seed in range(WALKS):
        check_person(json.loads(walk(grammars, constraint, tokenizer, seed)))


def test_at_an_enum_the_mask_is_exactly_the_tokens_that_begin_a_value(grammars, tokenizer, token_texts):
    constraint = json_schema_constraint(PERSON, strict=True)
    matcher = consumed(grammars, constraint, tokenizer, '{"name": "Ada", "age": 36, "color": ')
    quoted = [json.dumps(c) for c in COLORS]
    expected = {i for i, text in enumerate(token_texts) if text and any(q.startswith(text) for q in quoted)}
    assert allowed_set(matcher) == expected


def test_the_first_mask_of_an_object_schema_allows_only_tokens_of_its_opening(grammars, tokenizer, token_texts):
    # The opening is forced up to the name's value; llguidance allows only its canonical tokens there (so not `{`
    # alone where the tokenizer has `{"`), which is a subset of its prefixes.
    matcher = grammars.matcher(json_schema_constraint(PERSON, strict=True))
    allowed = allowed_set(matcher)
    assert allowed and all(token_texts[i] and '{"name": "'.startswith(token_texts[i]) for i in allowed)


def test_a_token_outside_the_mask_is_refused(grammars, tokenizer, token_texts):
    matcher = grammars.matcher(json_schema_constraint(PERSON, strict=True))
    refused = next(i for i, t in enumerate(token_texts) if t.startswith("["))
    assert not matcher.accept(refused)
    assert matcher.error()


def test_a_finished_document_allows_only_the_end_of_sequence(grammars, tokenizer):
    document = ('{"name": "Ada", "age": 36, "color": "red", "tags": ["a"], '
                '"address": {"zip": "12345", "verified": true}}')
    matcher = consumed(grammars, json_schema_constraint(PERSON, strict=True), tokenizer, document)
    assert matcher.is_finished()
    assert allowed_set(matcher) == {tokenizer.token_to_id(END_OF_SEQUENCE)}


def test_json_object_mode_walks_end_in_json_objects(grammars, tokenizer, token_texts):
    # Favour tokens that close strings, arrays and objects, so that walks end.
    closing = np.array([1.0 + 200.0 * any(c in text for c in '"}]') for text in token_texts])
    closing = np.pad(closing, (0, grammars.vocab_size - closing.size), constant_values=1.0)
    for seed in range(WALKS):
        assert isinstance(json.loads(walk(grammars, json_object_constraint(), tokenizer, seed, closing)), dict)


def test_json_object_mode_refuses_what_is_not_json(grammars, tokenizer):
    for text in ['{"a": 1,}', "{'a': 1}", '{a: 1}', '[1, 2]', '{"a": tru}']:
        matcher = grammars.matcher(json_object_constraint())
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert not all(matcher.accept(t) for t in ids) or not matcher.is_finished(), text


def test_batch_masks_equal_each_matchers_own(grammars, tokenizer):
    constraint = json_schema_constraint(PERSON, strict=True)
    matchers = [consumed(grammars, constraint, tokenizer, prefix)
                for prefix in ["", '{"name": "A', '{"name": "Ada", "age": 3', '{"name": "Ada", "age": 36, "color": "r']]
    batch = grammars.allowed_tokens_masks(matchers)
    assert batch.shape == (len(matchers), grammars.vocab_size)
    for row, matcher in zip(batch, matchers, strict=True):
        assert np.array_equal(row, matcher.allowed_tokens_mask())


def test_masked_logits_keep_only_allowed_tokens(grammars):
    matcher = grammars.matcher(json_schema_constraint(PERSON, strict=True))
    allowed = matcher.allowed_tokens_mask()
    logits = np.random.default_rng(0).standard_normal(grammars.vocab_size).astype(np.float32)
    mask_logits(logits, allowed)
    assert np.array_equal(np.isfinite(logits), allowed)


def test_strict_mode_names_the_keywords_it_cannot_enforce():
    schema = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}, "if": {"required": ["a"]}}
    with pytest.raises(ConstraintError) as refused:
        json_schema_constraint(schema, strict=True)
    assert "not" in refused.value.message and "if" in refused.value.message
    assert refused.value.param == "response_format"
    json_schema_constraint(schema, strict=False)  # a guide, as OpenAI's non-strict mode


@pytest.mark.parametrize("schema", [{"type": "strng"}, {"$ref": "#/$defs/missing"}, ["not", "an object"]])
def test_an_invalid_schema_is_refused_in_either_mode(schema):
    for strict in (True, False):
        with pytest.raises(ConstraintError):
            json_schema_constraint(schema, strict=strict)


def test_logit_bias_adds_to_the_named_tokens():
    bias = LogitBias.for_vocabulary(parse_logit_bias({"5": -100, "7": 2.5}), vocab_size=10)
    row = np.zeros(10, np.float32)
    bias.apply(row)
    assert row[5] == -100 and row[7] == 2.5 and np.count_nonzero(row) == 2
    assert LogitBias.for_vocabulary(parse_logit_bias({}), vocab_size=10) is None


@pytest.mark.parametrize("bias", [{"-1": 1.0}, {"x": 1.0}, {"3": 100.5}, {"3": -101}])
def test_logit_bias_that_is_not_token_ids_and_biases_is_refused(bias):
    with pytest.raises(ConstraintError) as refused:
        parse_logit_bias(bias)
    assert refused.value.param == "logit_bias"


def test_logit_bias_outside_the_vocabulary_is_refused_by_the_engine():
    with pytest.raises(ConstraintError) as refused:
        LogitBias.for_vocabulary(parse_logit_bias({"3": 1.0, "10": 1.0}), vocab_size=10)
    assert "10" in refused.value.message and refused.value.param == "logit_bias"
