"""Logprobs of chosen tokens and their top alternatives, from the model's raw logits (vLLM's default
`raw_logprobs`: before penalties and temperature), without sorting the vocabulary: one log-sum-exp per row
and a partial selection (np.argpartition) of the top n."""

from __future__ import annotations

import numpy as np

from serving.engines.base import TokenLogprob
from serving.engines.detokenizer import PieceDecoder, TokenBytes

LOWEST_LOGPROB = -9999.0  # vLLM's floor: -inf is not JSON
PROMPT_ROWS_PER_PASS = 256  # bounds the float32 temporaries of prompt logprobs (a row is the whole vocabulary)


def log_normalizers(logits: np.ndarray) -> np.ndarray:
    """log(sum(exp(row))) per row of [n, vocab], stable."""
    maxima = logits.max(axis=1, keepdims=True)
    sums = np.exp(logits - maxima).sum(axis=1, dtype=np.float64)
    return maxima[:, 0].astype(np.float64) + np.log(sums)


def top_ids(row: np.ndarray, count: int) -> np.ndarray:
    """The `count` largest entries' indices, largest first."""
    if count <= 0:
        return np.empty(0, np.int64)
    count = min(count, row.size)
    best = np.argpartition(row, -count)[-count:]
    return best[np.argsort(-row[best], kind="stable")]


def _clamped(value: float) -> float:
    return max(float(value), LOWEST_LOGPROB)


class LogprobWriter:
    """Turns logits rows into `TokenLogprob`s with text and bytes (see base.TokenLogprob)."""

    def __init__(self, tokenizer, token_bytes: TokenBytes) -> None:
        self.tokenizer, self.token_bytes = tokenizer, token_bytes

    def ranked(self, text: str, raw: bytes, logprob: float, alternatives: list[tuple[int, float]]) -> TokenLogprob:
        """An entry from a token's logprob and its alternatives (token id, logprob), best first."""
        return TokenLogprob(
            token=text, logprob=_clamped(logprob), token_bytes=raw,
            top=tuple((self.token_bytes.text(t), _clamped(value)) for t, value in alternatives),
            top_bytes=tuple(self.token_bytes.raw(t) for t, _ in alternatives))

    def entry(self, row: np.ndarray, normalizer: float, token: int, text: str, raw: bytes,
              alternatives: int) -> TokenLogprob:
        best = [(int(t), float(row[t] - normalizer)) for t in top_ids(row, alternatives)]
        return self.ranked(text, raw, float(row[token] - normalizer), best)

    def prompt_texts(self, prompt_ids: list[int]) -> list[str]:
        """Each prompt token's text, special tokens kept, so that they spell the prompt as it was sent."""
        pieces = PieceDecoder(self.tokenizer, skip_special_tokens=False)
        texts = [pieces.add(token) for token in prompt_ids]
        texts[-1] += pieces.flush()
        return texts

    def prompt_start(self, prompt_ids: list[int], texts: list[str]) -> TokenLogprob:
        """The first prompt token's entry: nothing predicts it, so it has no logprob."""
        return TokenLogprob(texts[0], None, token_bytes=self.token_bytes.raw(prompt_ids[0]))

    def output_text(self, token: int, piece: str) -> tuple[str, bytes]:
        """A generated token's text and bytes: `piece` is what it added to the output (the detokenizer's). A special
        token adds nothing to the output, but its entry names it (`<|im_end|>`), as its entry among the
        alternatives does and as vLLM answers."""
        if token in self.token_bytes.special:
            return self.token_bytes.text(token), self.token_bytes.raw(token)
        return piece, self.token_bytes.raw(token)

    def generated(self, row: np.ndarray, token: int, piece: str, alternatives: int) -> TokenLogprob:
        """A sampled token's entry (see output_text)."""
        normalizer = float(log_normalizers(row[None])[0])
        return self.entry(row, normalizer, token, *self.output_text(token, piece), alternatives)

    def prompt(self, logits: np.ndarray, prompt_ids: list[int], alternatives: int) -> list[TokenLogprob]:
        """Every prompt token's logprob given the ones before it (`logits` [len(prompt), vocab] from the prefill)."""
        texts = self.prompt_texts(prompt_ids)
        entries = [self.prompt_start(prompt_ids, texts)]
        predicted = len(prompt_ids) - 1  # row i predicts token i + 1
        for start in range(0, predicted, PROMPT_ROWS_PER_PASS):
            rows = logits[start : min(start + PROMPT_ROWS_PER_PASS, predicted)]
            for offset, normalizer in enumerate(log_normalizers(rows)):
                position = start + offset + 1
                token = prompt_ids[position]
                entries.append(self.entry(rows[offset], float(normalizer), token, texts[position],
                                          self.token_bytes.raw(token), alternatives))
        return entries
