"""Incremental detokenization and stop strings, with the embedded model's real tokenizer."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from serving.engines.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tokenizer(built_models: Path) -> Tokenizer:
    return Tokenizer.from_file(str(built_models / "smollm2-135m" / "onnx-int4" / "tokenizer.json"))


def stream(tokenizer, text: str, stop: tuple[str, ...]) -> tuple[list[str], IncrementalDetokenizer]:
    detokenizer = IncrementalDetokenizer(tokenizer, stop)
    pieces = []
    for token in tokenizer.encode(text, add_special_tokens=False).ids:
        pieces.append(detokenizer.add(token))
        if detokenizer.stopped:
            break
    pieces.append(detokenizer.finish())
    return pieces, detokenizer


def test_pieces_add_up_to_the_decoded_text(tokenizer):
    text = "Héllo wörld — naïve café, 東京 and emoji 🙂 too."
    pieces, _ = stream(tokenizer, text, ())
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_a_stop_string_split_across_tokens_is_never_released(tokenizer):
    pieces, detokenizer = stream(tokenizer, "one two three END four five", ("END",))
    assert detokenizer.stopped
    assert "".join(pieces) == "one two three "
    assert not any("E" in piece for piece in pieces)


def test_a_partial_match_that_diverges_is_released(tokenizer):
    pieces, detokenizer = stream(tokenizer, "the ENDLESS story ends", ("END.",))
    assert not detokenizer.stopped
    assert "".join(pieces) == "the ENDLESS story ends"
