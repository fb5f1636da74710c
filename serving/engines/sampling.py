"""Next-token choice for the whole running batch at once, in vLLM's order:

0. constraints: a sequence with a grammar (response_format, a forced tool call) has every token that would break
   it masked, the masks of all such rows computed in one call (grammar.TokenGrammars); `logit_bias` is added;
1. `min_tokens`: the end-of-sequence tokens are masked until the sequence has that many tokens;
2. penalties: repetition (over prompt and output tokens: a positive logit divided by it, a negative one
   multiplied), then frequency (times the token's count) and presence (once) over output tokens;
3. temperature below 1e-5: greedy (argmax);
4. temperature, then min-p (tokens less likely than min_p times the top token out), top-k, top-p;
5. the draw: probabilities divided by exponential noise, argmax (the exponential race). Done in two levels,
   over blocks of 256 tokens and then inside the chosen block, which is the same distribution with 448
   noise values per row instead of one per vocabulary entry (the noise is what costs).

No step sorts the vocabulary: top-k is a partial selection (np.argpartition), top-p sorts only a partial
selection of the tokens that can survive it; the softmax of untruncated rows runs in ONNX Runtime
(block_probabilities.py). A request with a seed draws from its own generator, so its tokens do not depend on
what else is in the batch; the others share one. A row whose logits are not numbers fails alone
(`SamplingFailed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serving.engines.base import SamplingParams
from serving.engines.block_probabilities import BlockProbabilities
from serving.engines.grammar import GrammarMatcher, LogitBias, TokenGrammars, mask_logits

GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS
BLOCK = 256
SEED_RANGE = 2**64  # numpy's seeds are non-negative: a negative (signed 64-bit) seed maps to its two's complement
SMALLEST_NOISE = np.float32(1e-30)  # an exponential draw of exactly 0 would divide by zero
NUCLEUS_FIRST_GUESS = 64  # tokens first sorted for top-p; language models' nuclei are mostly smaller


class SamplingFailed(Exception):
    """This row could not be sampled (its logits hold no finite value)."""


class GrammarRefused(Exception):
    """The grammar refused a token the sampler chose (its mask should have ruled it out)."""


@dataclass
class SequenceSampling:
    """What the sampler keeps for one sequence: its parameters, generator, token counts, grammar and bias."""

    params: SamplingParams
    eos_token_ids: tuple[int, ...]
    generator: np.random.Generator | None = None
    grammar: GrammarMatcher | None = None
    bias: LogitBias | None = None
    generated: int = 0
    counts: dict[int, int] = field(default_factory=dict)  # output tokens
    seen: list[int] = field(default_factory=list)  # prompt and output tokens, each once (repetition penalty)
    seen_set: set[int] = field(default_factory=set)

    @classmethod
    def start(cls, params: SamplingParams, prompt_ids: list[int], eos_token_ids: tuple[int, ...],
              grammar: GrammarMatcher | None = None, bias: LogitBias | None = None) -> SequenceSampling:
        generator = None if params.seed is None else np.random.default_rng(params.seed % SEED_RANGE)
        state = cls(params, eos_token_ids, generator, grammar, bias)
        if params.repetition_penalty != 1.0:
            state.seen_set = set(prompt_ids)
            state.seen = sorted(state.seen_set)
        return state

    @property
    def greedy(self) -> bool:
        return self.params.temperature < GREEDY_BELOW

    @property
    def selects(self) -> bool:
        """min-p or top-k: the sampler exponentiates only what they keep."""
        return bool(self.params.top_k) or self.params.min_p > 0.0

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and nothing may follow: the sequence ends here."""
        return self.grammar is not None and self.grammar.is_finished()

    def adjusts(self) -> bool:
        p = self.params
        return (self.bias is not None or self.generated < p.min_tokens or p.repetition_penalty != 1.0
                or (bool(self.counts) and (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0)))

    def record(self, token: int) -> None:
        if self.grammar is not None and not self.grammar.accept(token):
            raise GrammarRefused(f"the grammar refused token {token}: {self.grammar.error()}")
        self.generated += 1
        self.counts[token] = self.counts.get(token, 0) + 1
        if self.params.repetition_penalty != 1.0 and token not in self.seen_set:
            self.seen_set.add(token)
            self.seen.append(token)

    def adjust(self, row: np.ndarray) -> None:
        """The bias of step 0, steps 1 and 2 on this sequence's logits row, in place."""
        p = self.params
        if self.bias is not None:
            self.bias.apply(row)
        if self.generated < p.min_tokens:
            row[list(self.eos_token_ids)] = -np.inf
        if p.repetition_penalty != 1.0 and self.seen:
            ids = np.asarray(self.seen)
            values = row[ids]
            row[ids] = np.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if self.counts and (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0):
            ids = np.fromiter(self.counts.keys(), np.int64, len(self.counts))
            counts = np.fromiter(self.counts.values(), np.float32, len(self.counts))
            row[ids] -= p.frequency_penalty * counts + p.presence_penalty


class BatchSampler:
    def __init__(self, generator: np.random.Generator | None = None, grammars: TokenGrammars | None = None) -> None:
        self.generator = generator or np.random.default_rng()  # for the rows without a seed
        self.grammars = grammars  # computes the masks of the rows that have a grammar
        self._block_probabilities: dict[int, BlockProbabilities] = {}  # by vocabulary size

    def sample(self, logits: np.ndarray, states: list[SequenceSampling]) -> list[int | SamplingFailed]:
        """One token per row of `logits` [n, vocab] (which is left unchanged), or the row's failure."""
        logits = self._adjusted(logits, states)
        maxima = logits.max(axis=1)
        if not np.isfinite(maxima).all():
            logits, maxima = _sanitized(logits, maxima)
        choices: list[int | SamplingFailed] = [SamplingFailed("no finite logit")] * len(states)
        usable = [i for i in range(len(states)) if np.isfinite(maxima[i])]
        greedy = [i for i in usable if states[i].greedy]
        softmaxed = [i for i in usable if not states[i].greedy and not states[i].selects]
        if greedy:
            for i, token in zip(greedy, _rows(logits, greedy).argmax(axis=1), strict=True):
                choices[i] = int(token)
        if softmaxed:
            for i, token in zip(softmaxed, self._from_softmax(_rows(logits, softmaxed),
                                                              [states[i] for i in softmaxed]), strict=True):
                choices[i] = token
        for i in usable:
            if not states[i].greedy and states[i].selects:
                choices[i] = self._selected(logits[i], maxima[i], states[i])
        return choices

    def _adjusted(self, logits: np.ndarray, states: list[SequenceSampling]) -> np.ndarray:
        adjusting = [i for i, state in enumerate(states) if state.adjusts()]
        constrained = [i for i, state in enumerate(states) if state.grammar is not None]
        if not adjusting and not constrained:
            return logits
        logits = logits.astype(np.float32, copy=True)
        if constrained:
            masks = self.grammars.allowed_tokens_masks([states[i].grammar for i in constrained])
            for i, allowed in zip(constrained, masks, strict=True):
                mask_logits(logits[i], allowed)
        for i in adjusting:
            states[i].adjust(logits[i])
        return logits

    def _from_softmax(self, logits: np.ndarray, states: list[SequenceSampling]) -> list[int]:
        """Rows without min-p or top-k: one softmax for all of them; the two-level race over whole rows, top-p
        then a race among the nucleus for the others."""
        temperatures = np.array([state.params.temperature for state in states], np.float32)
        blocks, totals = self._blocks_of(logits.shape[1])(logits, temperatures)
        whole = [k for k, state in enumerate(states) if state.params.top_p >= 1.0]
        tokens = [0] * len(states)
        if whole:
            drawn = self._race(blocks[whole], totals[whole], [states[k].generator for k in whole])
            for k, token in zip(whole, drawn, strict=True):
                tokens[k] = int(token)
        for k, state in enumerate(states):
            if state.params.top_p < 1.0:
                probs = blocks[k].reshape(-1)[: logits.shape[1]]
                kept = _top_p(probs, state.params.top_p)
                tokens[k] = self._draw(kept, probs[kept], state.generator)
        return tokens

    def _selected(self, row: np.ndarray, maximum: float, state: SequenceSampling) -> int:
        """Rows with min-p or top-k (then top-p): only the tokens they keep are exponentiated."""
        p = state.params
        scaled = (row - maximum) / np.float32(p.temperature)  # log-probabilities up to a constant; the top is 0
        candidates = np.flatnonzero(scaled >= np.log(p.min_p)) if p.min_p > 0 else np.arange(row.size)
        if p.top_k and p.top_k < candidates.size:
            candidates = candidates[np.argpartition(scaled[candidates], -p.top_k)[-p.top_k :]]
        probs = np.exp(scaled[candidates])
        if p.top_p < 1.0:
            kept = _top_p(probs, p.top_p)
            candidates, probs = candidates[kept], probs[kept]
        return self._draw(candidates, probs, state.generator)

    def _draw(self, candidates: np.ndarray, probs: np.ndarray, generator: np.random.Generator | None) -> int:
        """The exponential race among a few candidates."""
        return int(candidates[np.argmax(probs / self._noise(1, probs.size, [generator])[0])])

    def _blocks_of(self, vocab: int) -> BlockProbabilities:
        if vocab not in self._block_probabilities:
            self._block_probabilities[vocab] = BlockProbabilities(vocab, BLOCK)
        return self._block_probabilities[vocab]

    def _race(self, blocks: np.ndarray, totals: np.ndarray, generators: list[np.random.Generator | None]) -> np.ndarray:
        """Exponential race over unnormalised probabilities [n, blocks, BLOCK] with their block totals [n, blocks]:
        a block by its total, then a token in it."""
        count = blocks.shape[0]
        block = np.argmax(totals / self._noise(count, totals.shape[1], generators), axis=1)
        inside = blocks[np.arange(count), block]
        return block * BLOCK + np.argmax(inside / self._noise(count, BLOCK, generators), axis=1)

    def _noise(self, count: int, size: int, generators: list[np.random.Generator | None]) -> np.ndarray:
        noise = np.empty((count, size), np.float32)
        shared = [i for i, generator in enumerate(generators) if generator is None]
        if shared:
            noise[shared] = self.generator.standard_exponential((len(shared), size), np.float32)
        for i, generator in enumerate(generators):
            if generator is not None:
                noise[i] = generator.standard_exponential(size, np.float32)
        return np.maximum(noise, SMALLEST_NOISE, out=noise)


