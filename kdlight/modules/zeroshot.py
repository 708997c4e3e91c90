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

from torch import Tensor

from kdlight.errors import KDLightError, check_choice
from kdlight.modules.adversarial import AdversarialRewriting
from kdlight.modules.distiller import BaseDistiller
from kdlight.modules.manual import ManualOptimization
from kdlight.modules.migrations import migrate_zeroshot_checkpoint, zeroshot_generator_optimizer_steps

Inputs = Literal["both", "out_of_domain", "adversarial", "random_tokens"]


class ZeroShotAdversarialKD(AdversarialRewriting, ManualOptimization, BaseDistiller):
    """Args:
    generator: the masked-LM generator sharing the teacher's vocabulary, a name or folder
        (``bert-base-uncased`` for BERT teachers; offline: the export of ``configs/zeroshot/generator.yaml``)
        or ``{class_path: AdversarialGenerator, init_args: {...}}``; its cycle, display and guard arguments
        (``generator_steps``, ``student_steps``, ...): see :class:`~kdlight.modules.adversarial.AdversarialRewriting`.
    inputs: what the student trains on: ``both`` (out-of-domain + adversarial, the paper),
        ``out_of_domain``, ``adversarial``, or ``random_tokens`` (baseline).
    adversarial_weight: weight of the adversarial KD term in the student's loss.
    **kwargs: see :class:`AdversarialRewriting` and :class:`BaseDistiller` (the fine-tuned ``teacher``, the
        student, the KD ``temperature``, optimiser, schedule ...).
    """

    def __init__(self, inputs: Inputs = "both", adversarial_weight: float = 1.0, **kwargs) -> None:
        check_choice("inputs", inputs, Inputs)
        if adversarial_weight < 0:
            raise KDLightError(f"adversarial_weight must be >= 0, got {adversarial_weight}")
        super().__init__(**kwargs)

    @property
    def uses_generator(self) -> bool:
        hp = self.hparams
        return hp.inputs in ("both", "adversarial") and self.generator.perturbation == "generator"

    checkpoint_migrations = (zeroshot_generator_optimizer_steps, migrate_zeroshot_checkpoint)

    # ---------------------------------------------------------------------------- the cycle
    def rewrite_rate(self) -> float | None:
        """The share of real tokens this batch's step rewrites, or None when it rewrites nothing."""
        hp = self.hparams
        if self.is_generator_step():
            return self.generator.mask_rate
        if hp.inputs in ("both", "adversarial", "random_tokens"):
            return 1.0 if hp.inputs == "random_tokens" else self.generator.mask_rate
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
