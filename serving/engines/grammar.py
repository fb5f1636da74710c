"""Constrained decoding with llguidance: a request's `response_format` or forced tool call becomes a `Constraint`
(a JSON schema or a Lark grammar), the constraint a per-sequence `GrammarMatcher` whose mask says which tokens keep the
output valid; and `logit_bias` becomes an additive bias. Why llguidance (and not xgrammar or outlines-core): README,
"Dependencies, and why each"; figures from `python -m loadtest.bench.grammar`.

Constraints are checked where the request enters (building one needs no tokenizer), so an unsupported schema is a
400 naming its keywords before any replica sees it. A replica holds one `TokenGrammars` for its tokenizer.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.numpy
import numpy as np

# How JSON is written under a grammar: json.dumps' separators and no other whitespace. A small model given free
# whitespace can emit newlines until max_tokens; these separators are the form it saw most in training.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}  # json_object mode, as vLLM and OpenAI read it
UNIMPLEMENTED = re.compile(r'Unimplemented keys: (\[[^\]]*\])')
MATCHER_CACHE_SIZE = 128  # compiled grammars kept per replica (a compile is ~1 ms, a copy ~10 us)
LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range for a bias, either sign


class ConstraintError(ValueError):
    """A constraint the request asked for cannot be honoured: a 400 naming the request field (`param`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


# --- constraints (no tokenizer needed) -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Constraint:
    """What a request holds its output to, in the forms both backends take: a JSON schema (its `x-guidance` options
    set: quantserve's layout, and leniency outside strict mode) or a Lark grammar in llguidance's dialect. vLLM's
    `guidance` structured-outputs backend takes either as it is (`StructuredOutputsParams(json=...)` or
    `grammar=...`), so both backends enforce the same language."""

    json_schema: Mapping[str, Any] | None = None
    lark: str | None = None

    @property
    def grammar(self) -> str:
        """The grammar in llguidance's own format, for `TokenGrammars.matcher`."""
        if self.lark is not None:
            return llguidance.LLMatcher.grammar_from_lark(self.lark)
        return llguidance.LLMatcher.grammar_from_json_schema(dict(self.json_schema or ANY_JSON_OBJECT))


def json_object_constraint() -> Constraint:
    """`response_format: {"type": "json_object"}`: any JSON object."""
    return Constraint(json_schema=json_schema_options(ANY_JSON_OBJECT, strict=True))


def json_schema_constraint(schema: Mapping[str, Any], strict: bool, param: str = "response_format") -> Constraint:
    """`response_format: {"type": "json_schema", ...}`. With `strict`, every keyword must be enforced: one that
    llguidance does not implement is a `ConstraintError` naming it. Without, such keywords are left unenforced (the
    schema is then a guide, as OpenAI describes non-strict mode); a schema that is wrong is an error either way."""
    if not isinstance(schema, Mapping):
        raise ConstraintError("a JSON schema must be a JSON object", param)
    constraint = Constraint(json_schema=json_schema_options(schema, strict))
    check_grammar(constraint.grammar, param)
    return constraint


def lark_constraint(lark: str, param: str) -> Constraint:
    constraint = Constraint(lark=lark)
    check_grammar(constraint.grammar, param)
    return constraint


def json_schema_options(schema: Mapping[str, Any], strict: bool) -> dict[str, Any]:
    """The schema with quantserve's JSON layout as its `x-guidance` options (a Lark `%json` takes the same form)."""
    return {**schema, "x-guidance": {**JSON_LAYOUT, "lenient": not strict}}


def check_grammar(grammar: str, param: str) -> None:
    """Raise `ConstraintError` if llguidance refuses the grammar; its unimplemented keywords are named."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if not is_error:
        return
    message = messages[0] if messages else "the grammar could not be compiled"
    if found := UNIMPLEMENTED.search(message):
        keywords = ", ".join(json.loads(found.group(1)))
        raise ConstraintError(f"the JSON schema uses keywords that strict mode cannot enforce: {keywords} "
                              "(send strict: false to have them ignored)", param)
    raise ConstraintError(f"the JSON schema is invalid: {_first_line(message)}", param)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


# --- matchers (one tokenizer per replica) ----------------------------------------------------------------------


class GrammarMatcher:
    """One sequence's position in its grammar: which tokens may come next, and the tokens it took."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size

    def allowed_tokens_mask(self) -> np.ndarray:
        """A bool per vocabulary entry: True where the token keeps the output valid (the end-of-sequence tokens are
        allowed once the output is complete). All False if the matcher failed."""
        bitmask = llguidance.numpy.allocate_token_bitmask(1, self.vocab_size)
        self.fill_bitmask(bitmask, 0)
        return bitmask_to_bools(bitmask, self.vocab_size)[0]

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        llguidance.numpy.fill_next_token_bitmask(self.matcher, bitmask, row)

    def accept(self, token: int) -> bool:
        """Advance by one sampled token; False (and the matcher is failed for good) if the grammar forbids it."""
        return self.matcher.consume_token(token)

    def is_finished(self) -> bool:
        """The output is complete and nothing more can follow (only an end-of-sequence token would be allowed)."""
        return self.matcher.is_stopped()

    def error(self) -> str:
        return self.matcher.get_error()


class TokenGrammars:
    """Turns grammars into matchers over one tokenizer. Building it walks the whole vocabulary (about 1 s), so a
    replica builds one; compiled grammars are cached and each sequence gets a copy."""

    def __init__(self, tokenizer_json: str, eos_token_ids: Sequence[int], vocab_size: int | None = None,
                 threads: int | None = None) -> None:
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=list(eos_token_ids))
        self.vocab_size = self.tokenizer.vocab_size
        self.executor = llguidance.LLExecutor(threads)  # None: llguidance's default, 80% of the CPUs (at most 32)
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()

    @classmethod
    def from_tokenizer(cls, tokenizer, eos_token_ids: Sequence[int], vocab_size: int | None = None,
                       threads: int | None = None) -> TokenGrammars:
        """From a `tokenizers.Tokenizer` (the one `PromptEncoder` holds); `vocab_size` is the model's logits width
        where it exceeds the tokenizer's; `threads` compute a batch's masks (a replica gives its CPU share)."""
        return cls(tokenizer.to_str(), eos_token_ids, vocab_size, threads)

    def matcher(self, constraint: Constraint, param: str = "response_format") -> GrammarMatcher:
        grammar = constraint.grammar
        compiled = self._compiled.pop(grammar, None) or self._compile(grammar, param)
        self._compiled[grammar] = compiled
        while len(self._compiled) > MATCHER_CACHE_SIZE:
            self._compiled.popitem(last=False)
        return GrammarMatcher(compiled.deep_copy(), self.vocab_size)

    def _compile(self, grammar: str, param: str) -> llguidance.LLMatcher:
        compiled = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if compiled.is_error():
            raise ConstraintError(f"the grammar could not be compiled: {_first_line(compiled.get_error())}", param)
        return compiled

    def allowed_tokens_masks(self, matchers: Sequence[GrammarMatcher]) -> np.ndarray:
        """Masks [len(matchers), vocab] for a batch at once, computed in parallel off the GIL."""
        bitmask = llguidance.numpy.allocate_token_bitmask(len(matchers), self.vocab_size)
        pairs = [(m.matcher, row) for row, m in enumerate(matchers)]
        llguidance.numpy.fill_next_token_bitmask_par(self.executor, pairs, bitmask)
        return bitmask_to_bools(bitmask, self.vocab_size)


