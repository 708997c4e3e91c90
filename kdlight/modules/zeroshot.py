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
The generator's half of the loop (the component, its step, the cycle, the display) is shared with MATE-KD
(:class:`~kdlight.modules.AdversarialAugmentedKD`) through :class:`~kdlight.modules.adversarial.AdversarialRewriting`;
this module adds the inputs and the student's step.
"""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from kdlight.components.generator import Perturbation
from kdlight.errors import check_choice
from kdlight.modules.adversarial import AdversarialRewriting, check_generator_arguments
from kdlight.modules.distiller import BaseDistiller
from kdlight.modules.manual import ManualOptimization
from kdlight.modules.migrations import migrate_zeroshot_checkpoint, zeroshot_generator_optimizer_steps

Inputs = Literal["both", "out_of_domain", "adversarial", "random_tokens"]


class ZeroShotAdversarialKD(AdversarialRewriting, ManualOptimization, BaseDistiller):
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
        check_generator_arguments(
            perturbation,
            mask_rate,
            gumbel_tau,
            generator_learning_rate,
            generator_clip,
            generator_steps=(generator_steps, 0),
            student_steps=(student_steps, 1),
            adversarial_weight=(adversarial_weight, 0),
            max_consecutive_skips=(max_consecutive_skips, 1),
            show_rewrites_every=(show_rewrites_every, 0),
        )
        self.generator_optimizer_factory = generator_optimizer
        super().__init__(teacher=teacher, temperature=temperature, **kwargs)
        self.hparams.pop("generator_optimizer", None)

    @property
    def uses_generator(self) -> bool:
        hp = self.hparams
        return hp.inputs in ("both", "adversarial") and hp.perturbation == "generator"

    checkpoint_migrations = (zeroshot_generator_optimizer_steps, migrate_zeroshot_checkpoint)

    # ---------------------------------------------------------------------------- the cycle
    def rewrite_rate(self) -> float | None:
        """The share of real tokens this batch's step rewrites, or None when it rewrites nothing."""
        hp = self.hparams
        if self.is_generator_step():
            return hp.mask_rate
        if hp.inputs in ("both", "adversarial", "random_tokens"):
            return 1.0 if hp.inputs == "random_tokens" else hp.mask_rate
        return None

    # ---------------------------------------------------------------------------------- steps
    def student_step(self, batch: dict[str, Tensor]) -> Tensor:
        """One student update, descending KL(T(x) || S(x)) + w KL(T(x') || S(x')): KD on the out-of-domain
        batch and on a fresh rewrite of it (no gradient to the generator), as ``inputs`` selects."""
        hp = self.hparams
        parts: dict[str, Tensor] = {}
        if hp.inputs in ("both", "out_of_domain"):
            parts["kd_out_of_domain"] = self.kd_loss(self.student_logits(batch), self.teacher_logits(batch))
        if hp.inputs in ("both", "adversarial", "random_tokens"):
            parts["kd_adversarial"] = self.rewrite_kd(batch)
        loss = parts.get("kd_out_of_domain", 0) + hp.adversarial_weight * parts.get("kd_adversarial", 0)
        if self.step_student(loss, guard=True) is not None:
            # a skipped step on the device path logs its non-finite loss: the skip counter says so too
            self.log_training({**parts, "loss": loss}, loss, len(batch["input_ids"]))
        return loss.detach()


__all__ = ["Inputs", "ZeroShotAdversarialKD"]
