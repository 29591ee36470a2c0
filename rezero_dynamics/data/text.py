"""The embedded default corpus and character-level encoding.

The default corpus is the English text of Python's interactive help on keywords and
topics, ``pydoc_data.topics.topics``, which ships with every CPython installation. It is
the topics joined in sorted key order with blank lines between them. With CPython 3.11.7
that is 79 topics and 464,970 characters; the size varies by Python version.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_CORPUS_NAME = "pydoc_data.topics"


def default_corpus() -> str:
    """Return the embedded default corpus text (see the module docstring)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


@dataclass(frozen=True)
class CharVocabulary:
    """A mapping between characters and token ids, ids in sorted character order."""

    characters: str

    @classmethod
    def from_text(cls, text: str) -> "CharVocabulary":
        if not text:
            raise ValueError("cannot build a vocabulary from empty text; pass a non-empty corpus")
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.characters)

    def encode(self, text: str) -> torch.Tensor:
        """Map ``text`` to a 1-D int64 tensor of ids; raises ValueError on an unknown character."""
        index = {c: i for i, c in enumerate(self.characters)}
        try:
            return torch.tensor([index[c] for c in text], dtype=torch.int64)
        except KeyError as error:
            raise ValueError(
                f"character {error.args[0]!r} is not in the vocabulary; build the vocabulary "
                f"from a text that contains it"
            ) from None

    def decode(self, ids: torch.Tensor) -> str:
        """Map a 1-D tensor of ids back to text."""
        return "".join(self.characters[i] for i in ids.tolist())


def text_windows(
    tokens: torch.Tensor, num_windows: int, length: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``num_windows`` windows of ``length`` consecutive tokens at random offsets.

    Returns an int64 tensor of shape (num_windows, length).
    """
    if length < 1 or num_windows < 1:
        raise ValueError(f"num_windows and length must be at least 1, got {num_windows} and {length}")
    if tokens.numel() < length:
        raise ValueError(
            f"the text has {tokens.numel()} tokens, fewer than the window length {length}; "
            f"use a shorter window or a longer text"
        )
    starts = torch.randint(0, tokens.numel() - length + 1, (num_windows,), generator=generator)
    return torch.stack([tokens[s : s + length] for s in starts.tolist()])


SPLIT_FRACTIONS = (0.9, 0.05, 0.05)  # train, validation, test


@dataclass(frozen=True)
class CharCorpus:
    """A character corpus split into contiguous train, validation and test token tensors."""

    vocabulary: CharVocabulary
    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    name: str

    @classmethod
    def from_text(cls, text: str, name: str = "text") -> "CharCorpus":
        """Encode ``text`` and split it 90% / 5% / 5% in order (no shuffling across splits)."""
        vocabulary = CharVocabulary.from_text(text)
        tokens = vocabulary.encode(text)
        first = int(len(tokens) * SPLIT_FRACTIONS[0])
        second = first + int(len(tokens) * SPLIT_FRACTIONS[1])
        return cls(vocabulary, tokens[:first], tokens[first:second], tokens[second:], name)

    @classmethod
    def default(cls) -> "CharCorpus":
        """Return the embedded default corpus, ``pydoc_data.topics``, split."""
        return cls.from_text(default_corpus(), DEFAULT_CORPUS_NAME)

    def split(self, name: str) -> torch.Tensor:
        """Return the tokens of split ``train``, ``validation`` or ``test``."""
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {name!r}; choose train, validation or test")
        return getattr(self, name)
