"""OutOfDomainCorpus and ZeroShotDataModule: cleaning, shaping, caching, and no task training data."""

import json
import random

import pytest

from conftest import FILLER, sentence, wikitext_lines, write_csv
from kdlight.data import OutOfDomainCorpus, TextClassificationDataModule, ZeroShotDataModule
from kdlight.data.corpus import clean_paragraph, shape_examples, split_sentences
from kdlight.errors import KDLightError


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text("\n".join(wikitext_lines()) + "\n")
    return path


def corpus(path, tmp_path, assets, **kwargs):
    kwargs.setdefault("max_length", 32)
    return OutOfDomainCorpus(
        source=str(path), tokenizer=str(assets["tokenizer"]), cache_dir=str(tmp_path / "cache"), **kwargs
    )


def test_cleaning_drops_headings_and_blank_lines_and_unescapes_wikitext():
    assert clean_paragraph(" = Valkyria Chronicles = ") is None
    assert clean_paragraph(" = = Gameplay = = ") is None
    assert clean_paragraph("   ") is None
    assert (
        clean_paragraph(" A well @-@ known game , 1 @,@ 000 units at 2 @.@ 5 . ")
        == "A well-known game , 1,000 units at 2.5 ."
    )
    assert split_sentences("It rained. Then it stopped! Is it over? yes.", min_words=2) == [
        "It rained.",
        "Then it stopped!",
        "Is it over? yes.",
    ]
    assert split_sentences("Too short. This sentence is long enough.", min_words=3) == ["This sentence is long enough."]


def test_examples_are_length_matched_and_pairs_come_from_one_paragraph():
    paragraph = " ".join(f"Sentence number {i} has exactly six words." for i in range(40))
    singles = list(shape_examples([paragraph], pair=False, max_length=64, min_words=3, seed=0))
    lengths = [len(text.split()) for text, _ in singles]
    budget = int((64 - 2) / 1.3)
    assert all(pair is None for _, pair in singles)
    assert max(lengths) <= budget and len(set(lengths)) > 2  # varied lengths, none beyond the task's budget
    assert " ".join(text for text, _ in singles) == paragraph  # nothing lost, order kept
    pairs = list(
        shape_examples([paragraph, "One lonely sentence here."], pair=True, max_length=64, min_words=3, seed=0)
    )
    assert pairs and all(second for _, second in pairs)
    assert all(first in paragraph and second in paragraph for first, second in pairs)
    assert all(len(first.split()) <= budget // 2 + 6 for first, _ in pairs)


def test_corpus_is_tokenised_shuffled_by_seed_and_cached(corpus_file, tmp_path, assets):
    first = corpus(corpus_file, tmp_path, assets, seed=3)
    built = first.build()
    assert set(built.column_names) >= {"input_ids", "attention_mask", "idx"} and "labels" not in built.column_names
    assert built["idx"] == list(range(len(built))) and len(built) > 40
    assert max(len(ids) for ids in built["input_ids"]) <= 32
    texts = first.texts(built, limit=len(built))
    assert not any("document" in t or "section" in t for t in texts)  # headings are gone
    paragraphs = list(first.paragraphs())
    assert any("well-known" in p for p in paragraphs) and not any("@" in p or p.startswith("=") for p in paragraphs)
    again = corpus(corpus_file, tmp_path, assets, seed=3)
    assert again.cache_path() == first.cache_path() and again.build()["input_ids"] == built["input_ids"]
    other = corpus(corpus_file, tmp_path, assets, seed=4)
    assert other.cache_path() != first.cache_path()

    def tokens(dataset):
        return sorted(t for ids in dataset["input_ids"] for t in ids if t > 4)

    assert tokens(other.build()) == tokens(built)  # the same text, nothing truncated ...
    assert other.build()["input_ids"] != built["input_ids"]  # ... cut and ordered another way
    assert corpus(corpus_file, tmp_path, assets, seed=3, max_length=16).cache_path() != first.cache_path()
    capped = corpus(corpus_file, tmp_path, assets, seed=3, num_examples=10).build()
    assert len(capped) == 10


def test_jsonl_source_and_clear_errors(tmp_path, assets):
    rng = random.Random(1)
    records = [{"body": " ".join(sentence(1, rng).capitalize() + "." for _ in range(3))} for _ in range(20)]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    assert len(corpus(path, tmp_path, assets, text_field="body").build()) >= 20
    with pytest.raises(KDLightError, match="records need a 'text' field; set text_field"):
        corpus(path, tmp_path, assets).build()
    with pytest.raises(KDLightError, match="neither wikitext-103.*nor an existing local file"):
        corpus(tmp_path / "missing.txt", tmp_path, assets).build()
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(KDLightError, match="corpus file is empty"):
        corpus(tmp_path / "empty.txt", tmp_path, assets).build()
    (tmp_path / "shards").mkdir()
    with pytest.raises(KDLightError, match="holds no .txt"):
        corpus(tmp_path / "shards", tmp_path, assets).build()
    (tmp_path / "headings.txt").write_text(" = Only = \n\n = Headings = \n")
    with pytest.raises(KDLightError, match="gave no examples"):
        corpus(tmp_path / "headings.txt", tmp_path, assets).build()


def pair_task_files(tmp_path):
    rng = random.Random(5)

    def rows(n):
        return [
            {
                "premise": sentence(1, rng),
                "hypothesis": " ".join(rng.choice(FILLER) for _ in range(4)),
                "label": rng.choice(["entailment", "contradiction"]),
            }
            for _ in range(n)
        ]

    return {split: write_csv(tmp_path / f"{split}.csv", rows(12)) for split in ("train", "validation", "test")}


def test_zero_shot_batches_come_from_the_corpus_and_evaluation_from_the_task(corpus_file, tmp_path, assets):
    files = pair_task_files(tmp_path)
    task = TextClassificationDataModule(
        val_file=str(files["validation"]),
        test_file=str(files["test"]),
        text_column="premise",
        text_pair_column="hypothesis",
        label_names=["contradiction", "entailment"],
    )
    dm = ZeroShotDataModule(
        task=task,
        corpus=OutOfDomainCorpus(source=str(corpus_file), cache_dir=str(tmp_path / "cache")),
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=4,
    )
    assert (dm.num_labels, dm.label_names, dm.metric) == (2, ["contradiction", "entailment"], "accuracy")
    assert dm.corpus.pair and dm.corpus.max_length == 32  # the task's shape is passed on
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert "labels" not in batch and batch["input_ids"].shape[0] == 4
    assert (batch["token_type_ids"] == 1).any()  # sentence pairs for a pair task
    val = next(iter(dm.val_dataloader()))
    assert "labels" in val and len(dm.splits["validation"]) == 12
    with pytest.raises(KDLightError, match="never reads the task's training split"):
        dm.load_split("train")


def test_single_sentence_task_gets_single_sentences(corpus_file, tmp_path, assets):
    d = assets["data"]
    task = TextClassificationDataModule(
        val_file=str(d / "validation.csv"), test_file=str(d / "test.csv"), label_names=["negative", "positive"]
    )
    dm = ZeroShotDataModule(
        task=task,
        corpus=OutOfDomainCorpus(source=str(corpus_file), cache_dir=str(tmp_path / "cache")),
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=4,
        max_train_examples=7,
    )
    dm.setup("fit")
    assert len(dm.splits["out_of_domain"]) == 7
    batch = next(iter(dm.train_dataloader()))
    assert not (batch["token_type_ids"] == 1).any()
