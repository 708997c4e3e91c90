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

Manual optimisation: a batch is either a generator step or a student step. The student's gradients
are reduced by DDP through ``manual_backward``; the generator is kept outside DDP's buckets and its
gradients are averaged across ranks by hand. A non-finite loss (on any rank) skips that step on
every rank; the skips are counted and logged, never trained on.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from kdlight.data.base import load_tokenizer
from kdlight.errors import KDLightError
from kdlight.models.compact import require_full_vocabulary
from kdlight.models.generator import (
    banned_token_ids,
    choose_mask,
    embed_with_replacements,
    example_uniform,
    load_generator,
    masked_logits,
    random_replacements,
    sample_replacements,
)
from kdlight.modules.base import BaseDistiller
from kdlight.modules.task import model_inputs

INPUTS = ("both", "out_of_domain", "adversarial", "random_tokens")
PERTURBATIONS = ("generator", "random")
GENERATOR_KEY = "kdlight_generator"


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
        **kwargs: see :class:`BaseDistiller` (student, optimiser, schedule ...).
    """

    def __init__(
        self,
        teacher: str,
        generator: str = "bert-base-uncased",
        inputs: str = "both",
        perturbation: str = "generator",
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
        **kwargs,
    ) -> None:
        if inputs not in INPUTS:
            raise KDLightError(f"inputs must be one of {INPUTS}, got {inputs!r}")
        if perturbation not in PERTURBATIONS:
            raise KDLightError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
        if not 0 < mask_rate <= 1:
            raise KDLightError(f"mask_rate must be in (0, 1], got {mask_rate}")
        if generator_steps < 0 or student_steps < 1:
            raise KDLightError(f"generator_steps must be >= 0 and student_steps >= 1, got {generator_steps} and {student_steps}")
        if gumbel_tau <= 0:
            raise KDLightError(f"gumbel_tau must be > 0, got {gumbel_tau}")
        if generator_learning_rate < 0 or adversarial_weight < 0:
            name, value = (("generator_learning_rate", generator_learning_rate) if generator_learning_rate < 0
                           else ("adversarial_weight", adversarial_weight))
            raise KDLightError(f"{name} must be >= 0, got {value}")
        if generator_clip <= 0 or max_consecutive_skips < 1:
            raise KDLightError(f"generator_clip must be > 0 and max_consecutive_skips >= 1, got {generator_clip} and {max_consecutive_skips}")
        self.generator_source = generator
        self.generator_optimizer_factory = generator_optimizer
        super().__init__(teacher, temperature=temperature, **kwargs)
        self.hparams.pop("generator_optimizer", None)
        self.automatic_optimization = False
        # batches seen, student steps, generator steps, skipped non-finite steps: in the checkpoint
        self.register_buffer("progress", torch.zeros(4, dtype=torch.long))
        self.consecutive_skips = 0

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
        self.__dict__["_generator"] = None
        if self.uses_generator:
            generator = load_generator(self.generator_source).train()
            vocab = {"teacher": self.teacher.config.vocab_size, "student": self.student.config.vocab_size,
                     "generator": generator.config.vocab_size}
            if len(set(vocab.values())) != 1:
                raise KDLightError(
                    f"teacher, student and generator must share one vocabulary (the generator's one-hot tokens multiply "
                    f"each model's embeddings), got sizes {vocab}; pick a generator from the teacher's model family"
                )
            require_full_vocabulary(self.student, "zero-shot KD's generator")
            self.__dict__["_generator"] = generator  # outside DDP's buckets: see side_modules

    def model_sources(self) -> dict[str, str]:
        sources = super().model_sources()
        if self.uses_generator:
            sources["generator"] = self.generator_source
        return sources

    def position_limited_models(self) -> dict[str, nn.Module]:
        models = super().position_limited_models()
        if self.uses_generator:
            models["generator"] = self.generator
        return models

    @property
    def generator(self) -> nn.Module:
        generator = self.__dict__.get("_generator")
        if generator is None:
            raise KDLightError(f"no generator with inputs={self.hparams.inputs!r}, perturbation={self.hparams.perturbation!r}")
        return generator

    def side_modules(self) -> dict[str, nn.Module]:
        generator = self.__dict__.get("_generator")
        return {"generator": generator} if generator is not None else {}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            tokenizer = load_tokenizer(self.hparams.tokenizer or self.teacher_source)
            if self.uses_generator and tokenizer.mask_token_id is None:
                raise KDLightError(f"the tokenizer of {self.hparams.tokenizer!r} has no mask token; the MLM generator needs one")
            self.mask_token_id = tokenizer.mask_token_id
            self.register_buffer("special_ids", torch.tensor(tokenizer.all_special_ids, device=self.device), persistent=False)
            self.register_buffer("banned_ids", torch.tensor(banned_token_ids(tokenizer), device=self.device), persistent=False)

    # ------------------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        student = super().configure_optimizers()
        if not self.trains_generator:
            return [student["optimizer"]], [student["lr_scheduler"]]
        params = [p for p in self.generator.parameters() if p.requires_grad]
        if self.generator_optimizer_factory is not None:
            generator_opt = self.generator_optimizer_factory(params)
        else:
            generator_opt = torch.optim.AdamW(params, lr=self.hparams.generator_learning_rate)
        return [student["optimizer"], generator_opt], [student["lr_scheduler"]]

    def scheduled_steps(self) -> int:
        # The schedule advances on student steps only: the cycle's generator share is not counted.
        total = super().scheduled_steps()
        if not self.trains_generator:
            return total
        hp = self.hparams
        cycle = hp.generator_steps + hp.student_steps
        return max(1, (total // cycle) * hp.student_steps + max(0, total % cycle - hp.generator_steps))

    def is_generator_step(self) -> bool:
        hp = self.hparams
        return self.trains_generator and int(self.progress[0]) % (hp.generator_steps + hp.student_steps) < hp.generator_steps

    # --------------------------------------------------------------------------------- inputs
    # Every random choice (which tokens to mask, the Gumbel noise, random tokens) is drawn per example
    # from a generator seeded by (run seed, batch counter, example idx, purpose): the same draws on one
    # process as on N, whatever the batch split, and reproducible on resume.
    MASK, GUMBEL, RANDOM = 0, 1, 2

    def example_noise(self, batch: dict[str, Tensor], purpose: int, numels: list[int]) -> Tensor:
        seed, step = int(os.environ.get("PL_GLOBAL_SEED", 0)), int(self.progress[0])
        keys = [(seed, step, idx, purpose) for idx in batch["idx"].tolist()]
        return torch.cat(example_uniform(keys, numels, batch["input_ids"].device))

    def mask_batch(self, batch: dict[str, Tensor], rate: float) -> Tensor:
        ids = batch["input_ids"]
        width = max(ids.shape[1], self.teacher.config.max_position_embeddings)
        scores = self.example_noise(batch, self.MASK, [width] * len(ids)).view(len(ids), width)[:, : ids.shape[1]]
        return choose_mask(ids, batch["attention_mask"], self.special_ids, rate, scores)

    def generator_one_hot(self, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
        """One-hot proposals (straight-through) at the masked positions, one row per position."""
        masked_ids = batch["input_ids"].masked_fill(mask, self.mask_token_id)
        inputs = {**model_inputs(batch), "input_ids": masked_ids}
        logits = masked_logits(self.generator, inputs, mask)
        vocab = logits.shape[-1]
        uniform = self.example_noise(batch, self.GUMBEL, [int(n) * vocab for n in mask.sum(1).tolist()]).view(-1, vocab)
        return sample_replacements(logits, self.banned_ids, self.hparams.gumbel_tau, uniform)

    @torch.no_grad()
    def rewritten_ids(self, batch: dict[str, Tensor]) -> Tensor:
        """A discrete rewrite of the batch for a student step (no gradient to the generator)."""
        hp = self.hparams
        mask = self.mask_batch(batch, 1.0 if hp.inputs == "random_tokens" else hp.mask_rate)
        if hp.inputs == "random_tokens" or hp.perturbation == "random":
            vocab = self.teacher.get_input_embeddings().weight.shape[0]
            uniform = self.example_noise(batch, self.RANDOM, mask.sum(1).tolist())
            replacements = random_replacements(int(mask.sum()), vocab, self.banned_ids, mask.device, uniform)
        else:
            replacements = self.generator_one_hot(batch, mask).argmax(-1)
        return batch["input_ids"].masked_scatter(mask, replacements)

    # ---------------------------------------------------------------------------------- steps
    def all_ranks_finite(self, loss: Tensor) -> bool:
        """False (on every rank) when the loss is non-finite on any rank; counts the skip."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if dist.is_available() and dist.is_initialized() and self.trainer.world_size > 1:
            dist.all_reduce(bad)  # every rank takes the same branch, or DDP would hang
        if bad.item() == 0:
            self.consecutive_skips = 0
            return True
        self.progress[3] += 1
        self.consecutive_skips += 1
        if self.consecutive_skips >= self.hparams.max_consecutive_skips:
            raise KDLightError(
                f"{self.consecutive_skips} non-finite losses in a row: the run has diverged; lower learning_rate or "
                "generator_learning_rate, or resume from an earlier checkpoint"
            )
        return False

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        step = self.generator_step if self.is_generator_step() else self.student_step
        loss = step(batch)
        self.progress[0] += 1
        self.log_dict({"train/student_steps": self.progress[1].float(), "train/generator_steps": self.progress[2].float(),
                       "train/skipped_nonfinite": self.progress[3].float()}, batch_size=len(batch["input_ids"]))
        return loss

    def student_step(self, batch: dict[str, Tensor]) -> Tensor:
        hp = self.hparams
        student_opt = self.optimizers()[0] if self.trains_generator else self.optimizers()
        parts: dict[str, Tensor] = {}
        if hp.inputs in ("both", "out_of_domain"):
            parts["kd_out_of_domain"] = self.kd_loss(self.student_logits(batch), self.teacher_logits(batch))
        if hp.inputs in ("both", "adversarial", "random_tokens"):
            rewritten = {**batch, "input_ids": self.rewritten_ids(batch)}
            with torch.no_grad():
                teacher = self.teacher(**model_inputs(rewritten)).logits
            parts["kd_adversarial"] = self.kd_loss(self.student_logits(rewritten), teacher)
        loss = parts.get("kd_out_of_domain", 0) + hp.adversarial_weight * parts.get("kd_adversarial", 0)
        if not self.all_ranks_finite(loss):
            return loss.detach()
        student_opt.zero_grad()
        self.manual_backward(loss)
        student_opt.step()
        self.lr_schedulers().step()
        self.progress[1] += 1
        size = len(batch["input_ids"])
        self.log_dict({f"train/{k}": v.detach() for k, v in parts.items()}, batch_size=size)
        self.log("train/loss", loss.detach(), batch_size=size)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=size)
        return loss.detach()

    def generator_step(self, batch: dict[str, Tensor]) -> Tensor:
        generator_opt = self.optimizers()[1]
        mask = self.mask_batch(batch, self.hparams.mask_rate)
        one_hot = self.generator_one_hot(batch, mask)
        inputs = {k: v for k, v in model_inputs(batch).items() if k != "input_ids"}
        teacher = self.teacher(inputs_embeds=embed_with_replacements(self.teacher, batch["input_ids"], mask, one_hot), **inputs).logits
        student = self.student(inputs_embeds=embed_with_replacements(self.student, batch["input_ids"], mask, one_hot), **inputs).logits
        divergence = self.kd_loss(student, teacher)
        if not self.all_ranks_finite(divergence):
            return divergence.detach()
        params = [p for p in self.generator.parameters() if p.requires_grad]
        # Only the generator's gradients: the student's are not needed, and leaving them out keeps
        # DDP's reducer (which owns the student) out of this backward pass.
        grads = torch.autograd.grad(-divergence, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if dist.is_available() and dist.is_initialized() and self.trainer.world_size > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= self.trainer.world_size
            grads = list(torch.split(flat, [g.numel() for g in grads]))
        for p, g in zip(params, grads):
            p.grad = g.view_as(p)
        norm = torch.nn.utils.clip_grad_norm_(params, self.hparams.generator_clip)
        generator_opt.step()
        generator_opt.zero_grad()
        self.progress[2] += 1
        size = len(batch["input_ids"])
        self.log_dict({"train/generator_divergence": divergence.detach(), "train/generator_grad_norm": norm.detach(),
                       "train/masked_fraction": mask.float().sum() / batch["attention_mask"].sum()}, batch_size=size)
        return divergence.detach()

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.side_modules():
            checkpoint[GENERATOR_KEY] = {k: v.detach().cpu() for k, v in self.generator.state_dict().items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if GENERATOR_KEY in checkpoint and self.side_modules():
            self.generator.load_state_dict(checkpoint[GENERATOR_KEY])

    def on_train_end(self) -> None:
        skipped = int(self.progress[3])
        if skipped:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"[kdlight] {skipped} step(s) had a non-finite loss and were skipped")


__all__ = ["ZeroShotAdversarialKD", "INPUTS", "PERTURBATIONS"]
