"""Token ids to text, incrementally, at a constant cost per token; stop strings; each token's own text and bytes.

`PieceDecoder` gives the text each token adds: it decodes a short window of recent tokens (those since the
last complete character, as vLLM's and TGI's incremental detokenizers do), so a token that ends in the middle of
a multi-byte character adds "" and the token that completes the character adds all of it. The pieces joined
are exactly the decoded text; the cost per token does not grow with the output.

`IncrementalDetokenizer` releases text only when it is final: never half of a character, and never the start of
what may become a stop string (held back until it either completes, and is cut, or diverges).

`TokenBytes` gives a token's raw UTF-8 bytes (for logprobs' `bytes`), and a standalone text for alternatives:
the piece itself when it is valid UTF-8 on its own, else OpenAI's `bytes:\\xe6\\x9d` form.
"""

from __future__ import annotations

import re
from functools import lru_cache

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class PieceDecoder:
    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.window: list[int] = []  # tokens from the one before the last emitted piece onwards
        self.read = 0  # window[:read] was already turned into text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """The text this token completes ("" while a character is still incomplete)."""
        self.window.append(token_id)
        before = self._decode(self.window[: self.read])
        text = self._decode(self.window)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        # The tokens of this piece stay in the window: they give the next decode its context (leading spaces).
        self.window, self.read = self.window[self.read :], len(self.window) - self.read
        return text[len(before) :]

    def flush(self) -> str:
        """Whatever text is left at the end. Bytes of a character the output never completed are dropped, not
        shown as U+FFFD (as vLLM's detokenizer does); they stay in the last token's logprob bytes."""
        before, text = self._decode(self.window[: self.read]), self._decode(self.window)
        self.window, self.read = [], 0
        return text[len(before) :].rstrip("\ufffd")


class IncrementalDetokenizer:
    """Releasable text of a generated sequence. After `add`, `piece` is the text that token added (the text of
    its logprob entry); `finish` may add a last flushed character to it."""

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.pieces = PieceDecoder(tokenizer)
        self.stop = stop
        self.pending = ""  # decoded, not released yet: may be the start of a stop string
        self.piece = ""
        self.stopped = False

    def add(self, token_id: int, check_stop: bool = True) -> str:
        """Append a token; return the newly releasable text. Sets `stopped` when a stop string appears
        (stop strings are looked for only while `check_stop`: vLLM ignores them before `min_tokens`)."""
        self.piece = self.pieces.add(token_id)
        return self._take(self.piece, check_stop)

    def finish(self) -> str:
        """Release whatever is left (at the end of generation)."""
        if not self.stopped:
            flushed = self.pieces.flush()
            self.piece += flushed
            released = self._take(flushed, check_stop=True)
            return released + self._release(len(self.pending))
        return self._release(len(self.pending))

    def _take(self, text: str, check_stop: bool) -> str:
        if self.stopped:
            return ""
        self.pending += text
        if not check_stop or not self.stop:
            return self._release(len(self.pending))
        cut = self._stop_position()
        if cut is not None:
            self.pending, self.stopped = self.pending[:cut], True
            return self._release(cut)
        return self._release(len(self.pending) - self._held_back())

    def _stop_position(self) -> int | None:
        # Every stop string that could still appear starts inside `pending` (what might start one is held back).
        positions = [p for p in (self.pending.find(s) for s in self.stop) if p >= 0]
        return min(positions) if positions else None

    def _held_back(self) -> int:
        """Length of the longest suffix of the pending text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _release(self, upto: int) -> str:
        released, self.pending = self.pending[:upto], self.pending[upto:]
        return released


class TokenBytes:
    """Raw bytes and standalone text of vocabulary entries (byte-level BPE, SentencePiece byte fallback)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        added = tokenizer.get_added_tokens_decoder()
        self.added = {token_id: token.content for token_id, token in added.items()}
        self.special = frozenset(token_id for token_id, token in added.items() if token.special)
        self.byte_level = type(tokenizer.decoder).__name__ == "ByteLevel"
        self.bytes_of_char = {char: byte for byte, char in _byte_level_alphabet().items()}
        self.raw = lru_cache(maxsize=65536)(self._raw)

    def _raw(self, token_id: int) -> bytes:
        if token_id in self.added:
            return self.added[token_id].encode()
        piece = self.tokenizer.id_to_token(token_id) or ""
        if self.byte_level:
            return bytes(self.bytes_of_char.get(char, 0) for char in piece)
        if match := _BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(match.group(1), 16)])
        return piece.replace("\u2581", " ").encode()

    def text(self, token_id: int) -> str:
        """The token on its own: its text when its bytes are whole characters, else `bytes:\\xe6\\x9d`."""
        raw = self.raw(token_id)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters (byte-level BPE vocabularies)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars
