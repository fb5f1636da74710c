"""Synthetic prompts of an exact token count, made with the served model's own tokenizer (`tokenizers`, offline).

A prompt is a run of random whole words from the tokenizer's vocabulary, checked by encoding it again: its text
is exactly N tokens under that tokenizer. The chat template the server applies adds its own tokens on top; the
report states the prompt length the server counted (usage), not this target.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from loadtest.workload import WorkloadError, length_sampler

WORD = re.compile(r"Ġ[a-z]{3,10}")  # byte-level BPE: a word with its leading space, which re-encodes as itself
ATTEMPTS = 8


def load_tokenizer(path: Path):
    """A `tokenizers.Tokenizer` from a tokenizer.json; no network."""
    from tokenizers import Tokenizer  # a Rust extension, imported only where synthetic prompts are made

    if not path.is_file():
        raise WorkloadError(f"no tokenizer at {path}; build the variants (make variants) or pass --tokenizer")
    return Tokenizer.from_file(str(path))


def word_ids(tokenizer) -> list[int]:
    """Token ids of plain lower-case words, sorted so that the same seed gives the same prompts."""
    ids = sorted(index for token, index in tokenizer.get_vocab().items() if WORD.fullmatch(token))
    if not ids:
        raise WorkloadError("the tokenizer has no plain-word tokens (byte-level BPE with a Ġ space marker expected)")
    return ids


def exact_prompt(tokenizer, words: list[int], n_tokens: int, rng: random.Random) -> str:
    """Text of exactly `n_tokens` tokens under `tokenizer`."""
    text = tokenizer.decode([rng.choice(words) for _ in range(n_tokens)])
    for _ in range(ATTEMPTS):
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) == n_tokens:
            return text
        if len(ids) > n_tokens:
            text = tokenizer.decode(ids[:n_tokens])
        else:
            text += tokenizer.decode([rng.choice(words) for _ in range(n_tokens - len(ids))])
    raise WorkloadError(f"could not make a prompt of exactly {n_tokens} tokens")


def write_synthetic_prompts(path: Path, tokenizer_path: Path, input_tokens: str, count: int,
                            seed: int | str) -> list[int]:
    """Write `count` prompts (JSONL, the prompt-set format) with lengths drawn from `input_tokens`; their lengths.

    The same seed gives the same prompts. A server with a prefix cache answers a prompt it has seen faster, so each
    load-test step draws its own (the sweep seeds them with the run id, the variant and the level)."""
    tokenizer = load_tokenizer(tokenizer_path)
    words, rng = word_ids(tokenizer), random.Random(f"prompts/{seed}")
    draw = length_sampler(input_tokens, rng, "input length")
    lengths = [draw() for _ in range(count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for index, length in enumerate(lengths):
            text = exact_prompt(tokenizer, words, length, rng)
            item = {"id": f"synthetic-{index:04d}", "input_tokens": length,
                    "messages": [{"role": "user", "content": text}]}
            handle.write(json.dumps(item) + "\n")
    return lengths
