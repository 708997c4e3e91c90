"""ZeroShotAdversarialKD: distil a task with no task training data.

Rashid, Lioutas, Ghaddar, Rezagholizadeh, "Towards Zero-Shot Knowledge Distillation for Natural
Language Processing" (EMNLP 2021, arXiv 2012.15495): the student learns from the teacher's outputs
on out-of-domain text (WikiText-103) and on adversarial rewrites of it on which teacher and student
disagree most; the task's data is used only to evaluate.

What we follow, and from where (the paper's text gives the method in outline; its details come
from the same authors' MATE-KD code, huawei-noah/KD-NLP, which is the best available reading):

* The generator is a masked language model. A fraction ``mask_rate`` (MATE-KD: 30 %) of each
  input's real, non-special tokens is masked; the generator's logits at those positions go through
  a straight-through hard Gumbel-softmax (tau = 1); the one-hot rows multiply *each* model's own
  word-embedding matrix and enter teacher and student as ``inputs_embeds``, unmasked positions
  keeping their embeddings. Teacher, student and generator must therefore share one vocabulary.
* The divergence is KL(teacher || student) on the softened outputs (``temperature``); the generator
  ascends it, the student descends it.
* Training alternates cycles of ``generator_steps`` generator updates and ``student_steps`` student
  updates (MATE-KD: 10 and 100), each on a fresh out-of-domain batch; the generator has its own
  optimiser (AdamW, a very small learning rate, gradient clipping at ``generator_clip``).
* With no task data, the student's loss is KD on the out-of-domain batch plus KD on its adversarial
  rewrite (``adversarial_weight``, 1 by default); there is no cross-entropy term.

What the paper leaves open and we chose (change them by argument): the generator never proposes
special or ``[unusedN]`` tokens (they would break the input's structure); the student's adversarial
batch is a fresh sample from the current generator (no gradient to it); the generator keeps dropout
on, as an MLM in training does; the learning-rate schedule runs over the student's steps only.

Ablations are arguments (``inputs``, ``perturbation``: see Args). Layout: the generator, its optimiser,
gradients and rewrite maths are a plain torch component (:class:`kdlight.components.AdversarialGenerator`),
which checks its own settings; this module orders the steps. A batch is a generator step or a student step;
their bookkeeping (batch counter ``progress``, the student's schedule, the generator's step outside
Lightning's count, the non-finite guard) is :class:`~kdlight.modules.manual.ManualOptimization`'s, so
``trainer.max_steps`` counts student updates; the display is :class:`~kdlight.callbacks_zeroshot.AdversaryMonitor`.
Which tokens to rewrite is decided on the host before a batch moves (``AdversarialGenerator.plan``): no host syncs.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from kdlight.callbacks_zeroshot import AdversaryMonitor
from kdlight.components.generator import NOISE_KEYS, REWRITE_MASK, AdversarialGenerator, Perturbation
from kdlight.data.base import load_tokenizer
from kdlight.distributed import keep_out_of_ddp
from kdlight.errors import KDLightError, check_choice
from kdlight.modules.distiller import BaseDistiller
from kdlight.modules.manual import ManualOptimization
from kdlight.modules.migrations import migrate_zeroshot_checkpoint, zeroshot_generator_optimizer_steps
from kdlight.modules.task import model_inputs

Inputs = Literal["both", "out_of_domain", "adversarial", "random_tokens"]


class ZeroShotAdversarialKD(ManualOptimization, BaseDistiller):
    """Args:
    teacher: the fine-tuned teacher (see :class:`BaseDistiller`).
    generator: an ``AutoModelForMaskedLM`` hub name or folder sharing the teacher's vocabulary
        (``bert-base-uncased`` for BERT teachers; offline: ``packaged/all-MiniLM-L6-v2``).
    inputs: what the student trains on: ``both`` (out-of-domain + adversarial, the paper),
        ``out_of_domain``, ``adversarial``, or ``random_tokens`` (baseline).
    perturbation: ``generator`` (learned, adversarial) or ``random`` (random tokens at the
        masked positions; no generator is loaded).
    mask_rate: fraction of real tokens the generator rewrites.
    gumbel_tau: Gumbel-softmax temperature.
    generator_steps, student_steps: one cycle's generator updates, then student updates.
        ``trainer.max_steps`` counts student updates only.
    generator_optimizer: the generator's optimiser from YAML; default AdamW(generator_learning_rate).
    generator_learning_rate: see above (very small, as in MATE-KD).
    generator_clip: gradient-norm clip of the generator's update.
    adversarial_weight: weight of the adversarial KD term in the student's loss.
    temperature: KD temperature.
    max_consecutive_skips: stop with an error after this many non-finite steps in a row (the
        run has diverged; without a stop, ``max_steps`` would never be reached).
    show_rewrites_every: every this many generator steps, decode a few of the generator's rewrites
        into ``rewrites.jsonl`` in the run's log folder (and TensorBoard text). 0: never.
    track_divergence: on every generator step, log the teacher-student divergence on the rewrites before
        and after the update and on the unmodified batch (``adversary/*``; three extra forward passes).
        Both are done by :class:`~kdlight.callbacks_zeroshot.AdversaryMonitor` (``configure_callbacks``).
    **kwargs: see :class:`BaseDistiller` (student, optimiser, schedule ...).
    """

    def __init__(
        self,
        teacher: str,
        generator: str = "bert-base-uncased",
        inputs: Inputs = "both",
        perturbation: Perturbation = "generator",
        mask_rate: float = 0.3,
        gumbel_tau: float = 1.0,
        generator_steps: int = 10,
        student_steps: int = 100,
        generator_optimizer: OptimizerCallable | None = None,
        generator_learning_rate: float = 1e-6,
        generator_clip: float = 1.0,
        adversarial_weight: float = 1.0,
        temperature: float = 1.0,
        max_consecutive_skips: int = 50,
        show_rewrites_every: int = 50,
        track_divergence: bool = True,
        **kwargs,
    ) -> None:
        check_choice("inputs", inputs, Inputs)
        settings = (perturbation, mask_rate, gumbel_tau, generator_learning_rate, generator_clip)
        AdversarialGenerator.check_settings(*settings)
        for name, value, least in [
            ("generator_steps", generator_steps, 0),
            ("student_steps", student_steps, 1),
            ("adversarial_weight", adversarial_weight, 0),
            ("max_consecutive_skips", max_consecutive_skips, 1),
            ("show_rewrites_every", show_rewrites_every, 0),
        ]:
            if value < least:
                raise KDLightError(f"{name} must be >= {least}, got {value}")
        self.generator_optimizer_factory = generator_optimizer
        super().__init__(teacher=teacher, temperature=temperature, **kwargs)
        self.hparams.pop("generator_optimizer", None)

    # ------------------------------------------------------------------------------- models
    @property
    def uses_generator(self) -> bool:
        hp = self.hparams
        return hp.inputs in ("both", "adversarial") and hp.perturbation == "generator"

    @property
    def trains_generator(self) -> bool:
        return self.uses_generator and self.hparams.generator_steps > 0

    def configure_models(self) -> None:
        super().configure_models()
        hp = self.hparams
        # without a learned generator the rewrites are random tokens, and no network is loaded
        kind = "generator" if self.uses_generator else "random"
        settings = (hp.mask_rate, hp.gumbel_tau, hp.generator_learning_rate, hp.generator_clip)
        self.generator = AdversarialGenerator(hp.generator, kind, *settings, self.generator_optimizer_factory)
        self.generator.check_vocabulary(self.teacher, self.student)
        keep_out_of_ddp(self, "generator")  # it steps with its own optimiser, outside the student's backward

    def auxiliary_networks(self) -> dict[str, tuple[str, nn.Module]]:
        network = self.generator.network
        return {} if network is None else {"generator": (self.hparams.generator, network)}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.generator.prepare(load_tokenizer(self.task.tokenizer or self.teacher_source), self.teacher)

    def configure_optimizers(self):
        student = super().configure_optimizers()
        generator = [self.generator.configure_optimizer()] if self.trains_generator else []
        return [student["optimizer"], *generator], [student["lr_scheduler"]]

    def configure_callbacks(self) -> list:
        """The adversary's display (divergence curves, decoded rewrites): :class:`AdversaryMonitor`."""
        if not self.trains_generator:
            return []
        hp = self.hparams
        return [AdversaryMonitor(hp.get("show_rewrites_every", 0), hp.get("track_divergence", True))]

    checkpoint_migrations = (zeroshot_generator_optimizer_steps, migrate_zeroshot_checkpoint)
    auxiliary_name = "generator"  # train/generator_steps: the ``progress`` column of the generator's updates

    # ---------------------------------------------------------------------------- the cycle
    def is_generator_step(self) -> bool:
        hp = self.hparams
        cycle = hp.generator_steps + hp.student_steps
        return self.trains_generator and self.batch_count() % cycle < hp.generator_steps

    def rewrite_rate(self) -> float | None:
        """The share of real tokens this batch's step rewrites, or None when it rewrites nothing."""
        hp = self.hparams
        if self.is_generator_step():
            return hp.mask_rate
        if hp.inputs in ("both", "adversarial", "random_tokens"):
            return 1.0 if hp.inputs == "random_tokens" else hp.mask_rate
        return None

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The step's random decisions, made on the host copy of a training batch (see ``plan``)."""
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        if self._trainer is not None and self.trainer.training and isinstance(batch, dict) and "idx" in batch:
            batch = self.generator.plan(batch, self.batch_count(), self.rewrite_rate())
        return batch

    # ---------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Rashid et al. (2021), one out-of-domain batch ``x`` at a time, in cycles of ``generator_steps``
        generator updates then ``student_steps`` student updates. ``x'``: the generator's rewrite of ``x``."""
        if NOISE_KEYS not in batch:  # a datamodule's own on_before_batch_transfer ran instead of ours
            batch = self.generator.plan(batch, self.batch_count(), self.rewrite_rate())
        if self.is_generator_step():
            loss = self.generator_step(batch)  # ascend KL(T(x') || S(x')) in the generator
        else:
            loss = self.student_step(batch)  # descend KL(T(x) || S(x)) + w KL(T(x') || S(x')) in the student
        self.end_batch(len(batch["input_ids"]))
        return loss

    def generator_step(self, batch: dict[str, Tensor]) -> Tensor:
        """One generator update: the divergence on its (straight-through) rewrite, ascended."""
        divergence = self.generator.divergence(self.teacher, self.student, batch, self.kd_loss)[0]
        ascend = lambda: self.generator.ascend(divergence)  # noqa: E731
        taken = self.step_auxiliary(self.auxiliary_optimizer(), ascend, loss=divergence)
        if taken is not None:
            self.generator.steps += taken
            if self.logs_this_step():
                real = batch["attention_mask"].sum()
                self.log_dict(
                    {
                        "train/generator_divergence": divergence.detach(),
                        "train/generator_grad_norm": self.generator.grad_norm.detach(),
                        "train/masked_fraction": batch[REWRITE_MASK].float().sum() / real,
                    },
                    batch_size=len(batch["input_ids"]),
                )
        return divergence.detach()

    def student_step(self, batch: dict[str, Tensor]) -> Tensor:
        """One student update: KD on the out-of-domain batch and on a fresh rewrite of it (no gradient
        to the generator), as ``inputs`` selects."""
        hp = self.hparams
        parts: dict[str, Tensor] = {}
        if hp.inputs in ("both", "out_of_domain"):
            parts["kd_out_of_domain"] = self.kd_loss(self.student_logits(batch), self.teacher_logits(batch))
        if hp.inputs in ("both", "adversarial", "random_tokens"):
            rewritten = {**batch, "input_ids": self.generator.rewrite(batch)}
            with torch.no_grad():
                teacher = self.teacher(**model_inputs(rewritten)).logits
            parts["kd_adversarial"] = self.kd_loss(self.student_logits(rewritten), teacher)
        loss = parts.get("kd_out_of_domain", 0) + hp.adversarial_weight * parts.get("kd_adversarial", 0)
        if self.step_student(loss, guard=True) is not None:
            # a skipped step on the device path logs its non-finite loss: the skip counter says so too
            self.log_training({**parts, "loss": loss}, loss, len(batch["input_ids"]))
        return loss.detach()

    def student_steps_in(self, batches: int) -> int:
        """Student updates in the first ``batches`` batches of the cycle."""
        if not self.trains_generator:
            return batches
        hp = self.hparams
        cycle = hp.generator_steps + hp.student_steps
        return (batches // cycle) * hp.student_steps + max(0, batches % cycle - hp.generator_steps)


__all__ = ["Inputs", "ZeroShotAdversarialKD"]
