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

Ablations are arguments: ``inputs`` = ``both`` | ``out_of_domain`` | ``adversarial`` |
``random_tokens`` (every real token replaced by a uniformly random one: the no-data baseline), and
``perturbation`` = ``generator`` | ``random`` (masked positions filled with random tokens instead
of the learned generator's choices, which ablates the adversarial learning alone).

Layout: the generator, its optimiser, its gradients and the rewrite maths are a plain torch
component (:class:`kdlight.components.AdversarialGenerator`, ``self.generator``); this module orders
the steps (``training_step``) and steps the optimisers. A batch is either a generator step or a
student step. The student's gradients are reduced by DDP through ``manual_backward``; the generator
is kept out of DDP's reducer (:func:`kdlight.distributed.keep_out_of_ddp`) and averages its own
gradients across ranks. A non-finite loss (on any rank) skips that step on every rank; the skips are
counted and logged, never trained on.

No host syncs in a step: the batch counter has a host twin; which tokens to rewrite (and so how
many noise draws each example needs) is worked out on the host before the batch moves to the
device, from per-example seeds (``AdversarialGenerator.plan``); the non-finite guard skips the
update on the device when the optimiser can (``fused`` Adam/AdamW/SGD, kdlight's default on CUDA:
``found_inf``), with counters on the device and the ``max_consecutive_skips`` stop checked at the
logger's cadence. With other
optimisers (and kdlight's CPU defaults) it reads the flag on the host once per step, as before, and
stops at exactly ``max_consecutive_skips``. On the device path a skipped batch still advances the
learning-rate schedule and Lightning's step count (both live on the host).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from kdlight.callbacks_zeroshot import AdversaryMonitor
from kdlight.components.generator import (
    NOISE_KEYS,
    REWRITE_MASK,
    AdversarialGenerator,
    Perturbation,
)
from kdlight.data.base import load_tokenizer
from kdlight.distributed import any_rank, keep_out_of_ddp
from kdlight.errors import KDLightError, check_choice
from kdlight.modules.distiller import BaseDistiller
from kdlight.modules.task import model_inputs

Inputs = Literal["both", "out_of_domain", "adversarial", "random_tokens"]
LEGACY_GENERATOR_KEY = "kdlight_generator"  # where checkpoints kept the generator before it was a submodule


class ZeroShotAdversarialKD(BaseDistiller):
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
    generator_optimizer: the generator's optimiser from YAML; default AdamW(generator_learning_rate).
    generator_learning_rate: see above (very small, as in MATE-KD).
    generator_clip: gradient-norm clip of the generator's update.
    adversarial_weight: weight of the adversarial KD term in the student's loss.
    temperature: KD temperature.
    max_consecutive_skips: stop with an error after this many non-finite steps in a row (the
        run has diverged; without a stop, ``max_steps`` would never be reached).
    show_rewrites_every: every this many generator steps, decode a few of the generator's rewrites
        (original span -> generated tokens, the teacher's and the student's predictions on the rewrite)
        into ``rewrites.jsonl`` in the run's log folder and, when the logger takes text (TensorBoard),
        as text there too. 0: never. Decoding reads the batch on the host, so it stays out of most steps.
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
        if show_rewrites_every < 0:
            raise KDLightError(f"show_rewrites_every must be >= 0 (0: never), got {show_rewrites_every}")
        check_choice("perturbation", perturbation, Perturbation)
        if not 0 < mask_rate <= 1:
            raise KDLightError(f"mask_rate must be in (0, 1], got {mask_rate}")
        if generator_steps < 0 or student_steps < 1:
            raise KDLightError(
                f"generator_steps must be >= 0 and student_steps >= 1, got {generator_steps} and {student_steps}"
            )
        if gumbel_tau <= 0:
            raise KDLightError(f"gumbel_tau must be > 0, got {gumbel_tau}")
        if generator_learning_rate < 0 or adversarial_weight < 0:
            name, value = (
                ("generator_learning_rate", generator_learning_rate)
                if generator_learning_rate < 0
                else ("adversarial_weight", adversarial_weight)
            )
            raise KDLightError(f"{name} must be >= 0, got {value}")
        if generator_clip <= 0 or max_consecutive_skips < 1:
            raise KDLightError(
                f"generator_clip must be > 0 and max_consecutive_skips >= 1, "
                f"got {generator_clip} and {max_consecutive_skips}"
            )
        self.generator_optimizer_factory = generator_optimizer
        super().__init__(teacher, temperature=temperature, **kwargs)
        self.hparams.pop("generator_optimizer", None)
        self.automatic_optimization = False
        # batches seen, student steps, generator steps, skipped non-finite steps: in the checkpoint
        self.register_buffer("progress", torch.zeros(4, dtype=torch.long))
        self.consecutive_skips = 0
        self.batches_seen: int | None = None  # progress[0] on the host (None: read it at fit start)
        self._skip_streak: Tensor | None = None  # device twins of consecutive_skips and its maximum
        self._worst_streak: Tensor | None = None

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
        self.generator = AdversarialGenerator(
            hp.generator,
            "generator" if self.uses_generator else "random",
            hp.mask_rate,
            hp.gumbel_tau,
            hp.generator_learning_rate,
            hp.generator_clip,
            self.generator_optimizer_factory,
        )
        self.generator.check_vocabulary(self.teacher, self.student)
        keep_out_of_ddp(self, "generator")  # it steps with its own optimiser, outside the student's backward

    def model_sources(self) -> dict[str, str]:
        sources = super().model_sources()
        if self.generator.network is not None:
            sources["generator"] = self.hparams.generator
        return sources

    def position_limited_models(self) -> dict[str, nn.Module]:
        models = super().position_limited_models()
        if self.generator.network is not None:
            models["generator"] = self.generator.network
        return models

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.generator.prepare(load_tokenizer(self.task.tokenizer or self.teacher_source), self.teacher)

    # ------------------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        student = super().configure_optimizers()
        generator = [self.generator.configure_optimizer()] if self.trains_generator else []
        return [student["optimizer"], *generator], [student["lr_scheduler"]]

    def scheduled_steps(self) -> int:
        # The schedule advances on student steps only: the cycle's generator share is not counted.
        total = super().scheduled_steps()
        if not self.trains_generator:
            return total
        hp = self.hparams
        cycle = hp.generator_steps + hp.student_steps
        return max(1, (total // cycle) * hp.student_steps + max(0, total % cycle - hp.generator_steps))

    def batch_count(self) -> int:
        """Batches trained so far (``progress[0]``), read from the host twin."""
        if self.batches_seen is None:
            self.batches_seen = int(self.progress[0])
        return self.batches_seen

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

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.batches_seen = int(self.progress[0])  # once per fit, before any step
        self._skip_streak = torch.zeros((), dtype=torch.long, device=self.device)
        self._worst_streak = torch.zeros((), dtype=torch.long, device=self.device)

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
        self.progress[0] += 1
        self.batches_seen = self.batch_count() + 1
        if self.logs_this_step():
            if self._worst_streak is not None:  # the device path's stop, read at the logger's cadence
                self.stop_if_diverged(int(self._worst_streak))
            self.log_dict(
                {
                    "train/student_steps": self.progress[1].float(),
                    "train/generator_steps": self.progress[2].float(),
                    "train/skipped_nonfinite": self.progress[3].float(),
                },
                batch_size=len(batch["input_ids"]),
            )
        return loss

    def generator_step(self, batch: dict[str, Tensor]) -> Tensor:
        """One generator update: the divergence on its (straight-through) rewrite, ascended."""
        divergence = self.generator.divergence(self.teacher, self.student, batch, self.kd_loss)[0]
        optimizer = self.optimizers()[1]
        taken = self.step_if_finite(optimizer, divergence, lambda: self.generator.ascend(divergence))
        if taken is None:
            return divergence.detach()
        optimizer.zero_grad()
        self.generator.steps += taken
        self.progress[2] = self.generator.steps  # the run's record mirrors the generator's own count
        if self.logs_this_step():
            self.log_dict(
                {
                    "train/generator_divergence": divergence.detach(),
                    "train/generator_grad_norm": self.generator.grad_norm.detach(),
                    "train/masked_fraction": batch[REWRITE_MASK].float().sum() / batch["attention_mask"].sum(),
                },
                batch_size=len(batch["input_ids"]),
            )
        return divergence.detach()

    def configure_callbacks(self) -> list:
        """The adversary's display (divergence curves, decoded rewrites), kept out of the steps:
        :class:`~kdlight.callbacks_zeroshot.AdversaryMonitor`."""
        if not self.trains_generator:
            return []
        hp = self.hparams
        return [AdversaryMonitor(hp.get("show_rewrites_every", 0), hp.get("track_divergence", True))]

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
        optimizer = self.optimizers()[0] if self.trains_generator else self.optimizers()
        taken = self.step_if_finite(optimizer, loss, lambda: (optimizer.zero_grad(), self.manual_backward(loss)))
        if taken is None:
            return loss.detach()
        self.lr_schedulers().step()
        self.progress[1] += taken
        # a skipped step on the device path logs its non-finite loss: the skip counter says so too
        self.log_training({**parts, "loss": loss}, loss, len(batch["input_ids"]))
        return loss.detach()

    # ------------------------------------------------------------------- the non-finite guard
    def step_if_finite(self, optimizer, loss: Tensor, backward) -> Tensor | int | None:
        """``backward()`` then ``optimizer.step()``, unless ``loss`` is non-finite on any rank: then
        every rank skips, and the skip is counted. Returns the steps taken: 1, or a 0/1 device tensor
        when the optimiser skips on the device (fused Adam/AdamW/SGD read ``found_inf`` and leave
        parameters and state untouched: no host sync); None when the host decided to skip."""
        bad = any_rank(~torch.isfinite(loss.detach()))  # every rank skips together, or DDP would hang
        inner = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper
        if not (inner.param_groups and all(group.get("fused") for group in inner.param_groups)):
            if bad.item():  # other optimisers: the host reads the flag once per step
                self.progress[3] += 1
                self.consecutive_skips += 1
                self.stop_if_diverged(self.consecutive_skips)
                return None
            self.consecutive_skips = 0
            backward()
            optimizer.step()
            return 1
        backward()
        inner.found_inf = bad
        try:
            optimizer.step()
        finally:
            del inner.found_inf
        self.progress[3] += bad.long()
        if self._skip_streak is None:  # outside fit (on_fit_start made them)
            self._skip_streak = torch.zeros((), dtype=torch.long, device=self.device)
            self._worst_streak = torch.zeros((), dtype=torch.long, device=self.device)
        self._skip_streak = (self._skip_streak + 1) * bad.long()
        self._worst_streak = torch.maximum(self._worst_streak, self._skip_streak)
        return 1 - bad.long()

    def stop_if_diverged(self, streak: int) -> None:
        if streak >= self.hparams.max_consecutive_skips:
            raise KDLightError(
                f"{streak} non-finite losses in a row: the run has diverged; lower learning_rate or "
                "generator_learning_rate, or resume from an earlier checkpoint"
            )

    def on_train_end(self) -> None:
        if self._worst_streak is not None:
            self.stop_if_diverged(int(self._worst_streak))
        skipped = int(self.progress[3])
        if skipped:
            rank_zero_warn(f"[kdlight] {skipped} step(s) had a non-finite loss and were skipped")

    # ----------------------------------------------------------------------------- checkpoints
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.batches_seen = None  # re-read from the restored progress buffer at fit start
        state = checkpoint["state_dict"]
        legacy = checkpoint.pop(LEGACY_GENERATOR_KEY, None)  # a checkpoint from before the generator was a submodule
        if legacy is not None:
            state.update({f"generator.network.{k}": v for k, v in legacy.items()})
        if "generator.steps" not in state and "progress" in state:
            state["generator.steps"] = state["progress"][2].clone()


__all__ = ["Inputs", "ZeroShotAdversarialKD"]
