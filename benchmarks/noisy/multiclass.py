"""Noisy-label study on a multi-class task in the authors' regime: CE vs fixed-lambda KD vs ALM-KD (3 modes).

    python -m benchmarks.noisy.multiclass                      # tweets: 40 %, then 60 %, then 20 % noise, 3 seeds
    python -m benchmarks.noisy.multiclass --rates 40           # the 40 % columns only
    python -m benchmarks.noisy.multiclass --task wiki_topics   # the second task (6 classes), its own files
    python -m benchmarks.noisy.multiclass --quick              # a smoke run (results in a temp folder)
    python -m benchmarks.noisy.multiclass --lr-grid 0.05 0.02 0.01 --task wiki_topics --rates 40
                        # the student's lr chosen on the selection split first; a non-default lr has its own files
    python -m benchmarks.noisy.multiclass --only "ALM mixing network:chosen" --task wiki_topics --lr 0.02
                        # the mixing network started at the column's chosen fixed lambda (after the KD grid)
    python -m benchmarks.noisy.multiclass --report             # rebuild md/json/png from the runs file

Setting and results: docs/alm.md. The regime's sources in durgas16/AMAL: SGD, momentum 0.9, Nesterov, weight decay
5e-4 (``KD/train_distill_noise.py`` 165-167, ``KD/config/cifar100/config_amal_cifar100.py`` 33-36), MultiStepLR at
epochs 150 and 180 of 200 (train_distill_noise.py 179-180), the meta pass every 10 epochs from 10 (540), its
look-ahead a plain SGD step of size lr (``LearnMultiLambdaMeta.py`` 134-138). Resumable:
every finished run is recorded in ``benchmarks/results/noisy_multiclass_runs.json`` under ``sgd|...`` keys (keys
without it: earlier AdamW runs; ``fresh|``: a stopped first attempt; neither reported) and the md/json/png are
rewritten after every run, so a study stopped at any point has its partial table. Order: :func:`job_order`. The
selection split (the task's validation split) chooses the fixed lambda and the ALM mode; test is only reported.
Runs go one at a time in one process: two workers on the shared 2-core machine made every run ~10x slower.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import re
import shutil
import statistics
import tempfile
import time
from collections import Counter
from itertools import product
from math import nan
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from lightning import seed_everything
from torch.utils.data import DataLoader, Subset

from benchmarks.harness import StepTimer, figure, quiet_trainer
from benchmarks.study import RESULTS, Job, Study, mean_std, target
from kdlight.assets import PACKAGED_MINILM, cache_dir
from kdlight.baseline import baseline_for, margin_kept
from kdlight.data import NoisyLabelDataModule
from kdlight.data.base import Collator
from kdlight.lambda_monitor import LambdaMonitor
from kdlight.models import TruncatedTeacher
from kdlight.models.hf import load_classifier
from kdlight.modules import AdaptiveLossMixingKD, TeacherDisagreementKD, TeacherFineTuning, VanillaKD
from kdlight.teacher_cache import TeacherLogitCache

NAME = "noisy_multiclass"
TASK_TITLES = {"tweets": "tweets (3 classes)", "wiki_topics": "Wikipedia topics (6 classes)"}
# the task the study runs on: (its datamodule, description for the md)
TASKS = {
    "tweets": ("kdlight.data:TweetSentimentDataModule", "Tweets (`packaged/tweets`, negative / neutral / positive"),
    "wiki_topics": (
        "kdlight.data.wiki_topics:WikiTopicDataModule",
        "Wikipedia topics (`kdlight.data.wiki_topics`: the packaged Wikipedia summaries without their first "
        "sentence, labelled place / person / organism / substance / creative work / language from the noun that "
        "sentence defines the subject by; a heuristic label, built offline, 60/20/20 split",
    ),
}
# the student's and the meta step's settings (the regime: see the module docstring); the rest from the command line
REGIME = dict(max_length=64, lr=0.05, meta_lr=1.0, net_meta_lr=0.001, grad_fit=3, warm_epoch=1, select_every=1)
REGIME["meta_batch"] = 160  # the whole clean split
LAMBDAS = (0.0, 0.5, 0.9)  # a 3-point grid: what the shared CPU allowed (the earlier study: 7 points)
LAMBDA_KEYS = ("lambda_flipped", "lambda_clean", "lambda_flipped_auc")  # the lambda monitor's last epoch
HISTORY_KEYS = ("epoch", "flipped", "clean", "flipped_auc")  # the lambda monitor's keys per epoch
TEACHERS = ("clean", "noisy")
# each ALM mode's meta-learner (``meta: {class_path, init_args}``); the regime's settings are added in train_student
ALM = {
    "ALM default (table)": ("MetaLearner", {}),
    "ALM default (table, expected-error score)": ("MetaLearner", {"clean_score": "expected_error"}),
    "ALM official": ("OfficialMetaLearner", {}),
    "ALM mixing network": ("NetworkMetaLearner", {}),
    "ALM mixing network, meta lr 0.01": ("NetworkMetaLearner", {"meta_learning_rate": 0.01}),  # docs/alm.md: why
}
EXPECTED_ERROR = "ALM default (table, expected-error score)"  # an ablation, run last
# modes also run from the column's chosen fixed lambda instead of 0.9 (run key: that lambda; the main runs: None)
STARTED_AT_CHOSEN = ("ALM mixing network", "ALM mixing network, meta lr 0.01")  # the 2nd: added 2026-12-07
# run only from the column's chosen fixed lambda (0.9 included), the batch's mean weight held there (MixingNetwork)
CENTRED = {"ALM centred mixing network": ("NetworkMetaLearner", {"center": True})} | {
    f"ALM centred mixing network, meta lr {lr}": ("NetworkMetaLearner", {"center": True, "meta_learning_rate": lr})
    for lr in (0.01, 0.1, 0.3)  # added after every row above was seen; 0.3 after the 0.1 mode's selection accuracy
}  # held at a fixed mean (a start in its settings, key lambda None): 0.25 (between the grid's 0 and 0.5) added after
HELD = {  # those modes' 40 % rows; meta lr 0.1 at 0.25 and at 0.1 added 2026-12-07 after every row
    f"ALM centred mixing network, meta lr {a}, held at {b}": {"meta_learning_rate": a, "init_lambda": b}
    for a, b in ((0.01, 0.25), (0.1, 0.25), (0.1, 0.1))
}  # then, after the rule's rows, started from the teacher-disagreement rule (0.95 where it disagrees, 0.05 elsewhere)
RULE = {"init_lambda": 0.05, "disagreement_lambda": 0.95}
HELD |= {
    f"ALM centred mixing network, meta lr {lr}, from the disagreement rule": {"meta_learning_rate": lr, **RULE}
    for lr in (0.01, 0.1)
}
CENTRED |= {h: ("NetworkMetaLearner", {"center": True, **s}) for h, s in HELD.items()}
CHOSEN = "chosen"  # in job_order: the column's chosen fixed lambda, resolved from the recorded runs when it runs
PREFIX = "sgd|"  # this regime's run keys
# per study file (keys name neither task nor lr): lr 0.05 tweets runs recorded on 2 cores running 12-19 busy threads:
# their results stand, their times do not; each is re-run alone under "remeasured|<key>" for its step time
OVERLOADED = {NAME: tuple(f"{PREFIX}0.4|clean|{m}|None|0" for m in ("ALM default (table)", EXPECTED_ERROR))}
REMEASURED = "remeasured|"
FLIP_ORACLE = "flip oracle"  # not a method: the per-example weights a perfect detector of flipped labels gives
DISAGREE = "teacher disagreement"  # the simplest per-example weighting, no meta-learning (added after every row)
PER_EXAMPLE = (FLIP_ORACLE, DISAGREE)  # fixed per-example weights, over the lambda grid on the rest
LR_CHOICE = "lr_choice"  # the record of how the student's lr was chosen (a study run with --lr-grid)
# the runs file keeps the teachers under "_teachers"; in the Study their keys are "teacher|<kind>|<rate>"
TEACHER = "teacher|"


def load_runs(raw: dict) -> dict[str, dict]:
    teachers = {TEACHER + key: value for key, value in raw.get("_teachers", {}).items()}
    return {**teachers, **{key: value for key, value in raw.items() if key != "_teachers"}}


def dump_runs(runs: dict[str, dict]) -> dict:
    teachers = {key[len(TEACHER) :]: value for key, value in runs.items() if key.startswith(TEACHER)}
    return {"_teachers": teachers, **{key: value for key, value in runs.items() if not key.startswith(TEACHER)}}


def datamodule(cfg, rate: float):
    module, name = TASKS[cfg.task][0].split(":")
    sizes = dict(max_length=cfg.max_length, max_train_examples=cfg.train_examples, meta_batch_size=cfg.meta_batch)
    noise = dict(noise_type="uniform", noise_rate=rate, clean_val_size=0.1, seed=0)
    task = getattr(importlib.import_module(module), name)()
    return NoisyLabelDataModule(task, **noise, tokenizer=PACKAGED_MINILM, batch_size=32, eval_batch_size=128, **sizes)


def teacher_dir(cfg, kind: str, rate: float) -> Path:
    tag = "clean" if kind == "clean" else f"noisy{int(round(rate * 100))}"
    # the task's name without underscores, then the teacher's data and sizes
    name = f"{cfg.task.replace('_', '')}_{tag}_n{cfg.train_examples}_l{cfg.max_length}_e{cfg.teacher_epochs}"
    return cache_dir() / "teachers" / name


class FlipOracleKD(TeacherDisagreementKD):
    """Not a method (it reads ``is_flipped``, which the datamodule keeps for analysis): teacher weight 1 on the
    flipped labels and ``alpha`` on the others, the weights a perfect detector of flipped labels would give; what
    per-example weighting can add over a fixed lambda in this regime, at most."""

    def teacher_only(self, teacher_logits, batch):
        return batch["is_flipped"].bool()


def study_for(cfg, results: Path, lr: float | None = None) -> Study:
    """The study's files per task (tweets: the plain name) and student lr (another than the regime's: its own)."""
    lr = cfg.lr if lr is None else lr
    suffix = ("" if cfg.task == "tweets" else f"_{cfg.task}") + ("" if lr == REGIME["lr"] else f"_lr{lr:g}")
    return Study(NAME + suffix, workers=1, results=results, load=load_runs, dump=dump_runs)


def choose_lr(cfg, grid: list[float], rate: float, results: Path, seeds: int = 1) -> float:
    """The student's SGD lr with the best mean selection accuracy over probe runs of the table (KD 0.9, the clean
    teacher, seeds 0..seeds-1, at ``rate``); the choice is recorded in every grid lr's runs file, and quoted."""
    scores = {}
    for lr in grid:
        study, lr_cfg = study_for(cfg, results, lr), argparse.Namespace(**{**vars(cfg), "lr": lr})
        ensure_teacher(study, lr_cfg, "clean", rate)
        job = functools.partial(Job, train_student, cfg=lr_cfg, rate=rate, teacher_kind="clean", method="KD", lam=0.9)
        jobs = {run_key(rate, "clean", "KD", 0.9, s): job(seed=s) for s in range(seeds)}
        scores[lr] = statistics.mean(r["val_accuracy"] for r in study.run(jobs).values())
    chosen = max(grid, key=lambda lr: scores[lr])
    probe, accuracy = run_key(rate, "clean", "KD", 0.9, 0), {f"{lr:g}": v for lr, v in scores.items()}
    for lr in grid:
        record = {"probe": probe, "probe_seeds": seeds, "selection_accuracy": accuracy, "chosen": chosen}
        study_for(cfg, results, lr).save(LR_CHOICE, record)
    return chosen