def bitmask_to_bools(bitmask: np.ndarray, vocab_size: int) -> np.ndarray:
    """[n, ceil(vocab/32)] int32 bit words (bit i of word w is token 32w+i) -> [n, vocab] bool."""
    bits = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")
    return bits[:, :vocab_size].view(bool)


def mask_logits(logits: np.ndarray, allowed: np.ndarray) -> None:
    """Forbidden tokens' logits to -inf, in place ([n, vocab] logits and masks, or one row of each)."""
    np.copyto(logits, np.float32(-np.inf), where=~allowed)


# --- logit bias ------------------------------------------------------------------------------------------------


def parse_logit_bias(bias: Mapping[str, float] | None) -> tuple[tuple[int, float], ...]:
    """The request's `logit_bias` (token id, a JSON object key so a string, -> bias) as (id, bias) pairs; a
    `ConstraintError` for a key that is not a token id or a bias outside OpenAI's [-100, 100]. Whether the ids are
    in the vocabulary is for the engine to say (`LogitBias.for_vocabulary`)."""
    pairs = []
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise ConstraintError(f"logit_bias keys must be token ids, got {key!r}", "logit_bias") from None
        if token < 0:
            raise ConstraintError(f"logit_bias keys must be token ids, got {key!r}", "logit_bias")
        if not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:
            raise ConstraintError(f"logit_bias values must be between -100 and 100, got {value} for token {key}",
                                  "logit_bias")
        pairs.append((token, float(value)))
    return tuple(pairs)


@dataclass(frozen=True)
class LogitBias:
    """`logit_bias` for one sequence: values added to the logits of the named tokens before sampling (-100 bans a
    token in practice, as with OpenAI; the sum is not clamped, as vLLM does not)."""

    token_ids: np.ndarray  # int64
    values: np.ndarray  # float32

    @classmethod
    def for_vocabulary(cls, pairs: Sequence[tuple[int, float]], vocab_size: int) -> LogitBias | None:
        """From `parse_logit_bias`'s pairs; None if there are none, a `ConstraintError` for an id outside the
        vocabulary."""
        if not pairs:
            return None
        if outside := sorted({token for token, _ in pairs if not 0 <= token < vocab_size}):
            raise ConstraintError(f"logit_bias names tokens outside the vocabulary (0 to {vocab_size - 1}): "
                                  f"{', '.join(map(str, outside))}", "logit_bias")
        return cls(np.array([t for t, _ in pairs], np.int64), np.array([v for _, v in pairs], np.float32))

    def apply(self, row: np.ndarray) -> None:
        np.add.at(row, self.token_ids, self.values)  # add.at: a token named twice (e.g. "5" and "05") adds twice
