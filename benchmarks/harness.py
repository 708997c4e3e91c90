"""How every study in benchmarks/ trains, times and scores, so that each study holds only what it measures: the
quiet Trainer and CLI run, the step timer, the profile summary, ``fit_and_test`` (``kdlight fit`` then ``kdlight
test --ckpt_path best``: accuracy is always ``trainer.test``), interleaved rounds, plots. Runs, workers and result
files are ``benchmarks/study.py``'s.
"""

from __future__ import annotations

import csv
import functools
import pstats
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning import Trainer
from lightning.pytorch.callbacks import Callback

from benchmarks.study import Study, study_parser
from kdlight.cli import cli
from kdlight.models.hf import count_parameters

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def quiet_trainer(root: Path, epochs: int = 1, callbacks=(), max_steps: int = -1, **overrides):
    """A CPU ``Trainer`` that trains and nothing else: no logger, checkpoints or validation (``overrides`` win)."""
    settings = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, limit_val_batches=0)
    settings.update(num_sanity_val_steps=0, max_epochs=epochs, max_steps=max_steps, **QUIET, **overrides)
    return Trainer(default_root_dir=str(root), callbacks=list(callbacks), **settings)


def component(class_path: str, **init_args) -> dict:
    """A recipe's ``{class_path, init_args}`` entry."""
    return {"class_path": class_path, "init_args": init_args}


run_cli = functools.partial(cli, run=False)  # run_cli(args): a kdlight CLI run built, not run (trainer, model, data)


def runner_for(config: dict, root: Path):
    """A CLI run of ``config`` (written to ``root/config.yaml``, as a user's recipe) logging under ``root``, quiet."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    quiet = [f"--trainer.{key}=false" for key in QUIET]
    return run_cli(["--config", str(root / "config.yaml"), f"--trainer.default_root_dir={root}", *quiet])


class StepTimer(Callback):
    """``times`` / ``cpu_times`` (wall / process CPU seconds) of every training step and ``stamps`` / ``cpu_stamps``,
    the clocks at every step's end. ``before_stamp(i)`` runs before step ``i``'s end stamp (e.g. to wait for a GPU);
    a loop without Lightning calls ``on_train_batch_start()`` / ``on_train_batch_end()`` itself."""

    def __init__(self, before_stamp: Callable[[int], None] | None = None) -> None:
        self.before_stamp = before_stamp
        self.times, self.cpu_times, self.stamps, self.cpu_stamps = [], [], [], []

    def on_train_batch_start(self, *args) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, *args) -> None:
        if self.before_stamp is not None:
            self.before_stamp(len(self.stamps))
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())
        self.times.append(self.stamps[-1] - self._start[0])
        self.cpu_times.append(self.cpu_stamps[-1] - self._start[1])


def interleaved(measures: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list]:
    """``rounds`` rounds of every measure taking turns (the order flips every round): ``{name: [per round]}``."""
    out: dict[str, list[float]] = {name: [] for name in measures}
    for r in range(rounds):
        for name in list(measures)[:: 1 if r % 2 == 0 else -1]:
            out[name].append(measures[name]())
    return out


# --------------------------------------------------------------------------------------- profiling
PROFILE_CATEGORIES: list[tuple[str, Callable[[str, str], bool]]] = [
    ("torch kernels (model maths, autograd, optimiser)", lambda f, n: f == "~" and ("torch" in n or "_Engine" in n)),
    ("Lightning (loops, hooks, logging)", lambda f, n: any(p in f for p in ("/lightning", "/torchmetrics/"))),
    ("kdlight (Python)", lambda f, n: "/kdlight/" in f),
    ("transformers (Python)", lambda f, n: "/transformers/" in f),
    ("data loading (sampler, collate)", lambda f, n: any(p in f for p in ("/torch/utils/data/", "/datasets/"))),
    ("torch (Python)", lambda f, n: "/torch/" in f),
    ("other Python and builtins", lambda f, n: True),
]
# what the model's forward/backward and the optimiser do, whoever drives them: left out of the top list
MODEL_MATHS = ("/transformers/", "/torch/nn/", "/torch/optim/", "/torch/autograd/", "/torch/_tensor.py")


def profile_summary(path: Path, steps: int, top: int = 10) -> dict:
    """A cProfile dump's own time per step by library (first match wins), and the top entries outside the maths."""
    stats = pstats.Stats(str(path)).stats
    seconds = {name: 0.0 for name, _ in PROFILE_CATEGORIES}
    for (file, _, name), (_, _, tottime, _, _) in stats.items():
        seconds[next(c for c, match in PROFILE_CATEGORIES if match(file, name))] += tottime
    entries = [
        (tottime, ncalls, f"{Path(file).parent.name}/{Path(file).name}:{line}({name})")
        for (file, line, name), (_, ncalls, tottime, _, _) in stats.items()
        if file != "~" and not any(part in file for part in MODEL_MATHS)
    ]
    entries.sort(reverse=True)
    return {
        "ms_per_step": {k: 1000 * v / steps for k, v in seconds.items()},
        "top_own_time": [
            {"ms_per_step": 1000 * t / steps, "calls_per_step": n / steps, "where": w} for t, n, w in entries[:top]
        ],
    }


