"""benchmarks/kd_augment.py and strong_teacher.py: recipes, baseline columns, targets and choices from the rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

from benchmarks import kd_augment, strong_teacher  # noqa: E402


def _record(size: str, method: str, seed: int, score: float, params: int = 2_000_000) -> dict:
    return {
        "size": size,
        "method": method,
        "seed": seed,
        "test/score": score,
        "test/teacher_score": 0.84,
        "params": params,
        "fit_seconds": 10.0,
    }


def test_rows_carry_both_baselines_and_margins():
    records = [_record("10x", "kd", s, x) for s, x in enumerate((0.80, 0.81, 0.82))]
    records += [_record("10x", "rt_rest", s, x) for s, x in enumerate((0.83, 0.83, 0.83))]
    rows = kd_augment.summarise(records, {"10x": {"speedup": 6.0}}, 20_000_000, {"rows": 0.74, "all": 0.76})
    kd, rest = rows
    assert kd["method"] == "kd" and kd["compression"] == 10.0 and kd["seeds"] == 3
    assert kd["margin_kept_pct"] == pytest.approx(100 * (0.81 - 0.74) / (0.84 - 0.74))
    assert kd["margin_kept_all_pct"] == pytest.approx(100 * (0.81 - 0.76) / (0.84 - 0.76))
    lines = kd_augment.targets(rows)
    assert any("rt_rest" in line and "**met**" in line for line in lines)  # 87.5 % kept, 6x, 3 seeds
    assert any("(10x), kd:" in line and "**missed**" in line for line in lines)  # 62.5 % kept; the size named
    assert any("rt_rest vs kd: +0.0200" in line and "beyond the seed spread" in line for line in lines)


def test_the_equal_updates_control_trains_as_many_steps_as_token_augmentation():
    setting = dict(kd_augment.FULL)
    rows_seen = {  # student inputs over the whole fit: labelled rows (and copies) x epochs
        m: setting["train_examples"]
        * (1 + kd_augment.augmentation(m, setting).get("token_augment_copies", 0))
        * kd_augment.method_setting(m, setting)["epochs"]
        for m in ("kd", "kd_long", "token_aug")
    }
    assert rows_seen["kd_long"] == rows_seen["token_aug"] == 3 * rows_seen["kd"]
    assert kd_augment.data_config("kd_long", setting, quick=False)["class_path"] == "RottenTomatoesDataModule"
    records = [
        _record("10x", m, s, x + 0.01 * s)
        for m, x in (("kd", 0.75), ("kd_long", 0.77), ("token_aug", 0.78))
        for s in range(3)
    ]
    lines = kd_augment.targets(kd_augment.summarise(records, {}, 20_000_000, {"rows": 0.74, "all": 0.76}))
    assert any(
        "token_aug vs kd_long (as many student updates): +0.0100" in line and "none shown" in line for line in lines
    )  # std 0.01: the gain over the equal-updates control is inside the seed spread
    assert any("token_aug vs kd: +0.0300" in line and "beyond the seed spread" in line for line in lines)


def test_the_larger_token_augmentation_dose_is_judged_against_the_study_dose():
    records = [
        _record("10x", m, s, x + 0.001 * s) for m, x in (("token_aug", 0.77), ("token_aug8", 0.775)) for s in (0, 1)
    ]
    lines = kd_augment.targets(kd_augment.summarise(records, {}, 20_000_000, {"rows": 0.74, "all": 0.76}))
    assert any("token_aug8 vs token_aug (8 copies a row vs 2): +0.0050" in line for line in lines)
    copies = kd_augment.augmentation("token_aug8", {})["token_augment_copies"]
    assert copies == 8 and kd_augment.augmentation("token_aug", {})["token_augment_copies"] == 2


def test_each_method_is_a_datamodule_option():
    setting = dict(kd_augment.QUICK)
    assert kd_augment.data_config("kd", setting, quick=False)["class_path"] == "RottenTomatoesDataModule"
    rest = kd_augment.data_config("rt_rest", setting, quick=False)
    assert rest["class_path"] == "AugmentedKDDataModule" and rest["init_args"]["unlabelled"] == ["task_rest"]
    aug = kd_augment.data_config("token_aug", setting, quick=False)["init_args"]
    assert aug["token_augment_copies"] == 2 and aug["datamodule"]["init_args"]["max_train_examples"] == 64
    # MATE-KD is a module option: the labelled rows, AdversarialAugmentedKD with kd_mate.yaml's generator settings
    assert kd_augment.data_config("rewrites", setting, quick=False)["class_path"] == "RottenTomatoesDataModule"
    mate = kd_augment.module_config("rewrites", quick=False)
    generator = mate["init_args"]["generator"]["init_args"]
    assert mate["class_path"] == "AdversarialAugmentedKD" and "generators/minilm-mlm" in generator["network"]
    assert "teacher" not in mate["init_args"] and kd_augment.module_config("kd", quick=False) is None


def test_the_earlier_generator_row_is_its_own_method_and_not_run_by_default(monkeypatch):
    from benchmarks.zeroshot import generator

    monkeypatch.setattr(generator, "earlier_generator", lambda: "/cache/generators/minilm-mlm-top-block-150")
    earlier = kd_augment.module_config("rewrites_earlier", quick=False)["init_args"]["generator"]["init_args"]
    assert earlier["network"] == "/cache/generators/minilm-mlm-top-block-150"
    current = kd_augment.module_config("rewrites", quick=False)["init_args"]["generator"]["init_args"]
    assert current["network"].endswith("generators/minilm-mlm")


def test_strong_teacher_is_chosen_on_validation(tmp_path):
    runs = [{"best_val_score": 0.84, "test/score": 0.86}, {"best_val_score": 0.85, "test/score": 0.83}]
    assert strong_teacher.choose(runs) is runs[1]
    config = strong_teacher.recipe(1e-4, 3, tmp_path)
    assert config["data"]["init_args"]["max_train_examples"] is None and config["trainer"]["max_epochs"] == 3
    assert config["model"]["init_args"]["learning_rate"] == 1e-4
    assert strong_teacher.strong_teacher_export(tmp_path) is None  # nothing chosen here


def test_compact_rows_get_the_baseline_and_keep_hand_written_sections(tmp_path):
    from benchmarks.compact import run as compact

    records = {
        f"task/10x/b/seed{s}": {
            "size": "10x",
            "method": "b",
            "seed": s,
            "test/score": x,
            "test/teacher_score": 0.8,
            "params": 2_000_000,
            "fit_seconds": 1.0,
        }
        for s, x in enumerate((0.76, 0.78))
    }
    (row,) = compact.summarise(records, {}, 20_000_000, baseline_score=0.74)
    assert row["baseline_accuracy"] == 0.74
    assert row["margin_kept_pct"] == pytest.approx(100 * (0.77 - 0.74) / (0.8 - 0.74))
    md = tmp_path / "compact.md"
    md.write_text("# Title\n\nintro\n\n| a |\n|---|\n\n- notes\n\n## Where this ran\n\nBy hand.\n")
    assert compact.hand_written_sections(md) == "## Where this ran\n\nBy hand.\n"
    assert compact.hand_written_sections(tmp_path / "missing.md") == ""


def test_in_progress_curve_reads_every_version_in_step_order(tmp_path):
    from benchmarks.common import in_progress_curve

    header = "epoch,step,train/loss,val/accuracy,val/loss,val/score\n"
    first = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    second = tmp_path / "lightning_logs" / "version_1" / "metrics.csv"  # a resumed run logs to a new version
    first.parent.mkdir(parents=True)
    second.parent.mkdir(parents=True)
    first.write_text(header + "0,19,0.6,,,\n0,158,,0.79,0.44,0.79\n")
    second.write_text(header + "1,477,,0.83,0.37,0.83\n1,499,0.4,,,\n")
    assert in_progress_curve(tmp_path) == [
        {"epoch": 0, "step": 158, "val_score": 0.79},
        {"epoch": 1, "step": 477, "val_score": 0.83},
    ]
    assert in_progress_curve(tmp_path / "nothing") == []


def test_the_combined_method_measures_the_shipped_more_inputs_recipe():
    """``rest_and_aug`` is the study's row for configs/quickstart/kd_more_inputs.yaml: the same inputs for KD."""
    import yaml

    recipe = Path(__file__).resolve().parents[1] / "configs" / "quickstart" / "kd_more_inputs.yaml"
    data = yaml.safe_load(recipe.read_text())["data"]["init_args"]
    inputs = kd_augment.augmentation("rest_and_aug", {})
    assert inputs == {key: data[key] for key in inputs}
    parts = (kd_augment.augmentation(method, {}) for method in ("rt_rest", "token_aug"))
    assert inputs == {key: value for part in parts for key, value in part.items()}  # both methods' inputs


@pytest.mark.parametrize("size, block", [("10x-block1", 0), ("10x-block6", 5)])
def test_a_pretrained_block_student_is_10x_and_starts_from_that_teacher_block(size, block):
    """compact's ``10x-block<n>``: the (packaged) teacher's block n as it is, embeddings at rank 32, pruned
    vocabulary; it must stay at >= 10x the teacher's parameters, or its rows' "10x" label would be wrong."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from benchmarks.compact import run as compact
    from kdlight.assets import resolve_model_path
    from kdlight.models.hf import count_parameters
    from kdlight.models.students import StudentSpec

    assert size not in compact.FRESH_SIZES and size in kd_augment.SIZES
    with pytest.raises(ValueError, match="method b only"):
        compact.student_config(size, "c", None)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("packaged/all-MiniLM-L6-v2"), num_labels=2
    )
    student = StudentSpec.from_config(compact.student_config(size, "b", None)).build(teacher, 2)
    assert count_parameters(teacher) / count_parameters(student) >= 10.0
    assert student.config.num_hidden_layers == 1 and student.config.embedding_size == 32
    ffn = student.albert.encoder.albert_layer_groups[0].albert_layers[0].ffn.weight
    assert torch.equal(ffn, teacher.bert.encoder.layer[block].intermediate.dense.weight)
