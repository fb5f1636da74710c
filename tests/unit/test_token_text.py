"""Each token's own text and bytes (for logprobs), the constant cost of incremental detokenization, and prompt
logprobs, with a small byte-level BPE tokenizer trained here (multi-byte characters span several tokens).

These fail on the code before this change: logprob tokens were vocabulary strings ("Ġthe"), the detokenizer
decoded the whole output at every token, and there were no prompt logprobs."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from serving.engines.detokenizer import IncrementalDetokenizer, PieceDecoder, TokenBytes
from serving.engines.logprobs import LogprobWriter, log_normalizers, top_ids

TRAINING_TEXT = ["one two three four five the story ends here and there", "hello world, a naive cafe"] * 20
TEXT = "Héllo wörld — naïve café, 東京 and emoji 🙂 too.\nthe end"
END = "<|end|>"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    tokenizer.add_special_tokens([END])
    return tokenizer


class CountingTokenizer:
    """The tokenizer, recording how many ids each decode call was given."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer, self.sizes = tokenizer, []

    def decode(self, ids, skip_special_tokens=True):
        self.sizes.append(len(ids))
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_pieces_spell_the_text_and_a_split_character_comes_whole_with_its_last_token(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False).ids
    pieces = PieceDecoder(tokenizer)
    texts = [pieces.add(token) for token in ids]
    assert "".join(texts) + pieces.flush() == TEXT
    assert "" in texts and "東" in texts  # 東 spans several tokens: "" first, then the whole character
    assert all("\ufffd" not in text for text in texts)


def test_token_bytes_join_to_the_utf8_and_a_partial_character_reads_as_bytes(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False).ids
    token_bytes = TokenBytes(tokenizer)
    assert b"".join(token_bytes.raw(token) for token in ids) == TEXT.encode()
    partial = next(token for token in ids if token_bytes.raw(token) and token_bytes.raw(token)[0] >= 0xE0)
    assert token_bytes.text(partial).startswith("bytes:\\x")
    space_the = tokenizer.encode(" the", add_special_tokens=False).ids
    assert [token_bytes.text(t) for t in space_the] == [tokenizer.decode([t]) for t in space_the]
    assert "".join(token_bytes.text(t) for t in space_the) == " the"


def test_detokenizing_costs_the_same_for_every_token_however_long_the_output(tokenizer):
    counting = CountingTokenizer(tokenizer)
    detokenizer = IncrementalDetokenizer(counting, ("STOP",))
    ids = tokenizer.encode(TEXT * 40, add_special_tokens=False).ids
    released = "".join(detokenizer.add(token) for token in ids) + detokenizer.finish()
    assert released == TEXT * 40
    assert len(ids) > 1000 and max(counting.sizes) <= 8


def test_stop_strings_are_ignored_until_min_tokens_then_cut(tokenizer):
    detokenizer = IncrementalDetokenizer(tokenizer, ("two",))
    ids = tokenizer.encode("one two three two four", add_special_tokens=False).ids
    released = ""
    for position, token in enumerate(ids):
        released += detokenizer.add(token, check_stop=position >= 3)
        if detokenizer.stopped:
            break
    released += detokenizer.finish()
    assert released == "one two three "


def test_the_end_of_sequence_token_adds_no_text(tokenizer):
    detokenizer = IncrementalDetokenizer(tokenizer, ())
    for token in tokenizer.encode("the end", add_special_tokens=False).ids:
        detokenizer.add(token)
    assert detokenizer.add(tokenizer.token_to_id(END)) == "" and detokenizer.piece == ""


def test_log_normalizers_and_top_ids_match_a_full_sort():
    logits = np.random.default_rng(0).normal(0, 3, (4, 1000)).astype(np.float32)
    reference = np.log(np.exp(logits.astype(np.float64)).sum(axis=1))
    assert np.allclose(log_normalizers(logits), reference, atol=1e-5)
    assert list(top_ids(logits[0], 5)) == list(np.argsort(-logits[0])[:5])


def test_prompt_logprobs_spell_the_prompt_and_score_each_token_given_the_ones_before(tokenizer):
    prompt = f"{END}the story 東京"
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    logits = np.random.default_rng(1).normal(0, 2, (len(ids), tokenizer.get_vocab_size())).astype(np.float32)
    entries = LogprobWriter(tokenizer, TokenBytes(tokenizer)).prompt(logits, ids, alternatives=2)
    assert "".join(e.token for e in entries) == prompt
    assert entries[0].logprob is None and entries[0].token == END
    row = logits[2].astype(np.float64)
    assert entries[3].logprob == pytest.approx(row[ids[3]] - np.log(np.exp(row).sum()), abs=1e-4)
    assert len(entries[3].top) == 2 and entries[3].top[0][1] >= entries[3].top[1][1]
    assert b"".join(e.token_bytes for e in entries) == prompt.encode()


def test_a_generated_special_token_is_named_in_its_entry_as_among_the_alternatives(tokenizer):
    """The end token adds nothing to the output text, but its logprob entry says `<|end|>` (as vLLM's does), so the
    chosen token and the same token among the alternatives read alike."""
    end = tokenizer.token_to_id(END)
    row = np.full(tokenizer.get_vocab_size(), -5.0, np.float32)
    row[end] = 5.0
    entry = LogprobWriter(tokenizer, TokenBytes(tokenizer)).generated(row, end, "", alternatives=2)
    assert entry.token == END == entry.top[0][0] and entry.token_bytes == END.encode()
    assert entry.logprob == pytest.approx(entry.top[0][1])
