"""AdversaryMonitor: what zero-shot KD's generator does, measured and shown (a Lightning callback).

:class:`~kdlight.modules.ZeroShotAdversarialKD` returns it from ``configure_callbacks`` when it trains a
generator; it also works on its own (``Trainer(callbacks=[AdversaryMonitor()])``). On every generator
step it measures, with the generator and the student in eval mode (no dropout) and the step's own noise,
so that the numbers differ only by the update:

* ``adversary/divergence_before``: the teacher-student divergence on the generator's rewrite of the
  batch, before the generator's update;
* ``adversary/divergence_after``: the same after the update (an adversary that earns its place raises it);
* ``adversary/divergence_out_of_domain``: the divergence on the unmodified out-of-domain batch;

and sends them to every logger at the trainer's step (CSVLogger: ``metrics.csv``), whatever
``log_every_n_steps`` is. Every ``show_rewrites_every`` generator steps it decodes a few of the
after-update rewrites (original span -> generated tokens, both models' predictions) into
``rewrites.jsonl`` in the run's log folder and, when a logger takes text (TensorBoard), as text there.
Measuring costs three extra forward passes per generator step (none on student steps);
``track_divergence=False`` turns it off.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch import Tensor

from kdlight.components.generator import NOISE_KEYS
from kdlight.components.rewriting import describe_rewrites, rewrites_markdown
from kdlight.data.base import load_tokenizer, model_inputs
from kdlight.errors import KDLightError

DIVERGENCE_KEYS = ("adversary/divergence_before", "adversary/divergence_after", "adversary/divergence_out_of_domain")


@contextmanager
def evaluating(*modules):
    """Eval mode (no dropout) and no gradients for ``modules``; their modes are restored afterwards."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


class AdversaryMonitor(Callback):
    """Args:
    show_rewrites_every: decode rewrites every this many generator steps (0: never).
    track_divergence: measure and log the three divergences on every generator step.
    limit: how many of a batch's rewrites are decoded.
    """

    def __init__(self, show_rewrites_every: int = 50, track_divergence: bool = True, limit: int = 4) -> None:
        if show_rewrites_every < 0:
            raise KDLightError(f"show_rewrites_every must be >= 0 (0: never), got {show_rewrites_every}")
        self.show_rewrites_every, self.track_divergence, self.limit = show_rewrites_every, track_divergence, limit
        self.generator_batches = 0  # generator batches seen by this process (for show_rewrites_every)
        self.history: list[dict[str, float]] = []  # every measured generator step (this process)
        self.before: Tensor | None = None
        self.pending = False
        self._tokenizer = None

    @staticmethod
    def divergences(module, batch: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(divergence on the generator's current rewrite, its one-hot rows, teacher and student logits)."""
        with evaluating(module.generator.network, module.student):
            return module.generator.divergence(module.teacher, module.student, batch, module.kd_loss)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.pending = bool(getattr(pl_module, "trains_generator", False)) and pl_module.is_generator_step()
        if not self.pending:
            return
        if NOISE_KEYS not in batch:  # plan here as training_step would: the same decisions, made once
            pl_module.generator.plan(batch, pl_module.batch_count(), pl_module.rewrite_rate())
        if self.track_divergence:
            self.before = self.divergences(pl_module, batch)[0]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.pending:
            return
        self.pending = False
        self.generator_batches += 1
        show = self.show_rewrites_every and self.generator_batches % self.show_rewrites_every == 0
        if not (self.track_divergence or show):
            return
        after, one_hot, teacher, student = self.divergences(pl_module, batch)
        if self.track_divergence:
            with evaluating(pl_module.student):
                clean = pl_module.kd_loss(
                    pl_module.student(**model_inputs(batch)).logits, pl_module.teacher(**model_inputs(batch)).logits
                )
            values = dict(zip(DIVERGENCE_KEYS, (self.before, after, clean), strict=True))
            metrics = {k: float(v) for k, v in values.items()}
            metrics["adversary/generator_step"] = float(pl_module.generator.steps)
            self.history.append(metrics)
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=trainer.global_step)
        if show and trainer.is_global_zero:
            self.show_rewrites(trainer, pl_module, batch, one_hot.argmax(-1), teacher, student)

    def show_rewrites(self, trainer, module, batch: dict, replacements: Tensor, teacher: Tensor, student: Tensor):
        """Decode the first ``limit`` rewrites of this generator batch for people to read."""
        limit = self.limit
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(module.task.tokenizer or module.teacher_source)
        rewritten = module.generator.replace(batch, replacements)
        examples = describe_rewrites(
            self._tokenizer,
            batch["input_ids"][:limit].cpu(),
            rewritten[:limit].cpu(),
            batch["attention_mask"][:limit].cpu(),
            teacher[:limit].argmax(-1).tolist(),
            student[:limit].argmax(-1).tolist(),
            module.task.label_names,
        )
        step = int(module.generator.steps)
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "rewrites.jsonl").open("a") as out:
            for example in examples:
                out.write(json.dumps({"generator_step": step, "global_step": trainer.global_step, **example}) + "\n")
        for logger in trainer.loggers:
            add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
            if callable(add_text):
                add_text("rewrites", rewrites_markdown(examples), global_step=trainer.global_step)


__all__ = ["DIVERGENCE_KEYS", "AdversaryMonitor", "evaluating"]
