"""AdversarialRewriting: the masked-LM generator's half of a distiller's loop, shared by zero-shot KD and MATE-KD.

Rashid et al.'s two methods (zero-shot KD, EMNLP 2021; MATE-KD, ACL 2021) alternate cycles of
``generator_steps`` generator updates, each ascending KL(teacher || student) on the generator's rewrite of a
batch, and ``student_steps`` student updates; they differ only in the student's loss and in the batch (out-of-
domain text there, the labelled training text here). This mixin is everything but the student's loss: the
:class:`~kdlight.components.AdversarialGenerator` component (built, checked against the vocabulary, prepared
with the data's tokenizer, its optimiser after the student's), the cycle (:meth:`is_generator_step`), the
host-side plan of each batch's rewrite, the generator's update (:meth:`generator_step`), the display
(:class:`~kdlight.callbacks_zeroshot.AdversaryMonitor`) and the count of student updates in a number of batches.

Use: ``class MyKD(AdversarialRewriting, ManualOptimization, BaseDistiller)``, with :meth:`student_step` (and
:meth:`rewrite_rate` if the student's batches are rewritten differently); the arguments above are this mixin's
(``generator``, the cycle, the display), so a subclass adds only its own.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from kdlight.callbacks_zeroshot import AdversaryMonitor
from kdlight.components.generator import NOISE_KEYS, REWRITE_MASK, AdversarialGenerator
from kdlight.data.base import load_tokenizer, model_inputs
from kdlight.distributed import keep_out_of_ddp
from kdlight.errors import KDLightError
from kdlight.modules.migrations import pop_moved

#: the module arguments that ``generator:`` replaced -> its ``init_args`` key (a script's or an old checkpoint's
#: hyper-parameters: accepted with a notice; in a YAML or on the command line: one line naming the new key)
FLAT_GENERATOR_KEYS = {
    "perturbation": "perturbation",
    "mask_rate": "mask_rate",
    "gumbel_tau": "gumbel_tau",
    "generator_learning_rate": "learning_rate",
    "generator_clip": "clip",
    "generator_optimizer": "optimizer",
}


def generator_config_from_flat(generator: Any, flat: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The ``generator`` config the old flat keys meant (``generator`` was the network's name or folder; the
    owner's ``defaults`` filled in what was not given, as its flat arguments' defaults did)."""
    if isinstance(generator, (AdversarialGenerator, dict)):
        key = sorted(flat)[0]
        raise KDLightError(f"give {key} as generator.init_args.{FLAT_GENERATOR_KEYS[key]}, not beside generator")
    network = {"network": str(generator)} if generator is not None else {}
    settings = {FLAT_GENERATOR_KEYS[k]: v for k, v in flat.items()}
    return {"class_path": "AdversarialGenerator", "init_args": {**defaults, **network, **settings}}