def train_teacher(cfg, kind: str, rate: float) -> dict:
    """MiniLM-L6 fine-tuned on the clean (noise 0: the same examples, clean labels) or the noisy labels."""
    torch.set_num_threads(1)
    out = teacher_dir(cfg, kind, rate)
    dm = datamodule(cfg, 0.0 if kind == "clean" else rate)
    if not (out / "config.json").is_file():
        start = time.perf_counter()
        seed_everything(0, verbose=False)
        setting = dict(learning_rate=1e-4, warmup_ratio=0.1, export_dir=str(out), task=dm.task)
        model = TeacherFineTuning(model=PACKAGED_MINILM, **setting)
        quiet_trainer(out.parent / (out.name + "_run"), cfg.teacher_epochs).fit(model, datamodule=dm)
        print(f"[multiclass] teacher {out.name} trained in {time.perf_counter() - start:.0f}s", flush=True)
    model = load_classifier(str(out), dm.num_labels, dm.label_names, require_head=True)
    dm.setup("fit")
    result = {"path": str(out), "test_accuracy": accuracy(model, dm, "test")}
    # the students' teacher-logit cache (their training split carries the noisy labels), computed once here
    students = datamodule(cfg, rate)
    students.setup("fit")
    dataset = students.splits[students.train_split]
    loader = DataLoader(dataset, batch_size=128, collate_fn=Collator(students.tokenizer.pad_token_id or 0))
    teacher = load_classifier(str(out), dm.num_labels, dm.label_names, require_head=True, role="teacher").eval()
    TeacherLogitCache.load_or_compute(teacher, dataset, loader, torch.device("cpu"), cache_dir() / "teacher_logits")
    return result


