"""The noisy multiclass study's plumbing: its run order and the partial report it writes after every run."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import torch

import benchmarks.noisy.multiclass as mc
from benchmarks.study import Study
from kdlight.losses import KLDivergence


def test_order_is_seed_major_with_every_method_of_a_block_together():
    order = mc.job_order([0.4, 0.6], ["clean", "noisy"], [0, 1])
    first = [o for o in order if not o[-1]]
    # the first block: every main method of (40 %, clean teacher, seed 0), then the noisy teacher's, then seed 1
    block = len(mc.LAMBDAS) + len(mc.ALM) - 1
    assert {(o[0], o[1], o[4]) for o in first[:block]} == {(0.4, "clean", 0)}
    assert {(o[0], o[1], o[4]) for o in first[block : 2 * block]} == {(0.4, "noisy", 0)}
    assert {(o[0], o[1], o[4]) for o in first[2 * block : 3 * block]} == {(0.4, "clean", 1)}
    # the expected-error ablation after every seed of its rate, before the next rate
    rate_40 = [o for o in order if o[0] == 0.4]
    ablation = [o for o in rate_40 if not o[-1] and o[2] == mc.EXPECTED_ERROR]
    flip_oracle = [o for o in rate_40 if o[2] in mc.PER_EXAMPLE]  # the oracle, the disagreement: after the ablation
    assert len(ablation) == 2 * 2 and len(flip_oracle) == 2 * 2 * 2 * len(mc.LAMBDAS)
    from_chosen = [o for o in rate_40 if o[3] == mc.CHOSEN]  # after the grid it starts from: last
    assert len(from_chosen) == 2 * 2 * (len(mc.STARTED_AT_CHOSEN) + len(mc.CENTRED) - len(mc.HELD))
    held = [o for o in rate_40 if o[2] in mc.HELD]  # a fixed start (lambda None), in the same place
    tail = ablation + flip_oracle + sorted(from_chosen + held, key=rate_40.index)
    assert [o for o in rate_40 if not o[-1]][-len(tail) :] == tail
    assert order.index(rate_40[-1]) < order.index(next(o for o in order if o[0] == 0.6))
    # re-runs only for the overloaded records, after their seed's two blocks
    again = [o for o in order if o[-1]]
    assert [mc.run_key(*o[:-1]) for o in again] == list(mc.OVERLOADED[mc.NAME])
    assert order.index(again[0]) == 2 * block
    # the overloaded records were lr 0.05 tweets runs: another task's or lr's keys look the same but are never re-run
    for other in (f"{mc.NAME}_wiki_topics", f"{mc.NAME}_lr0.01"):
        assert not [o for o in mc.job_order([0.4], ["clean", "noisy"], [0, 1], study=other) if o[-1]]


def record(accuracy, **extra):
    return {
        "accuracy": accuracy,
        "val_accuracy": accuracy,
        "step_time": 0.3,
        "fit_s": 90.0,
        "realised_rate": 0.27,
        **extra,
    }


def test_partial_report_counts_runs_and_checks_the_rerun(tmp_path):
    study = Study(mc.NAME, results=tmp_path, load=mc.load_runs, dump=mc.dump_runs)
    key = mc.OVERLOADED[mc.NAME][0]
    runs = {mc.run_key(0.4, "clean", "KD", lam, 0): record(0.6 + lam / 10) for lam in mc.LAMBDAS}
    runs[key] = record(0.65, step_time=11.0, fit_s=2600.0, lambda_flipped=0.6, lambda_clean=0.8)
    runs[mc.REMEASURED + key] = record(0.64, step_time=1.2, fit_s=300.0, lambda_flipped=0.6, lambda_clean=0.8)
    for k, v in runs.items():
        study.save(k, v)
    cfg = argparse.Namespace(
        task="tweets", train_examples=1600, max_length=64, teacher_epochs=2, lr=0.05, epochs=5, select_every=1,
        warm_epoch=1, grad_fit=3, meta_batch=160, meta_lr=1.0, default_note="", net_meta_lr=0.001,
    )  # fmt: skip
    mc.report(study, cfg, [0.4], [0, 1, 2], None, "; written by the running study")
    md = (tmp_path / f"{mc.NAME}.md").read_text()
    per_block = len(mc.LAMBDAS) + len(mc.ALM)  # every method of a (rate, teacher, seed) block
    assert f"partial: 4 of {2 * 3 * per_block} student runs" in md and f"seed 0 4/{per_block}" in md
    assert "written by the running study" in md
    assert "NOT identical" in md  # the re-run gave another accuracy: said, not hidden
    rows = json.loads((tmp_path / f"{mc.NAME}.json").read_text())
    table = next(r for r in rows if r["method"] == "ALM default (table)")
    assert table["fit_s_mean"] == 300.0  # the re-run's time, not the overloaded one
    assert abs(table["step_time_vs_kd"] - 4.0) < 1e-9


def test_inversion_study_finds_the_multiclass_studys_teacher():
    """benchmarks.noisy.inversion reuses the multiclass study's tweets teacher (its config once lacked the task)."""
    from benchmarks.noisy.inversion import study_config

    assert mc.teacher_dir(study_config(), "clean", 0.4).name == "tweets_clean_n1600_l64_e2"
    assert mc.teacher_dir(study_config(), "noisy", 0.4).name == "tweets_noisy40_n1600_l64_e2"


