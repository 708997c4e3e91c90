"""Bad data a user actually hits, and the data-side promises of issue 11.

* missing text or labels stop with a count and line numbers, or are dropped on request (defect 9);
* integer labels map by their observed values, the same way in every split (defect 10);
* every kind of bad data file or data argument exits with one clear line (defect 13);
* ``predict`` runs on a file without labels and keeps its order (defect 14).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from conftest import data_args, expect_user_error, sentiment_rows, tiny_config, trainer_args, write_csv
from kdlight.data import TextClassificationDataModule
from kdlight.errors import KDLightError


def make(assets, **kwargs) -> TextClassificationDataModule:
    d = assets["data"]
    if not {"data_file", "predict_file"} & set(kwargs):
        kwargs.setdefault("train_file", str(d / "train.csv"))
        kwargs.setdefault("val_file", str(d / "validation.csv"))
    kwargs = {"tokenizer": str(assets["tokenizer"]), "batch_size": 4, "max_length": 32, **kwargs}
    return TextClassificationDataModule(**kwargs)


def rows_with(n: int, seed: int, **cells) -> list[dict]:
    """Sentiment rows whose row ``i`` gets ``cells[column][i]`` where given (``None`` writes an empty cell)."""
    rows = sentiment_rows(n, seed)
    for column, values in cells.items():
        for i, value in values.items():
            rows[i][column] = value
    return rows


# --------------------------------------------------------------------------- defect 9: missing text
def test_empty_csv_cells_stop_with_count_and_file_lines(assets, tmp_path):
    train = write_csv(tmp_path / "train.csv", rows_with(12, 1, text={1: None, 5: "   "}, label={8: None}))
    with pytest.raises(
        KDLightError,
        match=r"3 of 12 rows .*text in column 'text' \(2\).*label in column 'label' \(1\)"
        r".*lines 3, 7, 10.*drop_missing",
    ) as err:
        make(assets, train_file=str(train)).setup("fit")
    assert "\n" not in str(err.value)


def test_line_numbers_count_the_header_and_multiline_cells(assets, tmp_path):
    rows = rows_with(6, 2, text={0: "a good\nmovie", 3: None})
    train = write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(KDLightError, match=r"1 of 6 rows.* line 6\b"):  # row 3 starts on line 6: header, 2-line row 0
        make(assets, train_file=str(train)).setup("fit")


def test_jsonl_rows_without_the_text_or_pair_key_are_reported_by_row(assets, tmp_path):
    import json

    lines = [
        {"text": "a good movie", "other": "the plot", "label": "positive"},
        {"label": "negative", "other": "a film"},
        {"text": "a bad movie", "label": "negative"},
        {"text": "a fine film", "other": "", "label": "positive"},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(
        KDLightError,
        match=r"3 of 4 rows .*text in column 'text' \(1\).*text_pair in column 'other' \(2\).*rows 2, 3, 4",
    ):
        make(assets, train_file=str(path), text_pair_column="other").setup("fit")


def test_drop_missing_drops_the_rows_and_says_how_many(assets, tmp_path, caplog):
    train = write_csv(tmp_path / "train.csv", rows_with(12, 1, text={1: None}, label={8: None}))
    val = write_csv(tmp_path / "validation.csv", rows_with(6, 2, text={0: ""}))
    dm = make(assets, train_file=str(train), val_file=str(val), drop_missing=True)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert len(dm.splits["train"]) == 10 and len(dm.splits["validation"]) == 5
    assert 1 not in dm.splits["train"]["idx"] and 8 not in dm.splits["train"]["idx"]  # ids stay the rows' positions
    assert max(dm.splits["train"]["idx"]) == 11
    messages = [r.getMessage() for r in caplog.records]
    assert any("[kdlight] dropped 2 of 12 rows" in m and "train.csv" in m for m in messages), messages
    assert any("[kdlight] dropped 1 of 6 rows" in m for m in messages), messages
    assert "None" not in dm.load_split("train")["text"]  # no literal 'None' is trained on


def test_literal_words_like_none_or_na_are_text_not_missing(assets, tmp_path):
    train = write_csv(tmp_path / "train.csv", rows_with(8, 1, text={0: "None", 1: "NA"}, label={2: "N/A"}))
    dm = make(assets, train_file=str(train), label_names=["N/A", "negative", "positive"])
    dm.setup("fit")
    assert len(dm.splits["train"]) == 8 and dm.splits["train"]["labels"][2] == 0


# ---------------------------------------------------------------------- defect 10: integer labels
def int_label_files(tmp_path, train_labels, val_labels):
    import random

    from conftest import sentence

    rng = random.Random(0)
    train = write_csv(tmp_path / "train.csv", [{"text": sentence(y % 2, rng), "label": y} for y in train_labels])
    val = write_csv(tmp_path / "validation.csv", [{"text": sentence(y % 2, rng), "label": y} for y in val_labels])
    return str(train), str(val)


def test_integer_labels_one_to_k_are_k_classes_mapped_by_sorted_value(assets, tmp_path, caplog):
    train, val = int_label_files(tmp_path, [3, 1, 2, 10, 2, 1], [10, 1])
    with caplog.at_level(logging.INFO):
        dm = make(assets, train_file=train, val_file=val)
    assert dm.label_names == ["1", "2", "3", "10"] and dm.num_labels == 4  # numeric order, no phantom class 0
    assert any("1->0, 2->1, 3->2, 10->3" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    dm.setup("fit")
    assert dm.splits["train"]["labels"] == [2, 0, 1, 3, 1, 0]
    assert dm.splits["validation"]["labels"] == [3, 0]  # the same mapping in every split


def test_integer_label_unseen_in_training_is_an_error_naming_label_names(assets, tmp_path):
    train, val = int_label_files(tmp_path, [1, 2, 1, 2], [2, 3])
    dm = make(assets, train_file=train, val_file=val)
    with pytest.raises(KDLightError, match=r"validation.csv.*\['3'\].*outside the label set \['1', '2'\].*label_names"):
        dm.setup("fit")


def test_integer_labels_are_ids_into_given_string_names(assets, tmp_path, caplog):
    train, val = int_label_files(tmp_path, [0, 1, 1, 0], [1, 0])
    dm = make(assets, train_file=train, val_file=val, label_names=["neg", "pos"])
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert dm.splits["train"]["labels"] == [0, 1, 1, 0] and dm.splits["validation"]["labels"] == [1, 0]
    assert any("ids into label_names" in r.getMessage() for r in caplog.records)
    train, val = int_label_files(tmp_path, [0, 1, 2], [1])
    with pytest.raises(KDLightError, match=r"\['2'\].*outside the label set \['neg', 'pos'\]"):
        make(assets, train_file=train, val_file=val, label_names=["neg", "pos"]).setup("fit")


def test_integer_labels_match_numeric_label_names_by_value(assets, tmp_path):
    train, val = int_label_files(tmp_path, [1, 2, 3, 1], [3])
    dm = make(assets, train_file=train, val_file=val, label_names=["3", "2", "1"])
    dm.setup("fit")
    assert dm.splits["train"]["labels"] == [2, 1, 0, 2] and dm.splits["validation"]["labels"] == [0]


def test_integer_labels_with_empty_cells_stay_integers_when_dropped(assets, tmp_path):
    train, val = int_label_files(tmp_path, [1, 2, 1, 2], [2, 1])
    with Path(train).open() as handle:
        rows = list(csv.DictReader(handle))
    rows[2]["label"] = ""  # pandas now reads the column as floats 1.0, 2.0, NaN
    write_csv(Path(train), rows)
    dm = make(assets, train_file=train, val_file=val, drop_missing=True)
    assert dm.label_names == ["1", "2"]
    dm.setup("fit")
    assert dm.splits["train"]["labels"] == [0, 1, 1] and dm.splits["validation"]["labels"] == [1, 0]


# ------------------------------------------------------------------ defect 13: bad data, one line
def _csv(text: str) -> bytes:
    return text.encode()


TRAIN = "text,label\n" + "".join(
    f"{w} movie,{'positive' if i % 2 else 'negative'}\n"
    for i, w in enumerate(["good", "bad", "great", "dull", "fine", "poor"])
)

# id: (files to write under tmp_path, --data overrides ({tmp} is tmp_path), regex for the one error line)
BAD_DATA = {
    "header_only_csv": (
        {"t.csv": "text,label\n"},
        {"--data.train_file": "{tmp}/t.csv"},
        r"header row but no examples.*add",
    ),
    "numeric_text_column": (
        {"t.csv": "text,label,review\n1,positive,good\n2,negative,bad\n"},
        {"--data.train_file": "{tmp}/t.csv"},
        r"column 'text' holds numbers, not text.*text_column.*review",
    ),
    "non_utf8_file": (
        {"t.csv": "text,label\ncaf\xe9 good,positive\nbad,negative\n".encode("latin-1")},
        {"--data.train_file": "{tmp}/t.csv"},
        r"not valid utf-8.*line 2.*encoding",
    ),
    "unknown_encoding": ({}, {"--data.encoding": "latin-9x"}, r"unknown encoding 'latin-9x'.*utf-8"),
    "regression_string_labels": (
        {"t.csv": "text,score\ngood,high\nbad,0.5\nfine,low\n"},
        {"--data.train_file": "{tmp}/t.csv", "--data.label_column": "score", "--data.task_type": "regression"},
        r"regression.*'high', 'low'.*not numbers.*lines 2, 4",
    ),
    "regression_empty_labels": (
        {"t.csv": "text,score\ngood,1.5\nbad,\nfine,0.5\n"},
        {"--data.train_file": "{tmp}/t.csv", "--data.label_column": "score", "--data.task_type": "regression"},
        r"1 of 3 rows.*label in column 'score'.*line 3",
    ),
    "batch_size_zero": ({}, {"--data.batch_size": 0}, r"batch_size must be .*>= 1.*got 0"),
    "batch_size_negative": ({}, {"--data.batch_size": -4}, r"batch_size must be .*>= 1.*got -4"),
    "eval_batch_size_zero": ({}, {"--data.eval_batch_size": 0}, r"eval_batch_size must be .*>= 1.*got 0"),
    "num_workers_negative": ({}, {"--data.num_workers": -1}, r"num_workers must be >= 0"),
    "max_train_examples_zero": ({}, {"--data.max_train_examples": 0}, r"max_train_examples must be >= 1.*null"),
    "missing_text_cells": (
        {"t.csv": TRAIN.replace("dull movie", "")},
        {"--data.train_file": "{tmp}/t.csv"},
        r"1 of 6 rows .*text in column 'text'.*line 5.*drop_missing",
    ),
    "label_column_all_empty": (
        {"t.csv": "text,label\ngood,\nbad,\n"},
        {"--data.train_file": "{tmp}/t.csv"},
        r"column 'label' .*no labels at all.*label_column.*predict_file",
    ),
    "single_class": (
        {"t.csv": "text,label\ngood,positive\nfine,positive\n"},
        {"--data.train_file": "{tmp}/t.csv"},
        r"only one label \('positive'\).*at least two.*label_names",
    ),
    "non_integer_class_labels": (
        {"t.csv": "text,label\ngood,0.5\nbad,1.5\n"},
        {"--data.train_file": "{tmp}/t.csv"},
        r"not whole numbers.*task_type: regression",
    ),
    "label_unseen_in_training": (
        {"v.csv": "text,label\ngood,positive\nbad,neutral\n"},
        {"--data.val_file": "{tmp}/v.csv"},
        r"v.csv.*\['neutral'\].*outside the label set.*label_names",
    ),
    "duplicated_column_names": (
        {"t.csv": "text,text,label\ngood,fine,positive\nbad,dull,negative\n"},
        {"--data.train_file": "{tmp}/t.csv"},
        r"column 'text' appears twice in the header.*rename",
    ),
    "directory_as_file": (
        {"folder/train.csv": TRAIN},
        {"--data.train_file": "{tmp}/folder"},
        r"is a folder, not a data file.*train.csv",
    ),
    "txt_file": ({"t.txt": TRAIN}, {"--data.train_file": "{tmp}/t.txt"}, r"unsupported file type '.txt'.*\.csv.*\.tsv"),
    "tab_separated_named_csv": (
        {"t.csv": TRAIN.replace(",", "\t")},
        {"--data.train_file": "{tmp}/t.csv"},
        r"looks tab-separated.*\.tsv",
    ),
    "label_column_null_with_train_file": (
        {},
        {"--data.label_column": "null"},
        r"label_column is null.*train_file.*predict_file",
    ),
    "text_column_is_label_column": (
        {},
        {"--data.text_column": "label"},
        r"text_column and label_column are both 'label'",
    ),
    "malformed_jsonl_line": (
        {"t.jsonl": '{"text": "good", "label": "positive"}\n{"text": "bad", "label": \n'},
        {"--data.train_file": "{tmp}/t.jsonl"},
        r"t.jsonl': line 2 is not valid JSON.*fix that line",
    ),
    "empty_json_array": ({"t.json": "[]"}, {"--data.train_file": "{tmp}/t.json"}, r"has no rows.*at least one example"),
    "text_column_holds_lists": (
        {"t.jsonl": '{"text": ["good", "film"], "label": "positive"}\n'},
        {"--data.train_file": "{tmp}/t.jsonl"},
        r"column 'text' holds list values, not text",
    ),
    "predict_file_without_text_column": (
        {"p.csv": "review\ngood\n"},
        {"--data.predict_file": "{tmp}/p.csv"},
        r"p.csv.*text_column='text'.*Available columns: review",
    ),
}


@pytest.mark.parametrize("files, overrides, match", list(BAD_DATA.values()), ids=list(BAD_DATA))
def test_bad_data_input_exits_with_one_clear_line(assets, tmp_path, capsys, files, overrides, match):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    overrides = {k: str(v).format(tmp=tmp_path) for k, v in overrides.items()}
    if overrides.get("--data.task_type") == "regression":  # the regression file is the only file
        overrides |= {"--data.val_file": "null", "--data.test_file": "null"}
    export = tmp_path / "export"
    command = "predict" if "--data.predict_file" in overrides else "fit"
    args = [
        command,
        "--model=TeacherFineTuning",
        f"--model.model={assets['encoder']}",
        f"--model.export_dir={export}",
        *data_args(assets, **overrides),
        *trainer_args(tmp_path, **{"--trainer.fast_dev_run": 1}),
    ]
    if command == "predict":
        args.append(f"--predictions.output_file={export}/predictions.csv")
    expect_user_error(args, capsys, match, export)


def test_latin1_file_fails_clearly_then_loads_with_its_encoding(assets, tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(TRAIN.replace("good movie", "caf\xe9 movie").encode("latin-1"))
    with pytest.raises(KDLightError, match=r"not valid utf-8 text \(byte 0xe9 on line 2\).*encoding: latin-1"):
        make(assets, train_file=str(path))
    dm = make(assets, train_file=str(path), encoding="latin-1")
    assert dm.label_names == ["negative", "positive"]
    assert dm._raw("train")["text"][0] == "caf\xe9 movie"
    dm.setup("fit")
    assert len(dm.splits["train"]) == 6


@pytest.mark.parametrize(
    "setting, value", [("batch_size", 0), ("eval_batch_size", -1), ("max_train_examples", 0), ("num_workers", -2)]
)
def test_loader_settings_are_checked_at_construction(assets, setting, value):
    with pytest.raises(KDLightError, match=f"{setting} must be"):
        make(assets, **{setting: value})


# ----------------------------------------------------------------- defect 14: predict without labels
def unlabelled(tmp_path, n: int = 11) -> Path:
    rows = [{"id": f"r{i}", "text": r["text"]} for i, r in enumerate(sentiment_rows(n, seed=7))]
    return write_csv(tmp_path / "unlabelled.csv", rows)


def predict(assets, model: Path, tmp_path, *data: str) -> list[dict]:
    from kdlight.cli import main

    out = tmp_path / "predictions.csv"
    main(
        [
            "predict",
            "--model=TeacherFineTuning",
            f"--model.model={model}",
            "--data=TextClassificationDataModule",
            *data,
            "--data.batch_size=4",
            "--data.max_length=32",  # the tiny models have 64 positions
            *trainer_args(tmp_path),
            f"--predictions.output_file={out}",
        ]
    )
    return list(csv.DictReader(out.open()))


def direct_logits(model: Path, texts: list[str]):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    net = AutoModelForSequenceClassification.from_pretrained(model).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    with torch.no_grad():
        return [net(**tokenizer(t, return_tensors="pt", truncation=True, max_length=128)).logits[0] for t in texts]


def test_predict_on_an_unlabelled_file_writes_one_row_per_input_in_order(assets, tmp_path):
    path = unlabelled(tmp_path)
    d = assets["data"]
    rows = predict(
        assets,
        assets["teacher"],
        tmp_path,
        f"--data.predict_file={path}",
        f"--data.train_file={d / 'train.csv'}",
        f"--data.val_file={d / 'validation.csv'}",
    )
    assert [int(r["idx"]) for r in rows] == list(range(11))  # one row per input, in the file's order
    texts = [r["text"] for r in csv.DictReader(path.open())]
    for row, logits in zip(rows, direct_logits(assets["teacher"], texts), strict=True):
        assert int(row["prediction"]) == int(logits.argmax())  # row i is input i's prediction
        assert row["label"] == ["negative", "positive"][int(row["prediction"])]  # names from the training labels


def test_predict_only_run_with_label_names_or_the_models_own_labels(assets, tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(assets["tokenizer"])
    path = unlabelled(tmp_path, n=5)
    rows = predict(assets, assets["teacher"], tmp_path, f"--data.predict_file={path}", "--data.label_names=[bad, good]")
    assert [int(r["idx"]) for r in rows] == list(range(5)) and {r["label"] for r in rows} <= {"bad", "good"}

    model = tmp_path / "named_model"  # a classifier that carries its own id2label (what kdlight exports)
    config = tiny_config(len(tokenizer), num_labels=3)
    config.id2label, config.label2id = {0: "neg", 1: "neu", 2: "pos"}, {"neg": 0, "neu": 1, "pos": 2}
    BertForSequenceClassification(config).save_pretrained(model)
    tokenizer.save_pretrained(model)
    rows = predict(assets, model, tmp_path, f"--data.predict_file={path}", "--data.label_column=null")
    assert [int(r["idx"]) for r in rows] == list(range(5)) and {r["label"] for r in rows} <= {"neg", "neu", "pos"}
    assert all(len(r["logits"].split()) == 3 for r in rows)


def test_predict_file_labels_are_never_read(assets, tmp_path):
    rows = sentiment_rows(6, seed=3)
    rows[2]["label"] = "unheard-of"  # a label outside the set: irrelevant for prediction
    path = write_csv(tmp_path / "p.csv", rows)
    dm = make(assets, predict_file=str(path), label_names=["negative", "positive"])
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert "labels" not in batch and batch["idx"].tolist() == list(range(6))  # eval batches of 8: the whole file
    assert dm.predict_split == "predict" and dm.available_splits() == ["predict"]


def test_predict_only_without_any_label_source_says_what_to_give(assets, tmp_path):
    with pytest.raises(KDLightError, match="predict_file alone.*label_names"):
        TextClassificationDataModule(predict_file=str(unlabelled(tmp_path)), tokenizer=str(assets["encoder"]))
