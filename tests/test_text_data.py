import pytest
import torch

from rezero_dynamics.data import CharVocabulary, default_corpus, text_windows


def test_default_corpus_is_real_text():
    text = default_corpus()
    assert len(text) > 300_000
    assert "for" in text
    assert "while" in text


def test_vocabulary_round_trip():
    vocabulary = CharVocabulary.from_text("hello world")
    ids = vocabulary.encode("low")
    assert vocabulary.decode(ids) == "low"
    assert len(vocabulary) == len(set("hello world"))


def test_vocabulary_unknown_character():
    with pytest.raises(ValueError, match=r"character 'z' is not in the vocabulary"):
        CharVocabulary.from_text("abc").encode("abz")


def test_vocabulary_from_empty_text():
    with pytest.raises(ValueError, match="empty text"):
        CharVocabulary.from_text("")


def test_windows_are_consecutive_tokens():
    tokens = torch.arange(100)
    windows = text_windows(tokens, 5, 7, torch.Generator().manual_seed(0))
    assert windows.shape == (5, 7)
    assert torch.all(windows[:, 1:] - windows[:, :-1] == 1)


def test_window_longer_than_text():
    with pytest.raises(ValueError, match="fewer than the window length 20"):
        text_windows(torch.arange(10), 1, 20)
