"""The TF-IDF + logistic regression reference and the margin a student keeps."""

import math

import pytest

from kdlight.baseline import margin_kept, tfidf_baseline
from kdlight.errors import KDLightError

pytest.importorskip("sklearn")


def _split(words_by_label: dict[int, list[str]], repeat: int) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for i in range(repeat):
        for label, words in words_by_label.items():
            texts.append(f"{words[i % len(words)]} filler{i % 7} common words")
            labels.append(label)
    return texts, labels


def test_baseline_learns_a_word_cue_and_picks_settings_on_validation():
    cues = {0: ["awful", "dull", "bad"], 1: ["great", "superb", "good"]}
    result = tfidf_baseline(_split(cues, 30), _split(cues, 9), _split(cues, 12))
    assert result.test_score == 1.0
    assert result.val_score == 1.0
    assert result.train_rows == 60
    # with cues absent from the test split, the baseline is at chance, not perfect
    unseen = {0: ["grim"], 1: ["fine"]}
    assert tfidf_baseline(_split(cues, 30), _split(cues, 9), _split(unseen, 12)).test_score == 0.5


def test_baseline_choice_depends_on_validation_not_test():
    cues = {0: ["awful", "dull"], 1: ["great", "superb"]}
    train, val = _split(cues, 20), _split(cues, 6)
    flipped_test = (_split(cues, 6)[0], [1 - y for y in _split(cues, 6)[1]])
    a = tfidf_baseline(train, val, _split(cues, 6))
    b = tfidf_baseline(train, val, flipped_test)
    assert (a.C, a.ngram_range) == (b.C, b.ngram_range)  # same choice whatever the test labels
    assert a.test_score == 1.0 and b.test_score == 0.0


def test_margin_kept():
    assert margin_kept(0.7592, 0.8141, 0.737) == pytest.approx((0.7592 - 0.737) / (0.8141 - 0.737))
    assert margin_kept(0.81, 0.81, 0.70) == 1.0
    assert margin_kept(0.65, 0.81, 0.70) < 0
    assert math.isnan(margin_kept(0.7, 0.69, 0.70))  # no margin to keep


def test_one_class_is_an_error():
    with pytest.raises(KDLightError, match="2 classes"):
        tfidf_baseline((["a", "b"], [0, 0]), (["a"], [0]), (["b"], [0]))