def _rows(logits: np.ndarray, rows: list[int]) -> np.ndarray:
    return logits if len(rows) == logits.shape[0] else logits[rows]


def _top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest set of most likely tokens whose mass reaches top_p (at least one), as vLLM keeps.
    Tokens below (1 - top_p) / n of the mass are out for sure (all of them together weigh less than 1 - top_p);
    of the rest, only the best `size` are sorted, `size` growing until they hold the mass."""
    total = float(probs.sum(dtype=np.float64))
    survivors = np.flatnonzero(probs >= (1.0 - top_p) * total / probs.size)
    size = NUCLEUS_FIRST_GUESS
    while size < survivors.size:
        best = survivors[np.argpartition(probs[survivors], -size)[-size:]]
        if probs[best].sum(dtype=np.float64) >= top_p * total:
            survivors = best
            break
        size *= 4
    ranked = survivors[np.argsort(-probs[survivors], kind="stable")]
    cumulative = np.cumsum(probs[ranked], dtype=np.float64)
    keep = min(int(np.searchsorted(cumulative, top_p * total, side="left")) + 1, ranked.size)
    return ranked[:keep]


def _sanitized(logits: np.ndarray, maxima: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN logits count as impossible tokens and +inf as the largest float, on the rows that have them."""
    logits = logits.astype(np.float32, copy=True)
    for i in np.flatnonzero(~np.isfinite(maxima)):
        np.nan_to_num(logits[i], copy=False, nan=-np.inf, posinf=np.finfo(np.float32).max, neginf=-np.inf)
        maxima[i] = logits[i].max()
    return logits, maxima
