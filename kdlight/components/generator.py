"""AdversarialGenerator: the rewriting half of zero-shot adversarial KD, as a plain torch module.

Rashid et al. (2021) train a generator to rewrite out-of-domain text where teacher and student
disagree most. This module is that generator and everything it does; the LightningModule
(:class:`kdlight.modules.ZeroShotAdversarialKD`) only orders its steps and the student's:

* ``network``: the masked language model (:func:`kdlight.models.hf.load_generator`), or None when
  the rewrites are uniformly random tokens (``perturbation="random"``: nothing to learn or load);
* the rewrite maths (:mod:`kdlight.components.rewriting`): :meth:`plan` picks the tokens to rewrite,
  :meth:`propose` turns the network's logits there into straight-through one-hot rows, :meth:`embed`
  feeds them to a model through its own word embeddings, :meth:`rewrite` makes a discrete rewrite;
* the calls any distiller can make (zero-shot here; supervised MATE-KD augmentation alike):
  :meth:`divergence` (teacher/student divergence on the straight-through rewrite, differentiable in
  the network), :meth:`ascend` (its update), :meth:`rewrite_batch` (a rewritten copy of a batch);
* its optimisation: :meth:`configure_optimizer` (AdamW, fused on CUDA, or a factory from YAML) and
  :meth:`ascend` (the gradient of *minus* the divergence, averaged across ranks and clipped); the
  ``steps`` buffer counts its updates.

It is an ordinary registered submodule, so ``.to()``, ``state_dict`` and checkpoints handle it. It
steps outside the student's backward pass, so its owner hides it from DDP's reducer with
:func:`kdlight.distributed.keep_out_of_ddp` and :meth:`ascend` reduces its gradients itself.

Every random choice (which tokens, the Gumbel noise, random tokens) is drawn per example from a
generator seeded by (run seed, batch counter, example idx, purpose): the same draws on one process
as on N, whatever the batch split, and reproducible on resume. :meth:`plan` runs on the host copy of
a batch before it moves to the device, so a step reads nothing back from the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from kdlight.components.rewriting import (
    allowed_token_ids,
    banned_token_ids,
    choose_mask,
    embed_with_replacements,
    example_uniform,
    mask_positions,
    masked_logits,
    random_replacements,
    sample_replacements,
    scatter_positions,
)
from kdlight.data.base import MODEL_INPUTS
from kdlight.distributed import mean_across_ranks, run_seed
from kdlight.errors import KDLightError, check_choice
from kdlight.models.compact import require_full_vocabulary
from kdlight.models.embeddings import PrunedVocabularyEmbedding
from kdlight.models.hf import load_generator
from kdlight.optim import fused_on_gpu

Perturbation = Literal["generator", "random"]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]  # what Lightning's OptimizerCallable is

# What plan() adds to a batch: the host-side decisions a step would otherwise read back from the device.
NOISE_KEYS, REWRITE_MASK, REWRITE_POSITIONS, REWRITE_COUNTS = (
    "kdlight_noise_keys",
    "kdlight_rewrite_mask",
    "kdlight_rewrite_positions",
    "kdlight_rewrite_counts",
)
# The purposes of the per-example noise: which tokens, the Gumbel noise, random tokens.
MASK, GUMBEL, RANDOM = 0, 1, 2


class AdversarialGenerator(nn.Module):
    """Args (the ``generator:`` init argument of the adversarial distillers, by ``class_path``):
    network: an ``AutoModelForMaskedLM`` hub name or folder sharing the teacher's vocabulary.
    perturbation: ``generator`` (the network's proposals) or ``random`` (uniformly random
        tokens; no network is loaded).
    mask_rate: fraction of each example's real tokens that are rewritten.
    gumbel_tau: Gumbel-softmax temperature.
    learning_rate: the default optimiser's (AdamW).
    clip: gradient-norm clip of each update.
    optimizer: replaces the default optimiser (a factory of the parameters, as from YAML).

    The settings are checked when it is built; the network loads in :meth:`load` (the owner's
    ``configure_models``), so a config is validated before any model is read.
    """

    #: the settings to_config records besides the network (an optimiser factory is not data)
    SETTINGS = ("perturbation", "mask_rate", "gumbel_tau", "learning_rate", "clip")

    def __init__(
        self,
        network: str = "bert-base-uncased",
        perturbation: Perturbation = "generator",
        mask_rate: float = 0.3,
        gumbel_tau: float = 1.0,
        learning_rate: float = 1e-6,
        clip: float = 1.0,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        check_choice("generator.perturbation", perturbation, Perturbation)
        if not 0 < mask_rate <= 1:
            raise KDLightError(f"generator mask_rate must be in (0, 1], got {mask_rate}")
        if gumbel_tau <= 0:
            raise KDLightError(f"generator gumbel_tau must be > 0, got {gumbel_tau}")
        if learning_rate < 0:
            raise KDLightError(f"generator learning_rate must be >= 0, got {learning_rate}")
        if clip <= 0:
            raise KDLightError(f"generator clip must be > 0, got {clip}")
        self.source, self.perturbation = str(network), perturbation
        self.mask_rate, self.gumbel_tau, self.learning_rate, self.clip = mask_rate, gumbel_tau, learning_rate, clip
        self.optimizer_factory = optimizer
        self.network: nn.Module | None = None  # see load()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # updates taken
        # the data's token ids (see prepare): special ones are never rewritten, banned ones never proposed
        for name in ("special_ids", "banned_ids", "allowed_ids"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.long), persistent=False)
        self.special_ids_host = torch.zeros(0, dtype=torch.long)
        self.mask_token_id: int | None = None
        self.student_token_ids: torch.Tensor | None = None  # a pruned student's kept ids (see check_vocabulary)
        self.vocab_size = self.positions = 0
        self.grad_norm: Tensor | None = None  # of the last update, before clipping (for logging)

    def load(self, needed: bool = True) -> AdversarialGenerator:
        """Load the masked LM, once, when the rewrites come from it (``needed``: the owner's method uses them)."""
        if needed and self.perturbation == "generator" and self.network is None:
            self.network = load_generator(self.source).train()
        return self

    def to_config(self) -> dict:
        """``{"class_path", "init_args"}`` as plain data (hyper-parameters, checkpoints); an optimiser factory is
        not data: a generator rebuilt from this gets the default optimiser."""
        settings = {k: getattr(self, k) for k in self.SETTINGS}
        return {"class_path": "AdversarialGenerator", "init_args": {"network": self.source, **settings}}

    @staticmethod
    def from_config(config: AdversarialGenerator | dict | str | None, **defaults) -> AdversarialGenerator:
        """A generator from an instance, a :meth:`to_config` dict (its ``init_args`` over this class's defaults,
        as the CLI builds it), a network name or folder (``defaults`` for the rest), or None (``defaults``)."""
        if isinstance(config, AdversarialGenerator):
            return config
        if config is None or isinstance(config, (str, Path)):
            return AdversarialGenerator(**{**defaults, **({"network": str(config)} if config is not None else {})})
        known = ("AdversarialGenerator", f"{__name__}.AdversarialGenerator", "kdlight.components.AdversarialGenerator")
        if not isinstance(config, dict) or config.get("class_path", "AdversarialGenerator") not in known:
            raise KDLightError(
                f"generator {config!r} is not a generator; give a masked-LM name or folder, or "
                "{class_path: AdversarialGenerator, init_args: {network: ..., mask_rate: ...}}"
            )
        return AdversarialGenerator(**(config.get("init_args") or {}))

    # ----------------------------------------------------------------------------- setup
    def check_vocabulary(self, teacher: nn.Module, student: nn.Module, pruned_student: bool = False) -> None:
        """The one-hot rows multiply each model's embeddings: one vocabulary for all three. ``pruned_student``: a
        student with a pruned vocabulary is taken, and :meth:`prepare` bans the tokens it does not keep (they would
        reach it as ``[UNK]`` but the teacher as themselves: a gap the student cannot close)."""
        embeddings = student.get_input_embeddings()
        if pruned_student and isinstance(embeddings, PrunedVocabularyEmbedding):  # random tokens keep to them too
            self.student_token_ids = embeddings.kept_token_ids.cpu()
        if self.network is None:
            return
        vocab = {
            "teacher": teacher.config.vocab_size,
            "student": student.config.vocab_size,
            "generator": self.network.config.vocab_size,
        }
        if len(set(vocab.values())) != 1:
            raise KDLightError(
                f"teacher, student and generator must share one vocabulary (the generator's one-hot tokens multiply "
                f"each model's embeddings), got sizes {vocab}; pick a generator from the teacher's model family"
            )
        if self.student_token_ids is None:
            require_full_vocabulary(student, "zero-shot KD's generator")

    def prepare(self, tokenizer, teacher: nn.Module) -> None:
        """Take the data's tokenizer and the teacher's vocabulary and positions (before fitting)."""
        if self.network is not None and tokenizer.mask_token_id is None:
            raise KDLightError(
                f"the tokenizer {tokenizer.name_or_path!r} has no mask token; the MLM generator needs one"
            )
        device = self.steps.device
        self.mask_token_id = tokenizer.mask_token_id
        self.special_ids_host = torch.tensor(tokenizer.all_special_ids)
        self.special_ids = self.special_ids_host.to(device)
        self.vocab_size = teacher.get_input_embeddings().weight.shape[0]
        banned = banned_token_ids(tokenizer)
        if self.student_token_ids is not None:  # a pruned student's unkept tokens (see check_vocabulary)
            unkept = torch.ones(self.vocab_size, dtype=torch.bool)
            unkept[self.student_token_ids] = False
            banned = sorted(set(banned) | set(unkept.nonzero().flatten().tolist()))
        self.banned_ids = torch.tensor(banned, device=device)
        self.positions = teacher.config.max_position_embeddings
        # found once here: finding them per step (nonzero) would read a device tensor back every step
        self.allowed_ids = allowed_token_ids(self.vocab_size, self.banned_ids.cpu()).to(device)

    # ---------------------------------------------------------------------- optimisation
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of the network: the YAML factory's, or AdamW (fused on CUDA)."""
        params = self.trainable_parameters()
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        return torch.optim.AdamW(params, lr=self.learning_rate, **fused_on_gpu(self.steps.device))

    def ascend(self, divergence: Tensor) -> Tensor:
        """Set the network's gradients to those of ``-divergence`` (the generator maximises it),
        averaged across ranks and clipped; returns their norm before clipping (also ``grad_norm``).

        Only the network's gradients are computed: the student's are not needed, and leaving them
        out keeps DDP's reducer (which owns the student) out of this backward pass."""
        params = self.trainable_parameters()
        grads = torch.autograd.grad(-divergence, params, allow_unused=True)
        grads = mean_across_ranks([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)])
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.grad_norm = nn.utils.clip_grad_norm_(params, self.clip)
        return self.grad_norm

    # ------------------------------------------------------------------------- rewriting
    def plan(self, batch: dict, step: int, rate: float | None) -> dict:
        """Add this step's random decisions to ``batch``: each example's noise key and, with a
        ``rate``, which tokens to rewrite (the mask, its flat positions, and the count per example,
        which sizes the example's noise draws). Run on the host copy of the batch (see the module
        docstring); on a batch already on the device it works the same, with host reads."""
        ids = batch["input_ids"]
        batch[NOISE_KEYS] = [(run_seed(), step, idx) for idx in batch["idx"].tolist()]
        if rate is not None:
            width = max(ids.shape[1], self.positions)  # the draws do not depend on the batch's padding
            scores = self.noise(batch, MASK, [width] * len(ids), ids.device).view(len(ids), width)[:, : ids.shape[1]]
            mask = choose_mask(ids, batch["attention_mask"], self.special_ids_host.to(ids.device), rate, scores)
            batch[REWRITE_MASK], batch[REWRITE_POSITIONS] = mask, mask_positions(mask)
            batch[REWRITE_COUNTS] = mask.sum(1).tolist()
        return batch

    def noise(self, batch: dict, purpose: int, numels: list[int], device=None) -> Tensor:
        keys = [(*key, purpose) for key in batch[NOISE_KEYS]]
        return torch.cat(example_uniform(keys, numels, device if device is not None else batch["input_ids"].device))

    def propose(self, batch: dict, hard: bool = True) -> Tensor:
        """The network's proposals at the planned positions: straight-through one-hot rows, one per
        position, through which a divergence's gradient reaches the network (``hard=False``: the soft
        Gumbel-softmax rows themselves, same noise)."""
        mask = batch[REWRITE_MASK]
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        inputs["input_ids"] = batch["input_ids"].masked_fill(mask, self.mask_token_id)
        logits = masked_logits(self.network, inputs, mask, batch[REWRITE_POSITIONS])
        vocab = logits.shape[-1]
        uniform = self.noise(batch, GUMBEL, [n * vocab for n in batch[REWRITE_COUNTS]]).view(-1, vocab)
        return sample_replacements(logits, self.banned_ids, self.gumbel_tau, uniform, hard)

    def embed(self, model: nn.Module, batch: dict, one_hot: Tensor) -> Tensor:
        """``inputs_embeds`` for ``model``: its word embeddings, the planned positions replaced by ``one_hot @ E``."""
        mask, positions = batch[REWRITE_MASK], batch[REWRITE_POSITIONS]
        return embed_with_replacements(model, batch["input_ids"], mask, one_hot, positions)

    def divergence(
        self,
        teacher: nn.Module,
        student: nn.Module,
        batch: dict,
        loss: Callable[[Tensor, Tensor], Tensor],
        hard: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``loss(student(x'), teacher(x'))`` on the network's straight-through rewrite ``x'`` of the planned
        positions, with a gradient to the network (the quantity :meth:`ascend` raises). Returns
        (divergence, one-hot rows, teacher logits, student logits). ``loss`` takes (student, teacher) logits,
        e.g. a distiller's KD loss. ``hard=False``: on the soft Gumbel-softmax rows instead (a smooth
        function of the network, for measuring an update's direction)."""
        one_hot = self.propose(batch, hard)
        rest = {k: batch[k] for k in MODEL_INPUTS if k in batch and k != "input_ids"}
        teacher_logits = teacher(inputs_embeds=self.embed(teacher, batch, one_hot), **rest).logits
        student_logits = student(inputs_embeds=self.embed(student, batch, one_hot), **rest).logits
        return loss(student_logits, teacher_logits), one_hot, teacher_logits, student_logits

    def rewrite_batch(self, batch: dict, step: int, rate: float | None = None) -> dict:
        """A copy of ``batch`` whose ``input_ids`` are this generator's discrete rewrite (no gradient): the call
        a supervised distiller makes for MATE-KD-style augmentation. ``step`` keys the random draws (use
        the distiller's batch counter); ``rate`` defaults to ``mask_rate``. Call :meth:`prepare` first."""
        if self.mask_token_id is None:
            raise KDLightError("AdversarialGenerator.prepare(tokenizer, teacher) must run before rewrite_batch")
        planned = self.plan(dict(batch), step, self.mask_rate if rate is None else rate)
        with torch.no_grad():
            return {**planned, "input_ids": self.rewrite(planned)}

    @torch.no_grad()
    def replace(self, batch: dict, replacements: Tensor) -> Tensor:
        """``batch``'s token ids with ``replacements`` (one id per rewrite position, in order) written in."""
        return scatter_positions(batch["input_ids"], batch[REWRITE_MASK], batch[REWRITE_POSITIONS], replacements)

    def rewrite(self, batch: dict) -> Tensor:
        """A discrete rewrite of ``input_ids`` at the planned positions (no gradient): the network's
        proposals, or uniformly random tokens when there is no network."""
        mask, counts = batch[REWRITE_MASK], batch[REWRITE_COUNTS]
        if self.network is None:
            uniform = self.noise(batch, RANDOM, counts)
            replacements = random_replacements(
                sum(counts), self.vocab_size, self.banned_ids, mask.device, uniform, self.allowed_ids
            )
        else:
            replacements = self.propose(batch).argmax(-1)
        return scatter_positions(batch["input_ids"], mask, batch[REWRITE_POSITIONS], replacements)


__all__ = ["AdversarialGenerator", "Perturbation"]