def test_a_run_that_predicts_one_class_is_counted_as_collapsed():
    from benchmarks.noisy import multiclass

    shares = (0.25, 0.4268, 0.3232)
    assert multiclass.collapsed({"accuracy": 0.4268}, shares)
    assert not multiclass.collapsed({"accuracy": 0.4269}, shares)
    kd = {"method": "KD, lambda=0.9 (chosen on the selection split)", "chosen_fixed": True, "collapsed": 1, "seeds": 3}
    oracle = {"method": "KD, lambda=0.9 (test-set oracle)", "collapsed": 1, "seeds": 3}  # the same runs again
    alm = {"method": "ALM official", "collapsed": 2, "seeds": 3}
    line = multiclass.collapse_summary([kd, oracle, alm])
    assert (
        line.startswith("- 3 of the 6 runs")
        and "KD (the chosen lambda) 1 of 3" in line
        and "ALM official 2 of 3" in line
    )


def test_the_flip_oracle_puts_the_whole_weight_on_the_teacher_for_flipped_labels_only():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    flipped = torch.tensor([1, 1, 0, 0])
    module = SimpleNamespace(hparams=SimpleNamespace(temperature=2.0), alpha=0.3)

    module.teacher_only = lambda t, b: mc.FlipOracleKD.teacher_only(module, t, b)

    def loss(labels):
        batch = {"labels": torch.tensor(labels), "is_flipped": flipped}
        return mc.FlipOracleKD.compute_loss(module, student, teacher, batch)["loss"]

    base = loss([0, 1, 2, 0])
    assert torch.allclose(loss([2, 0, 2, 0]), base)  # a flipped row's label does not count
    assert not torch.allclose(loss([0, 1, 0, 0]), base)  # a clean row's does, with weight 1 - alpha
    kd = KLDivergence(2.0, reduction="none")(student, teacher)
    ce = torch.nn.functional.cross_entropy(student, torch.tensor([0, 1, 2, 0]), reduction="none")
    expected = (kd[:2].sum() + (0.3 * kd[2:] + 0.7 * ce[2:]).sum()) / 4
    assert torch.allclose(base, expected)


def test_alm_started_at_the_chosen_lambda_runs_after_the_grid_and_is_a_mode_of_its_own():
    seeds = [0, 1]
    # the grid: lambda 0.5 best on the selection split for both seeds, 0.9 best on test (which must not choose)
    runs = {
        mc.run_key(0.4, "clean", "KD", lam, s): record(
            0.9 if lam == 0.9 else 0.8, val_accuracy=0.9 if lam == 0.5 else 0.7
        )
        for lam in mc.LAMBDAS
        for s in seeds
    }
    assert mc.chosen_lambda(runs, 0.4, "clean", seeds) == 0.5
    assert mc.chosen_lambda(runs, 0.4, "noisy", seeds) is None  # no grid yet: nothing to start from
    assert not mc.started_at_chosen(0.9) and not mc.started_at_chosen(0.0) and mc.started_at_chosen(0.5)
    centred = next(iter(mc.CENTRED))  # no main runs from 0.9: the centred modes run from 0.9 when it is chosen
    assert mc.started_at_chosen(0.9, centred) and not mc.started_at_chosen(0.0, centred)
    assert not mc.main_run(mc.run_key(0.4, "clean", centred, 0.9, 0))
    order = mc.job_order([0.4], ["clean"], seeds)
    from_chosen = [o for o in order if o[3] == mc.CHOSEN]
    n = len(seeds) * (len(mc.STARTED_AT_CHOSEN) + len(mc.CENTRED) - len(mc.HELD))
    assert len(from_chosen) == n and [o for o in order if o[2] not in mc.HELD][-n:] == from_chosen  # after the grid
    for s in seeds:
        runs[mc.run_key(0.4, "clean", "ALM mixing network", 0.5, s)] = record(0.85, val_accuracy=0.95)
        runs[mc.run_key(0.4, "clean", "ALM mixing network", None, s)] = record(0.75, val_accuracy=0.8)
    rows = mc.column_rows(runs, {}, 0.4, "clean", seeds, {})
    started = [r for r in rows if r.get("init_lambda") == 0.5]
    assert len(started) == 1 and started[0]["seeds"] == 2 and started[0]["alm"]
    main = next(r for r in rows if r["method"] == "ALM mixing network")
    assert main["accuracy_mean"] == 0.75  # the main row keeps only the runs started at 0.9
    # the runs from the chosen lambda are not counted as main runs in the status line
    assert not mc.main_run(mc.run_key(0.4, "clean", "ALM mixing network", 0.5, 0))
    assert mc.main_run(mc.run_key(0.4, "clean", "ALM mixing network", None, 0))
    assert "started at lambda=0.5" in "\n".join(mc.targets(rows, [0.4]))  # chosen as the best mode on selection
    for s in seeds:  # a centred mode beats it on the selection split: it is the mode the targets use
        runs[mc.run_key(0.4, "clean", centred, 0.5, s)] = record(0.86, val_accuracy=0.96)
    rows = mc.column_rows(runs, {}, 0.4, "clean", seeds, {})
    assert f"{centred}, started at lambda=0.5" in "\n".join(mc.targets(rows, [0.4]))
    held = next(iter(mc.HELD))  # a fixed start: its runs are keyed lambda None, its row named by the mode alone
    assert [o[3] for o in order if o[2] == held] == [None] * len(seeds) and not mc.main_run(
        mc.run_key(0.4, "clean", held, None, 0)
    )
    for s in seeds:
        runs[mc.run_key(0.4, "clean", held, None, s)] = record(0.87, val_accuracy=0.97)
    rows = mc.column_rows(runs, {}, 0.4, "clean", seeds, {})
    assert [r["init_lambda"] for r in rows if r["method"] == held] == [
        0.25
    ] and f"mode on the selection split: {held})" in "\n".join(mc.targets(rows, [0.4]))


