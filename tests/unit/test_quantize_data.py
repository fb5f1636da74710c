"""The evaluation data: enough held-out text and prompts, and no overlap with any calibration text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DATA = Path(__file__).parents[2] / "quantize" / "data"
NGRAM = 8


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def sentences(text: str) -> set[str]:
    parts = re.split(r"(?<=[.!?])\s+", text)
    return {" ".join(words(p)) for p in parts if len(words(p)) >= 4}


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def calibration_files() -> list[Path]:
    return sorted(DATA.glob("calibration*.txt"))


def heldout() -> str:
    return (DATA / "heldout.txt").read_text(encoding="utf-8")


def test_there_are_calibration_texts_including_a_large_one():
    sizes = {path.name: len(words(path.read_text(encoding="utf-8"))) for path in calibration_files()}
    assert "calibration.txt" in sizes
    assert max(sizes.values()) >= 30_000, sizes


def test_heldout_text_is_long_enough():
    # >= 8,000 SmolLM2 tokens (eval_tokens in the manifest, checked in tests/integration/test_variants.py);
    # English prose runs ~1.3 tokens per word with that tokenizer.
    assert len(words(heldout())) >= 6_000


@pytest.mark.parametrize("calibration", calibration_files(), ids=lambda p: p.name)
def test_heldout_shares_no_sentence_with_calibration(calibration):
    shared = sentences(heldout()) & sentences(calibration.read_text(encoding="utf-8"))
    assert not shared, sorted(shared)[:3]


@pytest.mark.parametrize("calibration", calibration_files(), ids=lambda p: p.name)
def test_heldout_shares_no_8_gram_with_calibration(calibration):
    shared = ngrams(heldout()) & ngrams(calibration.read_text(encoding="utf-8"))
    assert not shared, [" ".join(g) for g in sorted(shared)[:3]]


def test_the_overlap_check_finds_a_copied_sentence():
    copied = "the river that runs through the old town was once the reason the town existed at all"
    assert ngrams(heldout()) & ngrams(copied)
    assert sentences(heldout()) & sentences(copied.capitalize() + ".")


def test_at_least_32_distinct_agreement_prompts():
    lines = (DATA / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = [json.loads(line)["messages"][-1]["content"] for line in lines if line.strip()]
    assert len(prompts) >= 32
    assert len(set(prompts)) == len(prompts)
