"""The wiki-topics task: labels read from a summary's defining first sentence, text without it."""

from __future__ import annotations

import pandas as pd

from kdlight.data.wiki_topics import TOPICS, WikiTopicDataModule, build_wiki_topics, topic_example

REST = "It is known for many things that are described in the rest of this summary at some length."


def test_topic_from_the_defining_sentence_and_text_without_it():
    text, topic = topic_example(f"Ada Lovelace was an English mathematician and writer. {REST}")
    assert topic == "person"
    assert text == REST  # the defining sentence is not in the text the model sees
    assert topic_example(f"Acer is a genus of trees and shrubs. {REST}")[1] == "organism"
    assert topic_example(f"Tuff is a type of rock made of volcanic ash. {REST}")[1] == "substance"
    assert topic_example(f"Denmark is a Nordic country in Northern Europe. {REST}")[1] == "place"


def test_the_head_noun_not_a_later_word():
    # "state" comes after the preposition "in": the head noun is "university", which names no topic
    assert (
        topic_example(f"Yale University is a private research university in New Haven, United States. {REST}") is None
    )
    # "a state of matter" is not a place
    assert topic_example(f"Gas is a state of matter with neither fixed volume nor shape. {REST}") is None
    assert topic_example(f"Texas is a state in the South Central region. {REST}")[1] == "place"


def test_left_out_without_a_topic_word_or_enough_rest():
    assert topic_example(f"Happiness is a feeling of joy. {REST}") is None
    assert topic_example("Ada Lovelace was an English mathematician. Short rest.") is None


def test_build_writes_disjoint_seeded_splits(tmp_path):
    summaries = [f"Person {i} was a French painter. {REST} Number {i}." for i in range(20)]
    summaries += [f"Town {i} is a city in France. {REST} Town number {i}." for i in range(20)]
    summaries += ["Nothing here is labelled at all. " + REST]
    counts = build_wiki_topics(summaries, tmp_path)
    assert counts == {"person": 20, "place": 20}
    splits = {s: pd.read_csv(tmp_path / f"{s}.csv") for s in ("train", "validation", "test")}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [24, 8, 8]
    texts = [set(frame["text"]) for frame in splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    again = tmp_path / "again"
    build_wiki_topics(summaries, again)
    assert pd.read_csv(again / "train.csv").equals(splits["train"])  # a pure function of the summaries and seed


def test_datamodule_builds_from_the_packaged_summaries_on_first_use(tmp_path, monkeypatch, assets):
    monkeypatch.setenv("KDLIGHT_CACHE", str(tmp_path))
    summaries = tmp_path / "wiki_summaries" / "summaries_en.txt"
    summaries.parent.mkdir(parents=True)
    lines = [f"Item {i} was a German composer. {REST} Number {i}." for i in range(10)]
    lines += [f"Item {i} is a river in Asia. {REST} River number {i}." for i in range(10)]
    summaries.write_text("\n".join(lines) + "\n")
    dm = WikiTopicDataModule(tokenizer=str(assets["tokenizer"]), max_length=32, batch_size=4)
    assert dm.label_names == list(TOPICS) and dm.num_labels == 6
    dm.setup("fit")
    assert len(dm.splits[dm.train_split]) == 12
