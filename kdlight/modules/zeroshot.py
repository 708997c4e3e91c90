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

No host syncs in a step: the batch counter has a host twin; which tokens to rewrite (and so how
many noise draws each example needs) is worked out on the host before the batch moves to the
device, from per-example seeds; the non-finite guard skips the update on the device when the
optimiser can (``fused`` Adam/AdamW/SGD, kdlight's default on CUDA: ``found_inf``), with counters
on the device and the ``max_consecutive_skips`` stop checked at the logger's cadence. With other
optimisers (and kdlight's CPU defaults) it reads the flag on the host once per step, as before, and
stops at exactly ``max_consecutive_skips``. On the device path a skipped batch still advances the
learning-rate schedule and Lightning's step count (both live on the host).
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
    allowed_token_ids,
    banned_token_ids,
    choose_mask,
    embed_with_replacements,
    example_uniform,
    load_generator,
    mask_positions,
    masked_logits,
    random_replacements,
    sample_replacements,
    scatter_positions,
)
from kdlight.modules.distiller import BaseDistiller
from kdlight.modules.task import fused_on_gpu, model_inputs

INPUTS = ("both", "out_of_domain", "adversarial", "random_tokens")
PERTURBATIONS = ("generator", "random")
GENERATOR_KEY = "kdlight_generator"
# what on_before_batch_transfer adds to a training batch (host-side decisions; see example_noise)
NOISE_KEYS, REWRITE_MASK, REWRITE_POSITIONS, REWRITE_COUNTS = (
    "kdlight_noise_keys", "kdlight_rewrite_mask", "kdlight_rewrite_positions", "kdlight_rewrite_counts")


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
            tokenizer = load_tokenizer(self.task.tokenizer or self.teacher_source)
            if self.uses_generator and tokenizer.mask_token_id is None:
                raise KDLightError(f"the tokenizer of {self.task.tokenizer!r} has no mask token; the MLM generator needs one")
            self.mask_token_id = tokenizer.mask_token_id
            self.register_buffer("special_ids", torch.tensor(tokenizer.all_special_ids, device=self.device), persistent=False)
            self.register_buffer("banned_ids", torch.tensor(banned_token_ids(tokenizer), device=self.device), persistent=False)
            vocab = self.teacher.get_input_embeddings().weight.shape[0]
            # found once here: finding them per step (nonzero) would read a device tensor back every step
            self.register_buffer("allowed_ids", allowed_token_ids(vocab, self.banned_ids.cpu()).to(self.device), persistent=False)
            self.special_ids_host = torch.tensor(tokenizer.all_special_ids)

    # ------------------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        student = super().configure_optimizers()
        if not self.trains_generator:
            return [student["optimizer"]], [student["lr_scheduler"]]
        params = [p for p in self.generator.parameters() if p.requires_grad]
        if self.generator_optimizer_factory is not None:
            generator_opt = self.generator_optimizer_factory(params)
        else:
            generator_opt = torch.optim.AdamW(params, lr=self.hparams.generator_learning_rate, **fused_on_gpu(self.device))
        return [student["optimizer"], generator_opt], [student["lr_scheduler"]]

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
        return self.trains_generator and self.batch_count() % (hp.generator_steps + hp.student_steps) < hp.generator_steps

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.batches_seen = int(self.progress[0])  # once per fit, before any step
        self._skip_streak = torch.zeros((), dtype=torch.long, device=self.device)
        self._worst_streak = torch.zeros((), dtype=torch.long, device=self.device)

    # --------------------------------------------------------------------------------- inputs
    # Every random choice (which tokens to mask, the Gumbel noise, random tokens) is drawn per example
    # from a generator seeded by (run seed, batch counter, example idx, purpose): the same draws on one
    # process as on N, whatever the batch split, and reproducible on resume.
    MASK, GUMBEL, RANDOM = 0, 1, 2

    def noise_keys(self, batch: dict[str, Tensor]) -> list[tuple[int, int, int]]:
        """(run seed, batch counter, example idx) per example: taken on the host before the batch
        moves (see on_before_batch_transfer), or read back from the device when called outside fit."""
        if NOISE_KEYS in batch:
            return batch[NOISE_KEYS]
        seed, step = int(os.environ.get("PL_GLOBAL_SEED", "0")), self.batch_count()
        return [(seed, step, idx) for idx in batch["idx"].tolist()]

    def example_noise(self, batch: dict[str, Tensor], purpose: int, numels: list[int], device=None) -> Tensor:
        keys = [(*key, purpose) for key in self.noise_keys(batch)]
        return torch.cat(example_uniform(keys, numels, device if device is not None else batch["input_ids"].device))

    def mask_rate_now(self) -> float | None:
        """The rewrite rate of this batch's step, or None when the step rewrites nothing."""
        hp = self.hparams
        if self.is_generator_step():
            return hp.mask_rate
        if hp.inputs in ("both", "adversarial", "random_tokens"):
            return 1.0 if hp.inputs == "random_tokens" else hp.mask_rate
        return None

    def mask_batch(self, batch: dict[str, Tensor], rate: float) -> Tensor:
        if REWRITE_MASK in batch:  # chosen on the host before the batch moved (on_before_batch_transfer)
            return batch[REWRITE_MASK]
        ids = batch["input_ids"]
        width = max(ids.shape[1], self.teacher.config.max_position_embeddings)
        scores = self.example_noise(batch, self.MASK, [width] * len(ids)).view(len(ids), width)[:, : ids.shape[1]]
        return choose_mask(ids, batch["attention_mask"], self.special_ids.to(ids.device), rate, scores)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Every decision the step would otherwise read back from the device, made on the host copy:
        the examples' noise keys, which tokens to rewrite, and how many per example (the sizes of
        their noise draws). The mask's draws come from the same per-example seeds as before."""
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        if self._trainer is None or not self.trainer.training or not isinstance(batch, dict) or "idx" not in batch:
            return batch
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        batch[NOISE_KEYS] = [(seed, self.batch_count(), idx) for idx in batch["idx"].tolist()]
        rate = self.mask_rate_now()
        if rate is not None:
            ids = batch["input_ids"]
            width = max(ids.shape[1], self.teacher.config.max_position_embeddings)
            scores = self.example_noise(batch, self.MASK, [width] * len(ids), ids.device).view(len(ids), width)[:, : ids.shape[1]]
            mask = choose_mask(ids, batch["attention_mask"], self.special_ids_host, rate, scores)
            batch[REWRITE_MASK], batch[REWRITE_POSITIONS] = mask, mask_positions(mask)
            batch[REWRITE_COUNTS] = mask.sum(1).tolist()
        return batch

    def rewrite_counts(self, batch: dict[str, Tensor], mask: Tensor) -> list[int]:
        return batch[REWRITE_COUNTS] if REWRITE_COUNTS in batch else mask.sum(1).tolist()

    def generator_one_hot(self, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
        """One-hot proposals (straight-through) at the masked positions, one row per position."""
        masked_ids = batch["input_ids"].masked_fill(mask, self.mask_token_id)
        inputs = {**model_inputs(batch), "input_ids": masked_ids}
        logits = masked_logits(self.generator, inputs, mask, batch.get(REWRITE_POSITIONS))
        vocab = logits.shape[-1]
        uniform = self.example_noise(batch, self.GUMBEL, [n * vocab for n in self.rewrite_counts(batch, mask)]).view(-1, vocab)
        return sample_replacements(logits, self.banned_ids, self.hparams.gumbel_tau, uniform)

    @torch.no_grad()
    def rewritten_ids(self, batch: dict[str, Tensor]) -> Tensor:
        """A discrete rewrite of the batch for a student step (no gradient to the generator)."""
        hp = self.hparams
        mask = self.mask_batch(batch, 1.0 if hp.inputs == "random_tokens" else hp.mask_rate)
        if hp.inputs == "random_tokens" or hp.perturbation == "random":
            vocab = self.teacher.get_input_embeddings().weight.shape[0]
            counts = self.rewrite_counts(batch, mask)
            uniform = self.example_noise(batch, self.RANDOM, counts)
            replacements = random_replacements(sum(counts), vocab, self.banned_ids, mask.device, uniform, self.allowed_ids)
        else:
            replacements = self.generator_one_hot(batch, mask).argmax(-1)
        return scatter_positions(batch["input_ids"], mask, batch.get(REWRITE_POSITIONS), replacements)

    # ---------------------------------------------------------------------------------- steps
    def nonfinite_flag(self, loss: Tensor) -> Tensor:
        """1.0 (on every rank) when the loss is non-finite on any rank, else 0.0; stays on the device."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if dist.is_available() and dist.is_initialized() and self.trainer.world_size > 1:
            dist.all_reduce(bad)  # every rank skips together, or DDP would hang
        return (bad > 0).float().reshape(())

    @staticmethod
    def skips_on_device(optimizer) -> bool:
        """Fused Adam/AdamW/SGD read a ``found_inf`` tensor and leave parameters and state untouched
        when it is set: a skipped step with no host sync."""
        optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper
        return bool(optimizer.param_groups) and all(group.get("fused") for group in optimizer.param_groups)

    def all_ranks_finite(self, loss: Tensor) -> bool:
        """False (on every rank) when the loss is non-finite on any rank; counts the skip. Reads the
        flag on the host: the path for optimisers that cannot skip on the device."""
        if self.nonfinite_flag(loss).item() == 0:
            self.consecutive_skips = 0
            return True
        self.progress[3] += 1
        self.consecutive_skips += 1
        self.stop_if_diverged(self.consecutive_skips)
        return False

    def stop_if_diverged(self, streak: int) -> None:
        if streak >= self.hparams.max_consecutive_skips:
            raise KDLightError(
                f"{streak} non-finite losses in a row: the run has diverged; lower learning_rate or "
                "generator_learning_rate, or resume from an earlier checkpoint"
            )

    def step_unless_nonfinite(self, optimizer, loss: Tensor, backward) -> Tensor:
        """Skip ``optimizer``'s update on the device when ``loss`` is non-finite (any rank); returns the
        0/1 flag. ``backward()`` fills the gradients."""
        bad = self.nonfinite_flag(loss)
        backward()
        inner = getattr(optimizer, "optimizer", optimizer)
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
        return bad

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        step = self.generator_step if self.is_generator_step() else self.student_step
        loss = step(batch)
        self.progress[0] += 1
        self.batches_seen = self.batch_count() + 1
        if self.logs_this_step():
            if self._worst_streak is not None:  # the device path's stop, read at the logger's cadence
                self.stop_if_diverged(int(self._worst_streak))
            self.log_dict({"train/student_steps": self.progress[1].float(), "train/generator_steps": self.progress[2].float(),
                           "train/skipped_nonfinite": self.progress[3].float()}, batch_size=len(batch["input_ids"]))
        return loss

    def on_train_end(self) -> None:
        if self._worst_streak is not None:
            self.stop_if_diverged(int(self._worst_streak))
        skipped = int(self.progress[3])
        if skipped:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"[kdlight] {skipped} step(s) had a non-finite loss and were skipped")

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
        size = len(batch["input_ids"])
        if self.skips_on_device(student_opt):
            student_opt.zero_grad()
            bad = self.step_unless_nonfinite(student_opt, loss, lambda: self.manual_backward(loss))
            self.lr_schedulers().step()
            self.progress[1] += 1 - bad.long()
        else:
            if not self.all_ranks_finite(loss):
                return loss.detach()
            student_opt.zero_grad()
            self.manual_backward(loss)
            student_opt.step()
            self.lr_schedulers().step()
            self.progress[1] += 1
        # a skipped step on the device path logs its non-finite loss: the skip counter says so too
        self.log_training({**parts, "loss": loss}, loss, size)
        return loss.detach()

    def generator_step(self, batch: dict[str, Tensor]) -> Tensor:
        generator_opt = self.optimizers()[1]
        mask = self.mask_batch(batch, self.hparams.mask_rate)
        one_hot = self.generator_one_hot(batch, mask)
        inputs = {k: v for k, v in model_inputs(batch).items() if k != "input_ids"}
        positions = batch.get(REWRITE_POSITIONS)
        teacher = self.teacher(inputs_embeds=embed_with_replacements(self.teacher, batch["input_ids"], mask, one_hot, positions),
                               **inputs).logits
        student = self.student(inputs_embeds=embed_with_replacements(self.student, batch["input_ids"], mask, one_hot, positions),
                               **inputs).logits
        divergence = self.kd_loss(student, teacher)
        on_device = self.skips_on_device(generator_opt)
        if not on_device and not self.all_ranks_finite(divergence):
            return divergence.detach()
        params = [p for p in self.generator.parameters() if p.requires_grad]
        norm: list[Tensor] = []

        def backward() -> None:
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
            norm.append(torch.nn.utils.clip_grad_norm_(params, self.hparams.generator_clip))

        if on_device:
            bad = self.step_unless_nonfinite(generator_opt, divergence, backward)
            self.progress[2] += 1 - bad.long()
        else:
            backward()
            generator_opt.step()
            self.progress[2] += 1
        generator_opt.zero_grad()
        if self.logs_this_step():
            self.log_dict({"train/generator_divergence": divergence.detach(), "train/generator_grad_norm": norm[0].detach(),
                           "train/masked_fraction": mask.float().sum() / batch["attention_mask"].sum()},
                          batch_size=len(batch["input_ids"]))
        return divergence.detach()

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.side_modules():
            checkpoint[GENERATOR_KEY] = {k: v.detach().cpu() for k, v in self.generator.state_dict().items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.batches_seen = None  # re-read from the restored progress buffer at fit start
        if GENERATOR_KEY in checkpoint and self.side_modules():
            self.generator.load_state_dict(checkpoint[GENERATOR_KEY])



__all__ = ["ZeroShotAdversarialKD", "INPUTS", "PERTURBATIONS"]
