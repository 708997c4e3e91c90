import pytest

from conftest import sentiment_rows, write_csv
from kdlight.data import TextClassificationDataModule
from kdlight.errors import KDLightError


def make(assets, **kwargs):
    d = assets["data"]
    kwargs.setdefault("train_file", str(d / "train.csv"))
    kwargs.setdefault("val_file", str(d / "validation.csv"))
    kwargs.setdefault("test_file", str(d / "test.csv"))
    return TextClassificationDataModule(tokenizer=str(assets["tokenizer"]), batch_size=8, **kwargs)


def test_string_labels_are_mapped_and_batches_are_padded(assets):
    dm = make(assets)
    assert dm.label_names == ["negative", "positive"] and dm.num_labels == 2 and dm.metric == "accuracy"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels", "idx"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max()  # padded to the longest only
    assert set(batch["labels"].tolist()) <= {0, 1}
    val = dm.splits["validation"]
    assert list(val["idx"]) == list(range(len(val)))
    assert dm.state_dict()["label_names"] == ["negative", "positive"]


def test_one_file_is_split_reproducibly_without_overlap(assets, tmp_path):
    write_csv(tmp_path / "all.csv", sentiment_rows(100, seed=5))
    kwargs = dict(
        data_file=str(tmp_path / "all.csv"),
        train_file=None,
        val_file=None,
        test_file=None,
        val_fraction=0.2,
        test_fraction=0.1,
        split_seed=3,
    )
    a, b = make(assets, **kwargs), make(assets, **kwargs)
    a.setup(None), b.setup(None)
    ids = {s: list(a.splits[s]["idx"]) for s in ("train", "validation", "test")}
    assert ids == {s: list(b.splits[s]["idx"]) for s in ids}
    assert (len(ids["train"]), len(ids["validation"]), len(ids["test"])) == (70, 20, 10)
    assert sorted(ids["train"] + ids["validation"] + ids["test"]) == list(range(100))
    other = make(assets, **{**kwargs, "split_seed": 4})
    other.setup(None)
    assert list(other.splits["validation"]["idx"]) != ids["validation"]


def test_regression_and_pair_columns(assets, tmp_path):
    rows = [{"a": f"the movie {i}", "b": "good plot", "score": i / 10} for i in range(20)]
    path = write_csv(tmp_path / "reg.csv", rows)
    dm = TextClassificationDataModule(
        tokenizer=str(assets["tokenizer"]),
        data_file=str(path),
        text_column="a",
        text_pair_column="b",
        label_column="score",
        task_type="regression",
    )
    assert dm.num_labels == 1 and dm.metric == "pearson_spearman"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype.is_floating_point and "token_type_ids" in batch
    assert (batch["token_type_ids"] == 1).any()  # the pair's second segment is there


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"label_column": "sentiment"},
            "column\\(s\\) not found: label_column='sentiment'.*Available columns: text, label",
        ),
        ({"text_column": "review"}, "text_column='review'"),
        ({"label_names": ["negative", "neutral"]}, "outside the label set"),
        ({"train_file": "nowhere/train.csv"}, "data file not found"),
        ({"metric": "bleu"}, "metric must be one of accuracy, .*; got .bleu."),
        ({"task_type": "ranking"}, "task_type"),
    ],
)
def test_bad_input_gets_a_clear_error(assets, kwargs, message):
    with pytest.raises(KDLightError, match=message):  # at construction, or at the latest when the data is read
        make(assets, **kwargs).setup("fit")


def test_empty_file_and_unknown_label_in_test_split(assets, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(KDLightError, match="empty"):
        make(assets, train_file=str(tmp_path / "empty.csv"))
    rows = sentiment_rows(8, seed=9)
    rows[3]["label"] = "meh"
    dm = make(assets, test_file=str(write_csv(tmp_path / "test.csv", rows)))
    with pytest.raises(KDLightError, match="'meh'.*outside the label set"):
        dm.setup("test")


def test_supported_formats_load_the_same_rows(assets, tmp_path):
    import pandas as pd

    frame = pd.read_csv(assets["data"] / "train.csv")
    frame.to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "train.parquet")
    frame.to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    texts = set()
    for name in ("train.jsonl", "train.parquet", "train.tsv"):
        dm = make(assets, train_file=str(tmp_path / name))
        dm.setup("fit")
        texts.add(tuple(dm.splits["train"]["labels"]))
    assert len(texts) == 1
    with pytest.raises(KDLightError, match="unsupported file type"):
        (tmp_path / "train.xlsx").write_text("x")
        make(assets, train_file=str(tmp_path / "train.xlsx"))