class AdversarialRewriting:
    """Mixin: the generator, its update and the cycle (see the module docstring).

    Args:
        generator: the masked-LM generator and its settings: a network name or folder (the subclass's
            :attr:`default_generator` settings for the rest), or ``{class_path: AdversarialGenerator, init_args:
            {network, perturbation, mask_rate, gumbel_tau, learning_rate, clip, optimizer}}`` (see
            :class:`~kdlight.components.AdversarialGenerator`; its own defaults then apply).
        generator_steps, student_steps: one cycle's generator updates, then student updates (each a batch).
            ``trainer.max_steps`` counts student updates only.
        max_consecutive_skips: stop with an error after this many non-finite steps in a row (the run has
            diverged; without a stop, ``max_steps`` would never be reached).
        show_rewrites_every, track_divergence: what :class:`~kdlight.callbacks_zeroshot.AdversaryMonitor` shows
            (decoded rewrites into the run's ``rewrites.jsonl`` every this many generator steps, 0: never) and
            measures (the divergence before and after each generator update, and on the unmodified batch).

    The module arguments ``generator:`` replaced (``mask_rate``, ``generator_learning_rate`` -> ``learning_rate``,
    ``generator_clip`` -> ``clip``, ... :data:`FLAT_GENERATOR_KEYS`) are not options any more: in a script's call
    or an old checkpoint's hyper-parameters they are translated with one notice; in a YAML or on the command line
    the parser names the new key (:attr:`moved_arguments`).
    """

    #: the parser's hint for a moved key in a YAML (:mod:`kdlight.parse_errors`)
    moved_arguments = {k: f"generator.init_args.{v}" for k, v in FLAT_GENERATOR_KEYS.items()}
    auxiliary_name = "generator"  # train/generator_steps: the ``progress`` column of the generator's updates
    #: the generator's settings when ``generator`` is a name or not given (a subclass's published defaults)
    default_generator: dict[str, Any] = {}
    #: whether a student with a pruned vocabulary is taken (the generator then never proposes its unkept tokens)
    takes_pruned_student = False

    def __init__(
        self,
        generator: AdversarialGenerator | str | None = None,
        generator_steps: int = 10,
        student_steps: int = 100,
        max_consecutive_skips: int = 50,
        show_rewrites_every: int = 50,
        track_divergence: bool = True,
        **kwargs: Any,
    ) -> None:
        flat = pop_moved(kwargs, FLAT_GENERATOR_KEYS)
        if flat:
            rank_zero_info(
                f"[kdlight] {type(self).__name__}'s flat generator keys ({', '.join(sorted(flat))}) are deprecated: "
                "write them as generator: {class_path: AdversarialGenerator, init_args: {network: ..., "
                + ", ".join(f"{FLAT_GENERATOR_KEYS[k]}: ..." for k in sorted(flat))
                + "}}"
            )
            generator = generator_config_from_flat(generator, flat, self.default_generator)
        component = AdversarialGenerator.from_config(generator, **self.default_generator)  # settings checked here
        at_least = dict(
            generator_steps=(generator_steps, 0),
            student_steps=(student_steps, 1),
            max_consecutive_skips=(max_consecutive_skips, 1),
            show_rewrites_every=(show_rewrites_every, 0),
        )
        for name, (value, least) in at_least.items():
            if value < least:
                raise KDLightError(f"{name} must be >= {least}, got {value}")
        # registered as a submodule by configure_models, which the base __init__ calls (before nn.Module's
        # __init__ has run, a module cannot be assigned as an attribute)
        self.__dict__["_generator_component"] = component
        super().__init__(**kwargs)
        for key in FLAT_GENERATOR_KEYS:  # the subclass's frame still holds them in its **kwargs
            self.hparams.pop(key, None)
        self.hparams["generator"] = component.to_config()  # plain data: Module(**hparams) rebuilds the same generator

    @property
    def uses_generator(self) -> bool:
        """Whether the rewrites come from the learned network (else uniformly random tokens)."""
        return self.generator.perturbation == "generator"

    @property
    def trains_generator(self) -> bool:
        return self.uses_generator and self.hparams.generator_steps > 0

    def rewrite_rate(self) -> float | None:
        """The share of real tokens this batch's step rewrites, or None when it rewrites nothing. Override me."""
        return self.generator.mask_rate

    # ------------------------------------------------------------------------------- models
    def configure_models(self) -> None:
        super().configure_models()
        self.generator = self.__dict__.pop("_generator_component", None) or self.generator
        # without a learned generator the rewrites are random tokens, and no network is loaded
        self.generator.load(needed=self.uses_generator)
        self.generator.check_vocabulary(self.teacher, self.student, self.takes_pruned_student)
        keep_out_of_ddp(self, "generator")  # it steps with its own optimiser, outside the student's backward

    def auxiliary_networks(self) -> dict[str, tuple[str, nn.Module]]:
        network = self.generator.network
        return {} if network is None else {"generator": (self.generator.source, network)}

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

    # ---------------------------------------------------------------------------- the cycle
    def is_generator_step(self) -> bool:
        hp = self.hparams
        cycle = hp.generator_steps + hp.student_steps
        return self.trains_generator and self.batch_count() % cycle < hp.generator_steps

    def student_steps_in(self, batches: int) -> int:
        """Student updates in the first ``batches`` batches of the cycle."""
        if not self.trains_generator:
            return batches
        hp = self.hparams
        cycle = hp.generator_steps + hp.student_steps
        return (batches // cycle) * hp.student_steps + max(0, batches % cycle - hp.generator_steps)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The step's random decisions, made on the host copy of a training batch (see ``plan``)."""
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        if self._trainer is not None and self.trainer.training and isinstance(batch, dict) and "idx" in batch:
            batch = self.generator.plan(batch, self.batch_count(), self.rewrite_rate())
        return batch

    # ---------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Rashid et al. (2021), one batch ``x`` at a time, in cycles of ``generator_steps`` generator updates
        then ``student_steps`` student updates (the subclass's ``student_step``). ``x'``: the generator's
        rewrite of ``x``."""
        if NOISE_KEYS not in batch:  # a datamodule's own on_before_batch_transfer ran instead of ours
            batch = self.generator.plan(batch, self.batch_count(), self.rewrite_rate())
        if self.is_generator_step():
            loss = self.generator_step(batch)  # ascend KL(T(x') || S(x')) in the generator
        else:
            loss = self.student_step(batch)
        self.end_batch(len(batch["input_ids"]))
        return loss

    def student_step(self, batch: dict[str, Tensor]) -> Tensor:
        """One student update (its loss, ``step_student``, logging). Override me."""
        raise NotImplementedError

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

    def rewrite_kd(self, batch: dict[str, Tensor]) -> Tensor:
        """KD on a fresh discrete rewrite of the planned positions, for the student (no gradient to the generator)."""
        rewritten = {**batch, "input_ids": self.generator.rewrite(batch)}
        with torch.no_grad():
            teacher = self.teacher(**model_inputs(rewritten)).logits
        return self.kd_loss(self.student_logits(rewritten), teacher)


__all__ = ["FLAT_GENERATOR_KEYS", "AdversarialRewriting", "generator_config_from_flat"]
