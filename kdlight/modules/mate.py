"""AdversarialAugmentedKD: supervised KD plus adversarial rewrites of the training text by a masked LM (MATE-KD).

Rashid, Lioutas, Rezagholizadeh, "MATE-KD: Masked Adversarial TExt, a Companion to Knowledge Distillation"
(ACL 2021, arXiv 2105.05912). What we follow, from the authors' code (huawei-noah/Efficient-NLP,
``MATE-KD/train_adversarial_student_bert.py``; line numbers of commit 95760eb):

* Each labelled training batch ``x`` is rewritten by a masked language model: a fraction ``mask_rate`` (30 %,
  ``--p_value``, l. 1148-1153) of the real, non-special tokens is masked (l. 667-688), the generator's logits
  there go through a straight-through hard Gumbel-softmax at tau 1 (l. 727-746, 878), and the one-hot rows
  multiply each model's word embeddings (l. 880-884). Teacher, student and generator share one vocabulary.
* Cycles of 10 generator updates then 100 student updates, each on a fresh batch (l. 846-850, 905, 925). A
  generator update ascends the divergence of the student from the teacher on its rewrite (l. 898-906), with
  AdamW at 5e-7 (l. 797) and the gradient norm clipped at 5 (l. 920).
* A student update descends, with equal weights, the label cross-entropy, KD on the batch and KD on the
  generator's rewrite: ``loss = CE/3 + KD(x')/3 + KD(x)/3`` (l. 936-938, "loss in paper"). Here the batch's part
  is :class:`~kdlight.modules.VanillaKD`'s ``alpha * KD + (1 - alpha) * CE`` and the rewrite's weight is
  ``adversarial_weight``: ``(1 - adversarial_weight) * VanillaKD + adversarial_weight * KD(x')``; the defaults
  (alpha 0.5, adversarial_weight 1/3) give MATE-KD's three thirds. ``adversarial_weight=0`` is VanillaKD.

What we chose (as in :class:`~kdlight.modules.ZeroShotAdversarialKD`, whose generator half this module shares
through :class:`~kdlight.modules.adversarial.AdversarialRewriting`): the student's rewrite is a fresh discrete
sample from the current generator (MATE-KD's forward value is the same hard one-hot); the generator never
proposes special or ``[unusedN]`` tokens; ``trainer.max_steps`` and the schedule count student updates only
(a generator batch is not a student update, so an epoch holds ``student_steps / (generator_steps +
student_steps)`` of its batches' student updates); the default generator is the trained masked LM that
``configs/zeroshot/generator.yaml`` exports (issue 22), not an untrained head.
"""

from __future__ import annotations

from torch import Tensor

from kdlight.errors import KDLightError
from kdlight.modules.adversarial import AdversarialRewriting
from kdlight.modules.manual import ManualOptimization
from kdlight.modules.vanilla import VanillaKD

TRAINED_GENERATOR = "~/.cache/kdlight/generators/minilm-mlm"  # configs/zeroshot/generator.yaml's export


class AdversarialAugmentedKD(AdversarialRewriting, ManualOptimization, VanillaKD):
    """MATE-KD (see the module docstring): VanillaKD on labelled batches, plus KD on a masked-LM generator's
    adversarial rewrites of them.

    Args:
        teacher: the fine-tuned teacher (see :class:`~kdlight.modules.distiller.BaseDistiller`).
        generator: the masked-LM generator in the teacher's vocabulary, a name or folder, or
            ``{class_path: AdversarialGenerator, init_args: {...}}``; default the trained generator export
            (``kdlight fit --config configs/zeroshot/generator.yaml`` builds it) with MATE-KD's settings
            (:attr:`default_generator`). Cycle, display and guard arguments: see
            :class:`~kdlight.modules.adversarial.AdversarialRewriting`.
        alpha: VanillaKD's weight of the KD term against the label cross-entropy on the batch.
        adversarial_weight: the rewrite's share of the student's loss, in [0, 1] (MATE-KD: 1/3; 0: VanillaKD).
        temperature: KD temperature (of every KD term and of the generator's divergence).
        **kwargs: see :class:`~kdlight.modules.distiller.BaseDistiller` (student, optimiser, schedule, cache ...).
    """

    takes_pruned_student = True  # a student pruned to the training text's tokens: the generator keeps to them
    #: MATE-KD's generator: AdamW at 5e-7, gradient norm clipped at 5 (the code's l. 797, 920), 30 % rewritten
    default_generator = {"network": TRAINED_GENERATOR, "learning_rate": 5e-7, "clip": 5.0, "mask_rate": 0.3}

    def __init__(
        self,
        teacher: str,
        alpha: float = 0.5,
        adversarial_weight: float = 1 / 3,
        temperature: float = 1.0,
        **kwargs,
    ) -> None:
        if not 0 <= adversarial_weight <= 1:
            raise KDLightError(f"adversarial_weight must be in [0, 1] (the rewrite's share), got {adversarial_weight}")
        super().__init__(teacher=teacher, alpha=alpha, temperature=temperature, **kwargs)

    def rewrite_rate(self) -> float | None:
        """Every generator batch is rewritten; a student batch only when the rewrite is in its loss."""
        rewrites = self.is_generator_step() or self.hparams.adversarial_weight > 0
        return self.generator.mask_rate if rewrites else None

    def student_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``loss = (1 - w) * (alpha * KD(x) + (1 - alpha) * CE(x)) + w * KD(x')`` and its parts (``kd``, ``ce``,
        ``kd_rewrite``), ``x'`` a fresh rewrite of the planned positions (no gradient to the generator)."""
        weight = self.hparams.adversarial_weight
        parts = self.compute_loss(self.student_logits(batch), self.teacher_logits(batch), batch)  # VanillaKD's
        if weight > 0:
            parts["kd_rewrite"] = self.rewrite_kd(batch)
            parts["loss"] = (1 - weight) * parts["loss"] + weight * parts["kd_rewrite"]
        return parts

    def student_step(self, batch: dict[str, Tensor]) -> Tensor:
        """One student update on :meth:`student_loss` (a non-finite loss is skipped and counted)."""
        parts = self.student_loss(batch)
        loss = parts["loss"]
        if self.step_student(loss, guard=True) is not None:
            self.log_training(parts, loss, len(batch["input_ids"]))
        return loss.detach()


__all__ = ["TRAINED_GENERATOR", "AdversarialAugmentedKD"]
