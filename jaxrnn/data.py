"""Text to ids and ids to training arrays: vocabularies, windows, TBPTT streams.

Everything here is numpy and deterministic: the same text gives the same ids
on every run (vocabularies are sorted, unlike the course's ``list(set(text))``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Vocab:
    """A sorted token list with ``encode``/``decode``.

    ``separator`` joins decoded tokens: ``''`` for characters, ``' '`` for words.
    """

    tokens: tuple[str, ...]
    separator: str = ""
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("Vocab: tokens must be unique.")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def from_chars(cls, text: str) -> Vocab:
        """Character vocabulary: the sorted distinct characters of ``text``."""
        return cls(tuple(sorted(set(text))), separator="")

    @classmethod
    def from_words(cls, words: Iterable[str], extra: Sequence[str] = ()) -> Vocab:
        """Word vocabulary: sorted distinct ``words`` plus ``extra`` tokens (e.g. ``'<eos>'``)."""
        return cls(tuple(sorted(set(words) | set(extra))), separator=" ")

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: str | Sequence[str]) -> np.ndarray:
        """Characters of a string (char vocab) or a sequence of tokens -> ``(L,)`` int32 ids."""
        if isinstance(tokens, str) and self.separator:
            tokens = tokens.split(self.separator)
        try:
            return np.array([self._index[t] for t in tokens], dtype=np.int32)
        except KeyError as e:
            raise KeyError(f"Vocab.encode: token {e.args[0]!r} is not in the vocabulary of {len(self)}.") from None

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text, tokens joined by ``separator``."""
        return self.separator.join(self.tokens[int(i)] for i in np.asarray(ids).reshape(-1))


def sliding_windows(ids: np.ndarray, length: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The course's windows: ``x[i] = s[i : i+length]``, ``y[i] = s[i+1 : i+length+1]``.

    Returns ``x, y`` of shape ``(num_windows, length)``.
    """
    ids = np.asarray(ids)
    if length < 1 or len(ids) < length + 1:
        raise ValueError(f"sliding_windows: need length >= 1 and at least length+1 ids, got {length} and {len(ids)}.")
    starts = np.arange(0, len(ids) - length, stride)
    index = starts[:, None] + np.arange(length)[None, :]
    return ids[index], ids[index + 1]


def contiguous_streams(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Splits a corpus into ``batch_size`` contiguous streams: ``(batch_size, T)``.

    Stream ``b`` is ``ids[b*T : (b+1)*T]``; the tail that does not fill a row is
    dropped (as in the PyTorch word-language-model example and Zaremba et al.).
    """
    ids = np.asarray(ids)
    steps = len(ids) // batch_size
    if steps < 2:
        raise ValueError(f"contiguous_streams: {len(ids)} ids are too few for {batch_size} streams.")
    return ids[: steps * batch_size].reshape(batch_size, steps)


def bptt_batches(streams: np.ndarray, bptt: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive chunks of ``streams`` ``(B, T)`` for truncated BPTT.

    Yields ``x, y`` of shape ``(B, l)`` with ``y`` the next token, ``l = bptt``
    except possibly the last chunk; chunk ``k+1`` continues each stream where
    chunk ``k`` ended, so the hidden state can be carried across.
    """
    total = streams.shape[1] - 1
    for start in range(0, total, bptt):
        end = min(start + bptt, total)
        yield streams[:, start:end], streams[:, start + 1 : end + 1]


def num_bptt_batches(streams: np.ndarray, bptt: int) -> int:
    """How many chunks :func:`bptt_batches` yields."""
    return -(-(streams.shape[1] - 1) // bptt)
