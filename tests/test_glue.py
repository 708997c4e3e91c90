import pytest

from kdlight.data import GLUE_TASKS, GLUEDataModule
from kdlight.errors import KDLightError

EXPECTED = {  # task: (num_labels, metric, pair?)
    "cola": (2, "matthews", False),
    "sst2": (2, "accuracy", False),
    "mrpc": (2, "f1", True),
    "qqp": (2, "f1", True),
    "stsb": (1, "pearson_spearman", True),
    "mnli": (3, "accuracy", True),
    "qnli": (2, "accuracy", True),
    "rte": (2, "accuracy", True),
    "wnli": (2, "accuracy", True),
}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_every_glue_task_has_its_labels_metric_and_shape(task):
    dm = GLUEDataModule(task=task, tokenizer="unused")
    assert (dm.num_labels, dm.metric, dm.is_pair_task) == EXPECTED[task]
    assert set(GLUE_TASKS) == set(EXPECTED)


def test_mnli_validates_matched_and_tests_both():
    dm = GLUEDataModule(task="mnli", tokenizer="unused")
    assert dm.eval_split_names("val") == ["validation_matched"]
    assert dm.eval_split_names("test") == ["validation_matched", "validation_mismatched"]


def test_unknown_task_and_missing_folder():
    with pytest.raises(KDLightError, match="unknown GLUE task 'sst5'.*choose one of cola, sst2"):
        GLUEDataModule(task="sst5")
    with pytest.raises(KDLightError, match="source folder not found"):
        GLUEDataModule(task="sst2", source="/no/such/glue")


def write(path, lines):
    path.write_text("\n".join("\t".join(row) for row in lines) + "\n")


def test_original_glue_tsv_layouts(assets, tmp_path):
    cola = tmp_path / "CoLA"
    cola.mkdir()  # CoLA's train/dev files have no header row
    write(cola / "train.tsv", [["gj04", "1", "", "the movie was good ."], ["gj04", "0", "*", "movie the good was ."]])
    write(cola / "dev.tsv", [["gj04", "0", "*", "was the ."]])
    dm = GLUEDataModule(task="cola", source=str(cola), tokenizer=str(assets["tokenizer"]))
    dm.setup("fit")
    assert list(dm.splits["train"]["labels"]) == [1, 0] and list(dm.splits["train"]["idx"]) == [0, 1]

    mnli = tmp_path / "MNLI"
    mnli.mkdir()
    header = ["index", "sentence1", "sentence2", "gold_label"]
    write(mnli / "train.tsv", [header, ["0", "a film", "a movie", "entailment"], ["1", "good", "bad", "contradiction"]])
    write(mnli / "dev_matched.tsv", [header, ["0", "the plot", "a story", "neutral"]])
    write(mnli / "dev_mismatched.tsv", [header, ["0", 'it is "quoted', "it is", "entailment"]])
    dm = GLUEDataModule(task="mnli", source=str(mnli), tokenizer=str(assets["tokenizer"]))
    dm.setup("test")
    assert list(dm.splits["validation_matched"]["labels"]) == [1]
    assert list(dm.splits["validation_mismatched"]["labels"]) == [0]  # the stray quote did not swallow the row
    loaders = dm.test_dataloader()
    assert len(loaders) == 2 and "token_type_ids" in next(iter(loaders[0]))

    write(mnli / "train.tsv", [header, ["0", "a", "b", "maybe"]])
    with pytest.raises(KDLightError, match="'maybe'.*outside GLUE mnli's label set"):
        GLUEDataModule(task="mnli", source=str(mnli), tokenizer=str(assets["tokenizer"])).setup("fit")


def test_local_parquet_in_hub_column_names_and_missing_split(assets, tmp_path):
    import pandas as pd

    pd.DataFrame({"sentence1": ["a b", "c d"], "sentence2": ["e", "f"], "label": [2.5, 4.0], "idx": [7, 9]}).to_parquet(
        tmp_path / "train.parquet"
    )
    dm = GLUEDataModule(task="stsb", source=str(tmp_path), tokenizer=str(assets["tokenizer"]))
    train = dm.tokenize_split("train")
    assert list(train["labels"]) == [2.5, 4.0] and list(train["idx"]) == [7, 9]
    with pytest.raises(KDLightError, match="no file for split 'validation'"):
        dm.tokenize_split("validation")


def test_glue_folder_through_the_cli(assets, tmp_path, capsys):
    import random

    from conftest import sentence, trainer_args
    from kdlight.cli import main

    sst2 = tmp_path / "SST-2"
    sst2.mkdir()
    rng = random.Random(0)
    rows = [["sentence", "label"]] + [[sentence(i % 2, rng), str(i % 2)] for i in range(40)]
    write(sst2 / "train.tsv", rows)
    write(sst2 / "dev.tsv", rows[:17])
    main(
        [
            "validate",
            "--model=TeacherFineTuning",
            f"--model.model={assets['teacher']}",
            "--data=GLUEDataModule",
            "--data.task=sst2",
            f"--data.source={sst2}",
            "--data.batch_size=8",
            "--data.max_length=64",
            *trainer_args(tmp_path),
        ]
    )  # the tiny teacher has 64 positions
    out = capsys.readouterr().out
    assert "val/accuracy" in out and "val/score" in out
