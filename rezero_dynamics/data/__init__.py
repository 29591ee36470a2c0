"""Data sets: the embedded text corpus (more loaders arrive with training)."""

from .text import CharVocabulary, default_corpus, text_windows

__all__ = ["CharVocabulary", "default_corpus", "text_windows"]
