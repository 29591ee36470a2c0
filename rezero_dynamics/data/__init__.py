"""Data sets: the embedded text corpus, enwik8, scikit-learn's digits and CIFAR-10.

Nothing is downloaded: enwik8 and CIFAR-10 load from paths the user gives.
"""

from .enwik8 import ByteVocabulary, load_enwik8
from .images import ImageDataset, load_cifar10, load_digits
from .text import CharCorpus, CharVocabulary, default_corpus, text_windows

__all__ = [
    "ByteVocabulary",
    "CharCorpus",
    "CharVocabulary",
    "ImageDataset",
    "default_corpus",
    "load_cifar10",
    "load_digits",
    "load_enwik8",
    "text_windows",
]
