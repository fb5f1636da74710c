"""A tokenizer for Ray-free unit tests: SmolLM2's own tokenizer.json when the models folder has it, otherwise a small
byte-level BPE (the kind SmolLM2 uses) trained here on JSON-like text, with SmolLM2's special tokens at its ids."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tests.helpers import REPO

SMOLLM2_TOKENIZER = REPO / "models" / "smollm2-135m" / "base" / "tokenizer.json"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2, as in SmolLM2
END_OF_SEQUENCE = "<|im_end|>"
TRAINING_TEXT = [
    '{"name": "Ada", "age": 36, "tags": ["math", "engines"], "address": {"city": "London", "zip": "N1"}}',
    '<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n]</tool_call>',
    "The weather in Paris is sunny, and the story ends here. true false null 0123456789 -+.eE",
] * 20
VOCABULARY_SIZE = 400


def unit_tokenizer() -> Tokenizer:
    if SMOLLM2_TOKENIZER.is_file():
        return Tokenizer.from_file(str(SMOLLM2_TOKENIZER))
    return trained_tokenizer()


def trained_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCABULARY_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    return tokenizer
