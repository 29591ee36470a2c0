"""Data sets: the embedded text corpus (more loaders arrive with training)."""

from .text import CharCorpus, CharVocabulary, default_corpus, text_windows

__all__ = ["CharCorpus", "CharVocabulary", "default_corpus", "text_windows"]