@torch.no_grad()
def accuracy(model, dm, split: str) -> float:
    model = model.eval()
    dm._loader(split, False, 128)  # tokenises the split if needed
    dataset = dm.splits[split]
    # by length: batches of similar tweets pad less (the answer does not depend on the order)
    order = sorted(range(len(dataset)), key=lambda i: sum(dataset[i]["attention_mask"]))
    correct = total = 0
    collate = Collator(dm.tokenizer.pad_token_id or 0)
    for batch in DataLoader(Subset(dataset, order), batch_size=128, collate_fn=collate):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        correct += int((model(**inputs).logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    return correct / total


def train_student(
    cfg, rate: float, teacher_kind: str, method: str, lam: float | None, seed: int, lambda_png: Path | None = None
) -> dict:
    """One student run (a Study job): KD with ``lam`` (``method == "KD"``) or one of the ALM modes."""
    torch.set_num_threads(1)
    dm, work = datamodule(cfg, rate), cfg.work / f"worker{os.getpid()}"
    steps = cfg.epochs * -(-round(0.9 * cfg.train_examples) // 32)
    # SGD as the authors' code runs it, and its MultiStepLR (x0.1 at 150 and 180 of 200 epochs) scaled to the steps
    sgd = functools.partial(torch.optim.SGD, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    milestones = [int(0.75 * steps), int(0.9 * steps)]
    schedule = functools.partial(torch.optim.lr_scheduler.MultiStepLR, milestones=milestones, gamma=0.1)
    # the student: the teacher's last block (word embeddings frozen below), the smallest student that learns here
    common = dict(teacher=str(teacher_dir(cfg, teacher_kind, rate)), student=TruncatedTeacher(1), temperature=4.0)
    common.update(cache_teacher_logits=True, optimizer=sgd, lr_scheduler=schedule, export_best=False, task=dm.task)
    common["export_dir"] = str(work / "export")
    seed_everything(seed, verbose=False)
    if method in (fixed := {"KD": VanillaKD, FLIP_ORACLE: FlipOracleKD, DISAGREE: TeacherDisagreementKD}):
        model = fixed[method](alpha=lam, **common)
    else:
        learner, settings = {**ALM, **CENTRED}[method]
        settings = {"init_lambda": 0.9 if lam is None else lam, **settings}  # lam: started at the chosen lambda
        if learner == "OfficialMetaLearner":
            settings.update(grad_fit=cfg.grad_fit, warm_epoch=cfg.warm_epoch, select_every=cfg.select_every)
        else:
            default = cfg.net_meta_lr if learner == "NetworkMetaLearner" else cfg.meta_lr
            settings.setdefault("meta_learning_rate", default)  # a mode's own meta lr stands
        meta = {"class_path": learner, "init_args": settings}
        model = AdaptiveLossMixingKD(meta=meta, lambda_plot=lambda_png is not None, **common)
    model.student.get_input_embeddings().requires_grad_(False)  # cheaper steps, the same for every method
    timer, root = StepTimer(), work / "student"
    shutil.rmtree(root, ignore_errors=True)
    fit, start = quiet_trainer(root, cfg.epochs, [timer]), time.perf_counter()
    fit.fit(model, datamodule=dm)
    wall = time.perf_counter() - start
    times = timer.times[2:] or timer.times  # the first steps include lazy set-up
    meta_seconds = getattr(model, "meta_pass_seconds", 0.0)  # the official meta passes: spread over the steps
    # the test, selection (validation) and meta (clean) splits' accuracy
    splits = {"accuracy": "test", "val_accuracy": "validation", "meta_split_accuracy": "clean_validation"}
    out = {key: accuracy(model.student, dm, split) for key, split in splits.items()}
    out["step_time"] = statistics.mean(times) + meta_seconds / max(len(timer.times), 1)
    out.update(meta_pass_s=meta_seconds, fit_s=wall, steps=len(timer.times))
    out["realised_rate"] = dm.noise_report["realised_rate"]
    monitors = [c for c in fit.callbacks if isinstance(c, LambdaMonitor)]
    if monitors:
        out["lambda_history"] = monitors[0].history
        last = monitors[0].history[-1] if monitors[0].history else {}
        out.update({f"lambda_{k}": last[k] for k in ("flipped", "clean", "flipped_auc") if k in last})
    if lambda_png is not None and (root / "lambda.png").is_file():  # its folder: the results (the runs file is there)
        shutil.copyfile(root / "lambda.png", lambda_png)
    summary = f"acc={out['accuracy']:.4f} val={out['val_accuracy']:.4f} step={1000 * out['step_time']:.0f}ms"
    summary += f" fit={wall:.0f}s " + " ".join(f"{k}={out.get(k, '')}" for k in LAMBDA_KEYS)
    print(f"[multiclass] {run_key(rate, teacher_kind, method, lam, seed)}: {summary}", flush=True)
    return out


def baselines(cfg, rate: float) -> dict:
    """TF-IDF + logistic regression on the students' training rows: noisy labels, and the same rows' clean labels."""
    torch.set_num_threads(1)
    return {
        name: baseline_for(datamodule(cfg, noise)).to_dict()
        for name, noise in (("noisy_labels", rate), ("clean_labels", 0.0))
    }


def run_key(rate: float, teacher: str, method: str, lam: float | None, seed: int) -> str:
    return f"{PREFIX}{rate}|{teacher}|{method}|{lam}|{seed}"


_SHARES: dict[str, tuple[float, ...]] = {}


def class_shares_of_test_split(cfg) -> tuple[float, ...]:
    """Each class's share of the task's test split (never corrupted): a student that predicts one class for every
    input, as a run that collapsed does, scores exactly one of them."""
    if cfg.task not in _SHARES:
        dm = datamodule(cfg, 0.0)
        dm._loader("test", False, 128)  # tokenises the split
        labels = [int(x) for x in dm.splits["test"]["labels"]]
        _SHARES[cfg.task] = tuple(labels.count(c) / len(labels) for c in sorted(set(labels)))
    return _SHARES[cfg.task]


def collapsed(result: dict, shares: tuple[float, ...]) -> bool:
    """Whether a run's test accuracy is exactly one class's share: it predicted that class for every input."""
    return any(abs(result["accuracy"] - share) < 1e-9 for share in shares)


def kd_grid(runs: dict, rate: float, kind: str, seeds: list[int]) -> dict[float, list[dict]]:
    """Each lambda's KD runs over the seeds every lambda of the grid has (a partial study: the same seeds for all)."""
    kd = {
        lam: [{**runs[k], "seed": s} for s in seeds if (k := run_key(rate, kind, "KD", lam, s)) in runs]
        for lam in LAMBDAS
    }
    common = min(len(r) for r in kd.values())
    return {lam: r[:common] for lam, r in kd.items()} if common else {}


def chosen_lambda(runs: dict, rate: float, kind: str, seeds: list[int]) -> float | None:
    """The fixed lambda chosen on the selection split (None before the grid has a seed)."""
    grid = kd_grid(runs, rate, kind, seeds)
    return max(grid, key=lambda lam: statistics.mean(r["val_accuracy"] for r in grid[lam])) if grid else None


def started_at_chosen(lam: float | None, method: str = "") -> bool:
    """Whether a run from the chosen fixed lambda is new: 0.9 is the main runs' start (the centred have none)."""
    return lam is not None and 0.0 < lam < 1.0 and (lam != 0.9 or method in CENTRED)


def column_rows(
    runs: dict, teachers: dict, rate: float, kind: str, seeds: list[int], base: dict, shares: tuple[float, ...] = ()
) -> list[dict]:
    """The rows of one noise rate and teacher (``shares``: the test split's class shares, to count collapses)."""

    def got(method, lam):
        return [{**runs[key], "seed": s} for s in seeds if (key := run_key(rate, kind, method, lam, s)) in runs]

    kd = {lam: got("KD", lam) for lam in LAMBDAS}
    kd_times = {s: [r["step_time"] for lam in LAMBDAS for r in kd[lam] if r["seed"] == s] for s in seeds}
    kd_time_mean = {s: statistics.mean(times) for s, times in kd_times.items() if times}
    teacher_acc = teachers.get(f"{kind}|{rate}", {}).get("test_accuracy")
    baseline_noisy = base.get("noisy_labels", {}).get("test_score")
    head = {"noise": "uniform", "rate": rate, "teacher": kind, "teacher_test_accuracy": teacher_acc}

    def row(method, results, **extra):
        if not results:
            return None
        acc_mean, acc_std = mean_std([r["accuracy"] for r in results])
        known = teacher_acc is not None and baseline_noisy is not None
        timed = all(r.get("seed") in kd_time_mean and r.get("step_time") is not None for r in results)
        vs_kd = statistics.mean(r["step_time"] / kd_time_mean[r["seed"]] for r in results) if timed else None
        out = {"method": method, **head, "accuracy_mean": acc_mean, "accuracy_std": acc_std, "seeds": len(results)}
        out["collapsed"] = sum(collapsed(r, shares) for r in results)
        out["val_accuracy_mean"] = statistics.mean(r["val_accuracy"] for r in results)
        out["margin_kept"] = margin_kept(acc_mean, teacher_acc, baseline_noisy) if known else None
        out.update(dict.fromkeys(LAMBDA_KEYS), step_time_vs_kd=vs_kd)  # lambdas: set below where every seed has them
        out["fit_s_mean"] = statistics.mean(r.get("fit_s", r.get("seconds", 0.0)) for r in results)
        out.update(realised_rate=results[0]["realised_rate"], **extra)
        for key in LAMBDA_KEYS:
            if all(r.get(key) is not None for r in results):
                out[key] = statistics.mean(r[key] for r in results)
        histories = [r["lambda_history"] for r in results if r.get("lambda_history")]
        if histories:  # per epoch (as many as the shortest history has), mean over seeds
            out["lambda_history"] = [
                {k: statistics.mean(p[k] for p in points) for k in HISTORY_KEYS if all(k in p for p in points)}
                for points in zip(*histories, strict=False)
            ]
        return out

    complete, by_val = kd_grid(runs, rate, kind, seeds), chosen_lambda(runs, rate, kind, seeds)
    candidates = [row("CE only", kd[0.0])]
    if complete:
        oracle = max(LAMBDAS, key=lambda lam: statistics.mean(r["accuracy"] for r in complete[lam]))
        grid = {str(lam): mean_std([r["accuracy"] for r in complete[lam]])[0] for lam in LAMBDAS}
        grid_val = {str(lam): statistics.mean(r["val_accuracy"] for r in complete[lam]) for lam in LAMBDAS}
        chosen = {"lambda": by_val, "kd_grid_test": grid, "kd_grid_selection": grid_val, "chosen_fixed": True}
        candidates.append(row(f"KD, lambda={by_val} (chosen on the selection split)", complete[by_val], **chosen))
        candidates.append(row(f"KD, lambda={oracle} (test-set oracle)", complete[oracle], **{"lambda": oracle}))
    for method in (*ALM, *HELD):  # started at 0.9 (train_student), a held mode at its own mean
        start = HELD.get(method, {"init_lambda": 0.9})["init_lambda"]
        candidates.append(row(method, got(method, None), alm=True, init_lambda=start))
    for method in (*STARTED_AT_CHOSEN, *CENTRED):  # a mode choice like any other: on the selection split (targets)
        if started_at_chosen(by_val, method) and method not in HELD:
            name = f"{method}, started at lambda={by_val} (the chosen fixed lambda)"
            candidates.append(row(name, got(method, by_val), alm=True, init_lambda=by_val))
    for method, where in ((FLIP_ORACLE, "on flipped labels"), (DISAGREE, "where its prediction is not the label")):
        flips = {lam: got(method, lam) for lam in LAMBDAS}
        if min(len(r) for r in flips.values()):  # chosen on the selection split like the fixed lambda
            best = max(LAMBDAS, key=lambda lam: statistics.mean(r["val_accuracy"] for r in flips[lam]))
            name = f"{method}: teacher only {where}, lambda={best} on the rest (selection split)"
            grid = {
                x: [100 * statistics.mean(r[k] for r in flips[x]) for k in ("accuracy", "val_accuracy")] for x in flips
            }
            extra = {"flip_oracle" if method == FLIP_ORACLE else "disagreement": True, "rest_grid": grid}
            candidates.append(row(name, flips[best], **extra, **{"lambda": best}))
    return [r for r in candidates if r is not None]


def targets(rows: list[dict], rates: list[float]) -> list[str]:
    """The issue's targets, computed from the rows (a miss is reported with its numbers)."""
    lines = []
    for rate, kind in product(rates, TEACHERS):
        col = [r for r in rows if r["rate"] == rate and r["teacher"] == kind]
        alm, fixed = [r for r in col if r.get("alm")], [r for r in col if r.get("chosen_fixed")]
        if not alm or not fixed:
            continue
        f, name = fixed[0], f"{int(round(rate * 100))} % / {kind} teacher"
        for r in (r for r in col if r.get("rest_grid")):
            grid = ", ".join(f"{k}: {t:.2f} / {v:.2f}" for k, (t, v) in r["rest_grid"].items())
            what = "the ceiling of per-example weighting (the true flip mask, not a method)"
            if r.get("disagreement"):
                what = f"the teacher's disagreement with the label (flag AUC {r['lambda_flipped_auc'] or nan:.3f})"
            lines.append(
                f"- {name}, {what}: "
                f"{100 * r['accuracy_mean']:.2f} vs {100 * f['accuracy_mean']:.2f} for the chosen fixed lambda, "
                f"{100 * (r['accuracy_mean'] - f['accuracy_mean']):+.2f} points ({r['seeds']}/{f['seeds']} seeds); by "
                f"the lambda on the rest, test / selection: {grid}."
            )
        best = max(alm, key=lambda r: r["val_accuracy_mean"])  # the mode chosen on the selection split
        gain = 100 * (best["accuracy_mean"] - f["accuracy_mean"])
        spread = 100 * max(best["accuracy_std"], f["accuracy_std"])
        claim = f"{name}: ALM (best mode on the selection split: {best['method']}) >= chosen fixed lambda + 1 "
        claim += "point beyond the larger seed std"
        detail = f"{100 * best['accuracy_mean']:.2f} vs {100 * f['accuracy_mean']:.2f} ({f['method']}): "
        detail += f"{gain:+.2f} points, larger std {spread:.2f}, {best['seeds']}/{f['seeds']} seeds"
        lines.append(target(claim, gain >= 1.0 and gain > spread, detail))
        if abs(rate - 0.4) < 1e-9 and best.get("lambda_flipped_auc") is not None:
            best_auc = max((r["lambda_flipped_auc"] or 0) for r in alm)
            claim = f"{name}: flipped-label AUC of the teacher weight >= 0.75 for that mode"
            detail = f"AUC {best['lambda_flipped_auc']:.3f} at the last epoch; best ALM AUC {best_auc:.3f}"
            lines.append(target(claim, best["lambda_flipped_auc"] >= 0.75, detail))
        times = ", ".join(f"{r['method']} {r['step_time_vs_kd']:.2f}x" for r in alm if r["step_time_vs_kd"] is not None)
        if times:
            lines.append(f"- {name}: step time vs KD in the same runs: {times}.")
    return lines


def lr_choice_note(cfg, choice: dict | None) -> str:
    if not choice:
        return ""
    seeds, chosen = choice.get("probe_seeds", 1), float(choice["chosen"])
    scores = ", ".join(f"lr {lr}: {100 * v:.2f} %" for lr, v in choice["selection_accuracy"].items())
    probe = "one probe run per lr" if seeds == 1 else f"{seeds} probe runs per lr (seeds 0-{seeds - 1}, their mean)"
    verdict = f"The selection split chose lr {chosen:g}, not this table's {cfg.lr:g} (its own files)"
    verdict = f"This table's student lr ({cfg.lr:g}) was chosen on the selection split" if chosen == cfg.lr else verdict
    probe += f" (`{choice['probe'][len(PREFIX) :]}`, selection accuracy {scores})"
    seen = "after the lr 0.05 table's one-class runs had been seen (its test numbers too)"
    return f" **{verdict}**, {seen}, by {probe}; every other setting is the lr 0.05 table's."


def shown(value: float | None, template: str) -> str:  # empty where there is no value
    return "" if value is None else template.format(value)


def pct(value: float | None) -> str:
    return shown(None if value is None else 100 * value, "{:.2f}")


def table_row(r: dict) -> dict:
    """A row of the md's table (the json keeps the numbers): percentages, lambdas and times as text."""
    return {
        "col": f"{int(round(r['rate'] * 100))}% / {r['teacher']}",
        "method": r["method"],
        "acc": f"{pct(r['accuracy_mean'])} ± {pct(r['accuracy_std'])}",
        "val": pct(r["val_accuracy_mean"]),
        "margin": shown(r["margin_kept"], "{:.2f}").replace("nan", "none: teacher <= TF-IDF"),
        "seeds": r["seeds"],
        "one_class": r["collapsed"],
        **{column: shown(r[key], "{:.3f}") for column, key in zip(("lf", "lc", "auc"), LAMBDA_KEYS, strict=True)},
        "time": shown(r["step_time_vs_kd"], "{:.2f}x"),
        "wall": f"{r['fit_s_mean']:.0f}",
    }


def intro(cfg, status: str, teachers: dict, base: dict, choice: dict | None) -> str:
    """The md's text above the table: the status, the command, the setting, the teachers' and baselines' scores."""
    base_lines = "".join(
        f"- TF-IDF + logistic regression on the students' training rows at {int(round(float(rate) * 100))} % noise: "
        f"{pct(base[rate]['noisy_labels']['test_score'])} % trained on "
        f"the noisy labels (the margin-kept reference), {pct(base[rate]['clean_labels']['test_score'])} % on the same "
        "rows' clean labels\n"
        for rate in sorted(base)
    )
    return (
        f"**Status:** {status}\n\n"
        f"`python -m benchmarks.noisy.multiclass{'' if cfg.task == 'tweets' else ' --task ' + cfg.task}"
        f"{'' if choice is None else ' --lr-grid ' + ' '.join(choice['selection_accuracy'])}"
        f"{' --lr-probe-seeds ' + str(choice['probe_seeds']) if choice and choice.get('probe_seeds', 1) > 1 else ''}` "
        "(resumable; one run at a time, one torch thread, on a 2-core CPU "
        "machine whose other core runs another study; this file is rewritten after every finished run).\n\n"
        f"{TASKS[cfg.task][1]}; validation and test splits never corrupted), "
        f"first {cfg.train_examples} training rows: 10 % carved off as the clean split ALM-KD meta-learns on, the "
        "rest with uniform noise (the official model: resampled over all the classes). **Selection split: the task's "
        "validation split** (chooses the fixed lambda and the ALM mode; never trained or meta-trained on). "
        f"max_length {cfg.max_length}, batch 32. Teacher: all-MiniLM-L6-v2 fine-tuned {cfg.teacher_epochs} epochs "
        "(AdamW 1e-4) on the clean or the noisy labels of the same rows.\n\n"
        "**The authors' regime, as far as a shared CPU allowed** (durgas16/AMAL, see the module docstring for "
        "file:line): student = the teacher's last block (TruncatedTeacher(1), word embeddings frozen), "
        f"SGD lr {cfg.lr}, momentum 0.9, Nesterov, weight decay 5e-4, {cfg.epochs} epochs, lr x0.1 at 75 % and "
        "90 % of the steps, T = 4, teacher logits cached. ALM official: free CE/KD weights init 0.1/0.9, closed-form "
        f"last-layer meta pass over the training set every {cfg.select_every} epochs from epoch {cfg.warm_epoch}, "
        f"`grad_fit: {cfg.grad_fit}`, meta lr 1500, 5 iterations, look-ahead = the code's plain SGD step of the "
        f"current lr (the gradient part of this optimiser's step), clean batches of {cfg.meta_batch} (the whole "
        f"clean split). ALM default: table init 0.9, meta step every training step, SGD meta lr {cfg.meta_lr} on "
        f"normalised meta-gradients{cfg.default_note}. ALM mixing network: Adam meta lr {cfg.net_meta_lr}; "
        "started at lambda=x: the same, its teacher weight initialised at the column's fixed lambda chosen on "
        "the selection split instead of 0.9 (run after the grid; none where that lambda is 0.9 or 0). The mode "
        "with meta lr 0.01 (alm_mixer.yaml's) was added 2026-12-07 after the topic task's 60 % rows, test numbers "
        "included, had been seen; a probe on the selection split only picked 0.01 (docs/alm.md); its started-at-lambda "
        "runs were added later that day, after every 40 % row of both tasks had been seen. The centred mixing "
        "network (`center: true`: each batch's mean teacher weight held at its start, so it learns only how examples "
        "differ) runs only from the chosen lambda (meta lr 0.001, 0.01, 0.1, 0.3), or held at a fixed mean (0.25 at "
        "meta lr 0.01; 0.25 and 0.1 at meta lr 0.1); added that evening after every row above had been seen; meta lr "
        "0.3 after 0.1's first selection scores, 0.25 after the 40 % rows, the meta lr 0.1 held modes and the teacher-"
        "disagreement baseline (no meta-learning: the teacher alone where its prediction is not the label, lambda on "
        "the rest chosen on the selection split like the flip oracle's) later that night, after every row; then, after "
        "the rule's rows, the centred network started from it (`disagreement_lambda: 0.95`, 0.05 elsewhere). "
        "**When the settings were fixed:** a first attempt at this regime (a 64-wide student from scratch, SGD lr "
        "0.1; its runs are kept under `fresh|` keys and not reported) collapsed to the majority class, and its "
        "test numbers had been seen when the regime above (the teacher's last block, SGD lr 0.05, 5 epochs) and "
        "the reduced lambda grid were chosen; no test number of the regime above was seen before its settings "
        "were fixed."
        + lr_choice_note(cfg, choice)
        + "\n\nLambda = the weight on the teacher term (w_KD / (w_CE + w_KD); 1 - w_CE for the convex modes) the "
        "student was trained with, mean over the last epoch on flipped / clean training examples; AUC = its ROC-AUC "
        "as a detector of flipped labels (the lambda monitor; 0.5 = chance). Margin kept = (student - TF-IDF) / "
        "(teacher - TF-IDF), TF-IDF trained on the noisy labels. Wall = mean seconds of a run's fit.\n\n"
        + "".join(
            f"- teacher `{k}`: clean test accuracy {pct(v['test_accuracy'])} %\n" for k, v in sorted(teachers.items())
        )
        + base_lines
    )


def collapse_summary(rows: list[dict]) -> str:
    """How many runs ended predicting one class for every test input (their test accuracy is exactly that class's
    share of the test split): such a run learned nothing, and its seed's number is a collapse, not a method's."""
    counted = [r for r in rows if "test-set oracle" not in r["method"]]
    total, runs = sum(r["collapsed"] for r in counted), sum(r["seeds"] for r in counted)
    by_method: dict[str, list[int]] = {}
    for r in counted:
        pair = by_method.setdefault("KD (the chosen lambda)" if r.get("chosen_fixed") else r["method"], [0, 0])
        pair[0], pair[1] = pair[0] + r["collapsed"], pair[1] + r["seeds"]
    parts = ", ".join(f"{name} {c} of {n}" for name, (c, n) in by_method.items())
    return (
        f"- {total} of the {runs} runs in the table predicted one class for every test input ({parts}). "
        "Why is not established here (the first suspect: the student's SGD step, lr shown above, momentum 0.9, no "
        "warm-up); a collapsed seed widens its row's std, and a row's mean then moves by a whole collapse."
    )


def plot(rows: list[dict], path: Path) -> None:
    columns = sorted({(r["rate"], r["teacher"]) for r in rows})
    tall = 0.5 + 0.2 * max(sum((r["rate"], r["teacher"]) == c for r in rows) for c in columns)  # a panel per column
    with figure(path, len(columns), 1, dpi=110, figsize=(10, tall * len(columns)), squeeze=False) as (_, axes):
        for ax, (rate, kind) in zip(axes[:, 0], columns, strict=True):
            sel = [r for r in rows if (r["rate"], r["teacher"]) == (rate, kind)]
            short = {" (chosen on the selection split)": " (selection split)", " (the chosen fixed lambda)": ""}
            short |= {": teacher only where its prediction is not the label": ""}  # the row names the method
            names = [functools.reduce(lambda name, pair: name.replace(*pair), short.items(), r["method"]) for r in sel]
            means = [100 * r["accuracy_mean"] for r in sel]
            ax.barh(range(len(sel)), means, xerr=[100 * r["accuracy_std"] for r in sel], capsize=3)
            ax.set_yticks(range(len(sel)), names, fontsize=7)
            ax.invert_yaxis()
            ax.set(xlim=(min(means) - 3, max(means) + 2), xlabel="clean test accuracy (%)")
            ax.set_title(f"{int(round(rate * 100))}% uniform noise, {kind} teacher", fontsize=9)
            ax.grid(axis="x", alpha=0.3)


def plot_mechanism(rows: list[dict], path: Path) -> None:
    """Per column and ALM mode: the flipped-label AUC and the teacher weight on flipped / clean over epochs."""
    columns = sorted({(r["rate"], r["teacher"]) for r in rows if r.get("lambda_history")})
    with figure(path, 2, len(columns), dpi=110, figsize=(6 * len(columns), 11), squeeze=False) as (_, axes):
        for j, (rate, kind) in enumerate(columns):
            top, bottom = axes[0][j], axes[1][j]
            tab = [f"tab:{c}" for c in "blue orange green red purple brown pink gray olive cyan".split()]
            top.set_prop_cycle(color=tab + ["k", "gold", "m", "navy", "lime", "maroon"])  # more than 10 modes
            for r in (r for r in rows if (r["rate"], r["teacher"]) == (rate, kind) and r.get("lambda_history")):
                epochs = [e["epoch"] for e in r["lambda_history"]]
                values = {k: [e.get(k) for e in r["lambda_history"]] for k in ("flipped_auc", "flipped", "clean")}
                (line,) = top.plot(epochs, values["flipped_auc"], marker="o", label=r["method"].split(" (the ")[0])
                for key, style in (("flipped", "-"), ("clean", "--")):
                    bottom.plot(epochs, values[key], color=line.get_color(), ls=style)
            top.axhline(0.5, color="grey", linewidth=0.8)
            top.axhline(0.75, color="grey", linewidth=0.8, linestyle=":")
            top.set_ylabel("flipped-label AUC of the teacher weight")
            top.set_title(f"{int(round(rate * 100))}% uniform noise, {kind} teacher (mean over seeds)", fontsize=9)
            bottom.set(ylabel="teacher weight: flipped (solid), clean (dashed)", xlabel="epoch")
            bottom.legend(*top.get_legend_handles_labels(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1))


def job_order(rates: list[float], teachers: list[str], seeds: list[int], study: str = NAME) -> list[tuple]:
    """(rate, teacher, method, lambda, seed, again) in run order: rate by rate, seed-major, then teacher (a study
    stopped early has whole blocks of every method); the expected-error ablation last; ``again``: a timing re-run."""
    main_methods = [("KD", lam) for lam in LAMBDAS] + [(m, None) for m in ALM if m != EXPECTED_ERROR]
    order = []
    for rate in rates:
        for seed in seeds:
            for kind in teachers:
                order += [(rate, kind, method, lam, seed, False) for method, lam in main_methods]
            order += [(rate, kind, m, lam, seed, True) for kind in teachers for m, lam in main_methods]
        order += [(rate, k, EXPECTED_ERROR, None, s, again) for s, k, again in product(seeds, teachers, (False, True))]
        order += [(rate, k, m, x, s, False) for m, s, k, x in product(PER_EXAMPLE, seeds, teachers, LAMBDAS)]
        order += [(rate, k, m, CHOSEN, s, False) for s, k, m in product(seeds, teachers, STARTED_AT_CHOSEN)]
        order += [
            (rate, k, m, None if m in HELD else CHOSEN, s, False) for s, k, m in product(seeds, teachers, CENTRED)
        ]
    return [o for o in order if not o[-1] or run_key(*o[:-1]) in OVERLOADED.get(study, ())]


def ensure_teacher(study: Study, cfg, kind: str, rate: float) -> None:
    """Train a teacher when its record or (a rebuilt cache) its export is missing; seeded, compared in the log."""
    record = study.done().get(key := f"{TEACHER}{kind}|{rate}")
    if record is not None and (Path(record["path"]) / "config.json").is_file():
        return
    study.log(f"teacher {key}: " + ("not trained yet" if record is None else f"{record['path']} is missing"))
    start = time.perf_counter()
    new = train_teacher(cfg=cfg, kind=kind, rate=rate)
    new["seconds"] = time.perf_counter() - start
    if record is not None:
        new["recorded_test_accuracy_before_retraining"] = record["test_accuracy"]
        study.log(f"teacher {key} re-trained: test accuracy {new['test_accuracy']:.4f} ({record['test_accuracy']:.4f})")
    study.save(key, new)


def other_task(study: Study, cfg) -> str:
    """The status line's word on the other task's study (computed from its runs file)."""
    other = "wiki_topics" if cfg.task == "tweets" else "tweets"
    other_study = study_for(argparse.Namespace(**{**vars(cfg), "task": other}), study.results)
    done = sum(1 for key in other_study.done() if key.startswith(PREFIX) and FLIP_ORACLE not in key)
    where = f"`{other_study.name}.md`, `--task {other}`"
    return f"the other task ({where}) has {done} student runs of this regime recorded"


def main_run(key: str) -> bool:
    """Whether a run key is one of the main table's (not the flip oracle, not a run from the chosen lambda)."""
    _, _, method, lam, _ = key[len(PREFIX) :].split("|")
    return method not in (*PER_EXAMPLE, *CENTRED) and not (method in ALM and lam != "None")


def report(study: Study, cfg, rates: list[float], seeds: list[int], status: str | None, running: str = "") -> None:
    """Write the md/json/png from the runs file, with a status line computed from what is recorded."""
    done = study.done()
    teachers = {key[len(TEACHER) :]: value for key, value in done.items() if key.startswith(TEACHER)}
    runs = {key: value for key, value in done.items() if key.startswith(PREFIX)}
    checks = []
    for key in (k for k in OVERLOADED.get(study.name, ()) if k in runs):
        first, again, name = runs[key], done.get(REMEASURED + key), key[len(PREFIX) :]
        if again is None:
            checks.append(f"- `{name}` was recorded on an overloaded machine ({first['fit_s']:.0f} s); its re-run for "
                          "the time has not finished, so its step time is left out.")  # fmt: skip
            runs[key] = {**first, "step_time": None}
            continue
        runs[key] = {**first, "step_time": again["step_time"], "fit_s": again["fit_s"]}
        same = all(first[k] == again[k] for k in ("accuracy", "val_accuracy", "lambda_flipped", "lambda_clean"))
        lams = [f"{r.get('lambda_flipped', nan):.4f}/{r.get('lambda_clean', nan):.4f}" for r in (again, first)]
        checks.append(
            f"- `{name}` re-run alone (same seed) for its time: test accuracy {100 * again['accuracy']:.2f} vs "
            f"{100 * first['accuracy']:.2f} recorded, selection {100 * again['val_accuracy']:.2f} vs "
            f"{100 * first['val_accuracy']:.2f}, lambda flipped/clean {lams[0]} vs {lams[1]} "
            f"({'identical' if same else 'NOT identical'}); step {again['step_time']:.2f} s and fit "
            f"{again['fit_s']:.0f} s alone vs {first['step_time']:.2f} s and {first['fit_s']:.0f} s on the "
            "overloaded machine (the table uses the re-run's times)."
        )
    checks_md = ("\n\n## Re-run checks (computed)\n\n" + "\n".join(checks)) if checks else ""
    base = {str(rate): done[f"baseline|{rate}"] for rate in rates if f"baseline|{rate}" in done}
    per_block = len(LAMBDAS) + len(ALM)
    expected = len(rates) * len(TEACHERS) * len(seeds) * per_block
    have = sum(1 for k in runs if float(k[len(PREFIX) :].split("|")[0]) in rates and main_run(k))
    recorded = Counter(tuple(k.split("|")[i] for i in (1, 2, 5)) for k in runs if main_run(k))  # rate, kind, seed
    blocks = "; ".join(
        f"{int(round(r * 100))} % / {k} teacher: "
        + ", ".join(f"seed {s} {recorded[str(r), k, str(s)]}/{per_block}" for s in seeds)
        for r, k in product(rates, TEACHERS)
    )

    status = status or (
        f"complete for noise rates {', '.join(f'{int(round(r * 100))} %' for r in rates)} ({have} student runs, "
        f"both teachers, {len(seeds)} seeds); {other_task(study, cfg)}"
        if have >= expected
        else f"partial: {have} of {expected} student runs of this regime recorded (runs per seed: {blocks})"
        f"{running}; {other_task(study, cfg)}"
        + ("" if base else "; the TF-IDF baseline had not finished either (no margin kept)")
        + ". Rows with fewer than 3 seeds are marked by their seed count; a target needs every method of its column."
    )
    shares, columns = class_shares_of_test_split(cfg), product(rates, TEACHERS)
    rows = [row for r, k in columns for row in column_rows(runs, teachers, r, k, seeds, base.get(str(r), {}), shares)]
    notes = "## Targets (computed)\n\n" + "\n".join(targets(rows, rates) or ["- no complete column yet."])
    notes += "\n\n## Runs that predicted one class (computed)\n\n" + collapse_summary(rows) + checks_md
    study.write(
        rows,
        "col=noise / teacher; method; acc=clean test acc. % (mean ± std); val=selection acc. %; margin=margin kept; "
        "seeds; one_class=runs predicting one class; "
        "lf=lambda flipped; lc=lambda clean; auc=flipped AUC; time=step time vs KD; wall=wall s",
        title=f"Noisy labels, {TASK_TITLES[cfg.task]}, the authors' regime: CE vs fixed-lambda KD vs ALM-KD",
        intro=intro(cfg, status, teachers, base, done.get(LR_CHOICE)),
        notes=notes,
        plot=(lambda path: plot(rows, path)) if rows else None,
        table_rows=[table_row(r) for r in rows],
    )
    if any(r.get("lambda_history") for r in rows):
        plot_mechanism(rows, study.results / f"{study.name}_mechanism.png")
    study.log(status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[40, 60, 20], help="noise rates in %%, in this order")
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=TEACHERS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--task", default="tweets", choices=list(TASKS), help="tweets (3 classes), wiki_topics (6)")
    parser.add_argument("--train-examples", type=int, default=1600)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=REGIME["lr"], help="the student's SGD lr (another has own files)")
    parser.add_argument("--lr-grid", type=float, nargs="+", help="choose the lr on the selection split from these")
    parser.add_argument("--lr-probe-seeds", type=int, default=1, help="--lr-grid: probe seeds per lr (their mean)")
    parser.add_argument("--quick", action="store_true", help="one short run per method (results in a temp folder)")
    parser.add_argument("--report", action="store_true", help="only rebuild the md/json/png from the runs file")
    parser.add_argument("--status", default=None, help="the status line at the top of the md (default: computed)")
    parser.add_argument("--only", nargs="*", help="methods to run (e.g. 'KD:0.5' 'ALM official'); default all")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    given = {key: getattr(args, key) for key in ("task", "train_examples", "epochs", "teacher_epochs", "lr")}
    cfg = argparse.Namespace(**{**REGIME, **given}, default_note="", work=cache_dir() / "noisy_multiclass")
    if args.quick:
        cfg.train_examples, cfg.epochs, cfg.teacher_epochs, cfg.warm_epoch, cfg.select_every = 400, 2, 1, 1, 1
        cfg.work = cfg.work / "scratch"
    results = args.results or (Path(tempfile.mkdtemp(prefix="noisy_multiclass_quick_")) if args.quick else RESULTS)
    # one run at a time in this process: two workers on one core (the other runs another study) were ~10x slower
    rates = [r / 100 for r in args.rates]
    if args.lr_grid and not args.report:
        cfg.lr = choose_lr(cfg, args.lr_grid, rates[0], results, args.lr_probe_seeds)
    study, seeds = study_for(cfg, results), list(range(args.seeds))
    if args.report:
        report(study, cfg, rates, seeds, args.status)
        return
    order = job_order(rates, args.teachers, seeds, study.name)
    if args.only is not None:
        order = [o for o in order if (o[2] if o[3] is None else f"{o[2]}:{o[3]}") in args.only]

    def resolved(o: tuple) -> tuple | None:  # the chosen lambda filled in (None: no new run to make, or not yet)
        lam = chosen_lambda(study.done(), *o[:2], seeds) if o[3] == CHOSEN else o[3]
        return (*o[:3], lam, *o[4:]) if o[3] != CHOSEN or started_at_chosen(lam, o[2]) else None

    def pending(entry: tuple) -> bool:
        if (entry := resolved(entry)) is None:
            return False
        key = run_key(*entry[:-1])
        return (REMEASURED + key if entry[-1] else key) not in study.done() and (not entry[-1] or key in study.done())

    prepared: set[tuple] = set()
    for n, entry in enumerate(order, 1):
        if not pending(entry):
            continue
        rate, kind, method, lam, seed, again = resolved(entry)
        # again: the same run, alone, for its time (and as a check that it gives the same numbers)
        key = (REMEASURED if again else "") + run_key(rate, kind, method, lam, seed)
        if (kind, rate) not in prepared:  # a rate's teachers and TF-IDF baseline just before its first run
            ensure_teacher(study, cfg, kind, rate)
            study.run({f"baseline|{rate}": Job(baselines, cfg=cfg, rate=rate)})
            prepared.add((kind, rate))
        png = None
        if method.startswith("ALM") and seed == 0 and not args.quick:
            tag = re.sub(r"\W+", "_", method[4:]).strip("_") + ("" if lam is None else f"_from{lam:g}")  # one per mode
            png = study.results / f"{study.name}_lambda_{int(round(rate * 100))}_{kind}_{tag}.png"
        arguments = dict(cfg=cfg, rate=rate, teacher_kind=kind, method=method, lam=lam, seed=seed, lambda_png=png)
        study.run({key: Job(train_student, **arguments)})
        left = sum(1 for o in order[n:] if pending(o))
        queued = f"{key.split(PREFIX, 1)[-1]}, {left} runs of this invocation still queued"
        running = f"; written by the running study at {time.strftime('%H:%M', time.gmtime())} UTC after {queued}"
        report(study, cfg, rates, seeds, args.status, running if left else "")
    report(study, cfg, rates, seeds, args.status)


if __name__ == "__main__":
    main()
