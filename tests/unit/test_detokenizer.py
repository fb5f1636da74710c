"""Incremental detokenization and stop strings, with a small byte-level BPE tokenizer (the kind SmolLM2 uses)
trained here on ASCII text: accented letters, CJK and emoji then span several tokens each, as rare characters
do in the real vocabulary."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from serving.engines.detokenizer import IncrementalDetokenizer

TRAINING_TEXT = ["one two three four five the story ends here and there", "hello world, a naive cafe"] * 20
VOCABULARY_SIZE = 300  # the 256 bytes and a few merges: multi-byte characters stay split into bytes


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCABULARY_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    return tokenizer


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
