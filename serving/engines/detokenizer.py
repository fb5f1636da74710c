"""Incremental detokenization with stop strings.

Text is released only when it is final: never half of a multi-byte character, and never the start of
what may become a stop string (held back until it either completes, and is cut, or diverges).
"""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.token_ids: list[int] = []
        self.text = ""  # everything decoded so far (up to a stop string, once one is found)
        self.released = 0  # characters of self.text already handed out
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Append a token; return the newly releasable text. Sets `stopped` when a stop string appears."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        self.text = text
        cut = self._stop_position()
        if cut is not None:
            self.text, self.stopped = text[:cut], True
            return self._release(len(self.text))
        return self._release(len(text) - self._held_back(text))

    def finish(self) -> str:
        """Release whatever is left (at the end of generation)."""
        return self._release(len(self.text))

    def _stop_position(self) -> int | None:
        search_from = max(0, self.released - max((len(s) for s in self.stop), default=0))
        positions = [p for p in (self.text.find(s, search_from) for s in self.stop) if p >= 0]
        return min(positions) if positions else None

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _release(self, upto: int) -> str:
        upto = max(upto, self.released)
        delta, self.released = self.text[self.released : upto], upto
        return delta