def test_the_lr_probe_over_seeds_chooses_by_the_mean_and_every_lr_file_says_which(tmp_path, monkeypatch):
    # lr 0.05 wins on seed 0 but collapses on seed 2 (as the tweets probe did); lr 0.01 is steady
    val = {0.05: (0.71, 0.69, 0.53), 0.01: (0.70, 0.70, 0.70)}
    monkeypatch.setattr(mc, "ensure_teacher", lambda *args: None)
    monkeypatch.setattr(mc, "train_student", lambda cfg, seed, **kw: {"val_accuracy": val[cfg.lr][seed]})
    cfg = argparse.Namespace(task="tweets", lr=0.05)
    assert mc.choose_lr(cfg, [0.05, 0.01], 0.4, tmp_path) == 0.05  # one probe seed
    assert mc.choose_lr(cfg, [0.05, 0.01], 0.4, tmp_path, seeds=3) == 0.01
    notes = {lr: mc.lr_choice_note(argparse.Namespace(lr=lr), mc.study_for(cfg, tmp_path, lr).done()[mc.LR_CHOICE])
             for lr in (0.05, 0.01)}  # fmt: skip
    assert "The selection split chose lr 0.01, not this table's 0.05" in notes[0.05]
    assert "This table's student lr (0.01) was chosen" in notes[0.01] and "3 probe runs per lr" in notes[0.01]
    assert "lr 0.05: 64.33 %" in notes[0.01]  # the mean over the seeds, not seed 0's


def test_a_teacher_below_the_bag_of_words_baseline_has_no_margin_to_keep_and_the_table_says_so():
    # wiki_topics at 60 %: the noisy-trained teacher (82.83 %) is below TF-IDF on the noisy labels (84.96 %)
    row = {"rate": 0.6, "teacher": "noisy", "method": "CE only", "accuracy_mean": 0.83, "accuracy_std": 0.02,
           "val_accuracy_mean": 0.86, "margin_kept": mc.margin_kept(0.83, 0.8283, 0.8496), "seeds": 3, "collapsed": 0,
           "lambda_flipped": None, "lambda_clean": None, "lambda_flipped_auc": None, "step_time_vs_kd": 1.0,
           "fit_s_mean": 90.0}  # fmt: skip
    assert mc.table_row(row)["margin"] == "none: teacher <= TF-IDF"
    assert mc.table_row({**row, "margin_kept": mc.margin_kept(0.9, 0.94, 0.85)})["margin"] == "0.56"


def test_the_ceiling_line_shows_the_flip_oracle_for_every_lambda_on_the_rest():
    """The flip oracle's row is the one the selection split picks; the ceiling line also gives the others (test /
    selection), so a reader can see how much of the ceiling a mode that keeps some teacher weight on the clean
    labels can reach."""
    seeds = [0, 1]
    runs = {mc.run_key(0.4, "noisy", "KD", lam, s): record(0.65) for lam in mc.LAMBDAS for s in seeds}
    runs |= {mc.run_key(0.4, "noisy", "ALM mixing network", None, s): record(0.66) for s in seeds}
    oracle = {0.0: (0.70, 0.71), 0.5: (0.68, 0.69), 0.9: (0.66, 0.665)}  # (test, selection)
    for lam, (test, val) in oracle.items():
        runs |= {mc.run_key(0.4, "noisy", mc.FLIP_ORACLE, lam, s): record(test, val_accuracy=val) for s in seeds}
    line = next(x for x in mc.targets(mc.column_rows(runs, {}, 0.4, "noisy", seeds, {}), [0.4]) if "ceiling" in x)
    assert "70.00 vs 65.00" in line and "+5.00 points" in line  # lambda 0 on the rest: the selection split's pick
    assert "0.0: 70.00 / 71.00, 0.5: 68.00 / 69.00, 0.9: 66.00 / 66.50." in line
