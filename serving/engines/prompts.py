"""What turns a request into prompt tokens, the same for every backend: the model's own chat template and its
tokenizer (the `tokenizers` library on the folder's tokenizer.json), so every backend sees the same tokens."""

from __future__ import annotations

from pathlib import Path

from serving.engines.chat_template import ChatTemplate


class PromptEncoder:
    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.chat_template = ChatTemplate.from_folder(folder)

    def render_chat(self, messages: list[dict]) -> str:
        return self.chat_template.render(messages)

    def encode(self, text: str) -> list[int]:
        """Token ids of already templated text (no special tokens added)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids
