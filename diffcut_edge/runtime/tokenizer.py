"""CLIP's byte-level BPE tokenizer without torch: text -> (N, 77) int64 token ids.

Reproduces open_clip's default ``SimpleTokenizer`` (the one CLIP was trained with): text
cleaned (ftfy when installed, HTML entities unescaped twice, whitespace collapsed), lowercased,
split with CLIP's word pattern, each word's UTF-8 bytes mapped to printable characters and
merged by rank with the 48 894 merges of ``bpe_simple_vocab_16e6.txt.gz`` (copied into the model
folder by ``export-vocab``); ``<start_of_text>`` + ids + ``<end_of_text>``, truncated to the
context length with the end token kept, zero-padded. Tested token for token against open_clip.

Without ftfy, text that needs its mojibake repair tokenizes differently; plain class names do not.
"""

from __future__ import annotations

import gzip
import html
import os
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from diffcut_edge.errors import DiffCutError

SOT, EOT = "<start_of_text>", "<end_of_text>"
NUM_MERGES = 49152 - 256 - 2
MAX_BPE_BYTES = 8 << 20  # the real file inflates to 1.3 MiB
CONTEXT_LENGTH = 77


@lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    """Each byte -> a printable character: printable Latin-1 bytes stand for themselves, the rest
    (control characters, space, a few others) are moved to code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    # Insertion order matters: it is the order of the first 256 vocabulary entries.
    table = {b: chr(b) for b in printable}
    for extra, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + extra)
    return table


def _clean(text: str) -> str:
    try:
        import ftfy  # optional: open_clip's own cleaning step

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _word_pattern():
    try:
        import regex
    except ImportError as e:  # a base dependency; say so if an environment lacks it
        raise DiffCutError("the CLIP tokenizer needs the `regex` package (pip install regex)") from e
    return regex.compile(
        rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE
    )


class ClipTokenizer:
    """``ClipTokenizer(path_to_bpe_gz)(["a photo of a cat."])`` -> (1, 77) int64."""

    def __init__(self, bpe_path: str | os.PathLike, context_length: int = CONTEXT_LENGTH) -> None:
        path = Path(bpe_path)
        try:
            with gzip.open(path, "rb") as f:
                data = f.read(MAX_BPE_BYTES + 1)  # bounded: a small gzip may inflate to gigabytes
            if len(data) > MAX_BPE_BYTES:
                raise DiffCutError(
                    f"{path}: inflates past {MAX_BPE_BYTES >> 20} MiB, CLIP's BPE vocabulary is "
                    f"1.3 MiB; re-run export-vocab"
                )
            lines = data.decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
            raise DiffCutError(f"{path}: not CLIP's BPE vocabulary ({e})") from e
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise DiffCutError(f"{path}: expected {NUM_MERGES} BPE merges, found a different file")
        chars = list(byte_to_char().values())
        vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
        self.context_length = int(context_length)
        self._pattern = _word_pattern()
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    def _bpe(self, word: str) -> list[str]:
        """One pre-tokenised word (as byte characters) -> its BPE tokens; the last ends with </w>."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        table = byte_to_char()
        ids = []
        for word in self._pattern.findall(_clean(text)):
            chars = "".join(table[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(chars))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[row, : len(ids)] = ids
        return out