# --------------------------------------------------------------------------------------- fit and test
class ValidationCurve(Callback):
    """A callback recording ``val/score`` (and the step and epoch) at every validation, sanity check excluded."""

    # its points' key in checkpoints, as when it was a class made in ``__new__``: a run saved then resumes with them
    state_key = "ValidationCurve.__new__.<locals>._Curve"

    def __init__(self) -> None:
        self.points: list[dict] = []

    def state_dict(self) -> dict:  # saved in checkpoints: a resumed run keeps its earlier points
        return {"points": list(self.points)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.points = list(state_dict.get("points", []))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or "val/score" not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics["val/score"])
        self.points.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "val_score": score})


def latest_last_checkpoint(root: Path) -> Path | None:
    """The newest ``last.ckpt`` under ``root`` (a run interrupted part-way), or None."""
    found = sorted(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    return found[-1] if found else None


def finished_fit(last: Path, trainer: dict) -> tuple[str | None, dict] | None:
    """The best checkpoint and the fit's record entries, if ``last``'s fit reached ``trainer``'s max_epochs /
    max_steps (nothing left to resume)."""
    state = torch.load(last, map_location="cpu", weights_only=True)
    epochs_done = state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    done = (max_steps not in (None, -1) and state["global_step"] >= max_steps) or (
        max_epochs not in (None, -1) and epochs_done >= max_epochs
    )
    if not done:
        return None
    callbacks = state.get("callbacks", {})
    checkpoint = next((v for k, v in callbacks.items() if "best_model_path" in v), {})
    curve = next((v for k, v in callbacks.items() if k.endswith("_Curve")), {})
    score = checkpoint.get("best_model_score")
    # fit_seconds: the fit ran in an earlier process
    fit = {"fit_seconds": None, "steps": state["global_step"], "val_curve": curve.get("points", [])}
    return checkpoint.get("best_model_path"), {**fit, "best_val_score": None if score is None else float(score)}


def fit_and_test(config: dict, root: Path, test: bool = True, resume: bool = False) -> dict:
    """`kdlight fit` then `kdlight test --ckpt_path best`: time, steps, size, export, validation curve, best validation
    score (what selection may use), test metrics. ``resume``: from the newest ``last.ckpt`` under ``root``."""
    last = latest_last_checkpoint(root) if resume else None
    finished = finished_fit(last, config["trainer"]) if last else None
    runner = runner_for(config, root)
    record = {"params": count_parameters(runner.model.predictor), "export": str(runner.model.export_path())}
    record["resumed_from"] = str(last) if last else None
    if finished is not None:  # an earlier attempt trained every step and stopped before its test: test it
        best, fit = finished
        record.update(fit)
    else:
        curve = ValidationCurve()
        runner.trainer.callbacks.insert(0, curve)  # before the checkpoint callbacks: a checkpoint holds its own point
        # Resumed as `kdlight fit --ckpt_path last` does: into the run's own version folder, so its checkpoints
        # (the best one so far included) stay candidates; a fresh folder would reset the best score.
        ckpt = runner.resolve_checkpoint("fit", "last") if last else None
        start = time.perf_counter()
        runner.trainer.fit(runner.model, datamodule=runner.datamodule, ckpt_path=ckpt)
        checkpoint = runner.trainer.checkpoint_callback
        best, best_val = (checkpoint.best_model_path, checkpoint.best_model_score) if checkpoint else (None, None)
        record.update(fit_seconds=time.perf_counter() - start, steps=runner.trainer.global_step)
        record.update(val_curve=curve.points, best_val_score=None if best_val is None else float(best_val))
    if test:
        metrics = runner.trainer.test(runner.model, datamodule=runner.datamodule, ckpt_path=best, verbose=False)[0]
        record.update({k: float(v) for k, v in metrics.items()})
    return record


# --------------------------------------------------------------------------------------- step costs
def step_cost_main(argv, doc: str, name: str, measure: Callable[..., dict], defaults: dict[str, int], **spec):
    """A step-cost study: ``measure(**arguments)`` once (an int flag per argument, ``defaults``), recorded, then per
    measure of ``spec["names"]`` a row of its per-round step times (the median, the rounds, the ratio of medians to
    the first's) and a bar plot. ``spec``: ``table`` (label key, ratio key, columns), ``plot`` (plotted key, axis
    label), ``title``, ``intro`` (formatted with arguments)."""
    parser = study_parser(doc)
    for key, value in defaults.items():
        parser.add_argument(f"--{key}", type=int, default=value)
    arguments = vars(parser.parse_args(argv))
    study = Study(name)
    times = study.once(measure, **arguments)
    (label, ratio, columns), names = spec["table"], spec["names"]
    base = statistics.median(times[names[0]])
    rows = [{label: n, "step_seconds": statistics.median(times[n]), "rounds": times[n]} for n in names]
    rows = [{**row, ratio: row["step_seconds"] / base} for row in rows]
    text = {"title": spec["title"], "intro": spec["intro"].format(**arguments)}
    study.write(rows, columns, plot=functools.partial(bar_plot, rows, label, *spec["plot"]), **text)
    return rows


def logged_rows(root: Path, column: str, name: str = "metrics.csv", newest: bool = False) -> list[dict]:
    """The rows with a ``column`` value in the last (by path; ``newest``: by time) CSV logger file under ``root``."""
    files = sorted(Path(root).rglob(name), key=(lambda p: p.stat().st_mtime) if newest else None)
    return [r for r in csv.DictReader(files[-1].open()) if r.get(column)] if files else []


# --------------------------------------------------------------------------------------- plots
@contextmanager
def figure(path: Path, *grid: int, dpi: int = 120, **subplots) -> Iterator[tuple]:
    """``(fig, axes)`` of ``plt.subplots(*grid, **subplots)`` (Agg backend), laid out, saved to ``path``, closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, **subplots)
    yield fig, axes
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def curves_plot(records: list[dict], x: Callable, label: Callable, axes: tuple, hline=None, **kwargs):
    """A study's ``plot`` (None where there is no run to draw): each run's validation curve against ``x(point)``
    (solid once the run finished, i.e. has a test score; dashed while in progress), labelled ``label(run)``;
    ``axes``: x label, y label, title; ``hline``: (y, label); ``kwargs``: :func:`figure`'s."""

    def draw(path: Path) -> None:
        with figure(path, **kwargs) as (_, ax):
            for r in records:
                done = "test/score" in r
                xs, ys = [x(p) for p in r["val_curve"]], [p["val_score"] for p in r["val_curve"]]
                suffix = "" if done else " (in progress)"
                ax.plot(xs, ys, marker="o", ls="-" if done else "--", label=label(r) + suffix)
            if hline is not None:
                ax.axhline(hline[0], color="tab:red", ls="-.", lw=1, label=hline[1])
            ax.set(xlabel=axes[0], ylabel=axes[1], title=axes[2])
            ax.legend(fontsize=8)

    return draw if records else None


def bar_plot(rows: list[dict], label: str, value: str, ylabel: str, path: Path) -> None:
    """A study's ``plot`` (bound with ``functools.partial``): one bar per row."""
    with figure(path, figsize=(1.4 * len(rows) + 2.5, 3.6)) as (_, ax):
        ax.bar(range(len(rows)), [r[value] for r in rows], color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), [r[label] for r in rows], rotation=15, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
