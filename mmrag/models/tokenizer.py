"""An offline, reversible word-level tokenizer.

LightRAG's default tokenizer (tiktoken) downloads its vocabulary at run time, which fails offline.
Token budgets only need counts close to a BPE tokenizer's and exact round-trips, so pieces are
words and punctuation with their leading whitespace, interned to ids per process.
"""

from __future__ import annotations

import re
import threading

_PIECE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+", re.UNICODE)


class WordTokenizer:
    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []
        self._lock = threading.Lock()

    def pieces(self, text: str) -> list[str]:
        return _PIECE.findall(text)

    def encode(self, text: str) -> list[int]:
        out = []
        with self._lock:
            for p in _PIECE.findall(text):
                i = self._ids.get(p)
                if i is None:
                    i = self._ids[p] = len(self._pieces)
                    self._pieces.append(p)
                out.append(i)
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(self._pieces[i] for i in ids)

    def count(self, text: str) -> int:
        return len(_PIECE.findall(text))


TOKENIZER = WordTokenizer()
