"""ALM-KD: knowledge distillation with noisy labels via adaptive (meta-learned) loss mixing.

Sivasubramanian, Shenoy, Prathosh AP, Ramakrishnan, "ALM-KD: Knowledge Distillation with noisy labels
via adaptive loss mixing" (arXiv 2202.03250); official code durgas16/AMAL. Each training example gets
its own weight between the label loss and the KD term(s), meta-learned by a one-step look-ahead of the
student scored on clean data.

This file is the Lightning side: the teacher(s) and the student, the optimisers' steps, data, logs and
the picture. The algorithm's weights and maths are a plain torch component, the ``meta`` submodule:
:class:`~kdlight.components.meta.MetaLearner` (the default algorithm; its docstring says where it follows
the paper and where the code) or :class:`~kdlight.components.meta_official.OfficialMetaLearner`
(``algorithm: official``, the authors' code, with file/line references to durgas16/AMAL).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from kdlight.components.meta import (
    CleanScore,
    LookaheadScope,
    MetaBatch,
    MetaInterval,
    MetaLearner,
    Mixer,
    MixingNetwork,
    mixed_loss,
    teacher_share,
)
from kdlight.components.meta_official import OfficialMetaLearner
from kdlight.distributed import keep_out_of_ddp
from kdlight.errors import KDLightError, check_choice
from kdlight.lambda_monitor import LambdaMonitor, write_lambda_plot
from kdlight.models.hf import load_classifier
from kdlight.models.students import check_compatible
from kdlight.modules.distiller import BaseDistiller
from kdlight.modules.task import model_inputs

Algorithm = Literal["default", "official"]
LEGACY_MIXER_KEY = "kdlight_alm_mixer"  # where checkpoints written before kdlight.components kept the weights


def lookahead_assumption(optimizers: Any, hparams: dict) -> str:
    """One line for the log: which update the look-ahead models, and how it differs from the student's optimiser."""
    student_opt = optimizers[0] if isinstance(optimizers, list) else optimizers
    real = getattr(student_opt, "optimizer", student_opt)  # Lightning's wrapper
    step = "lookahead_lr" if hparams.get("lookahead_lr") is not None else "the student's current lr"
    line = f"one plain SGD step of size {step} (as the authors' code); the student's optimiser is {type(real).__name__}"
    if not isinstance(real, torch.optim.SGD):
        return line + ": the look-ahead does not model its update (set optimizer: torch.optim.SGD to make it)"
    group = real.param_groups[0]
    if group.get("momentum") or group.get("weight_decay"):
        return line + (
            f" with momentum {group.get('momentum', 0)} (nesterov {group.get('nesterov', False)}) and weight decay "
            f"{group.get('weight_decay', 0)}, which the look-ahead leaves out, as the authors' code does"
        )
    return line + ": the look-ahead models its update"


CLEAN_DRAWN_KEY = "kdlight_clean_batches_drawn"  # checkpoint key: the clean-batch stream's position


class AdaptiveLossMixingKD(BaseDistiller):
    """ALM-KD with a per-example weight table (or a mixing network), meta-learned on clean data.

    Needs a datamodule that provides clean batches: :class:`~kdlight.data.noisy.NoisyLabelDataModule`
    (``clean_val_batches()``); training batches must carry ``idx``.

    Args:
        teacher: the fine-tuned teacher (see :class:`BaseDistiller`).
        mixer: ``table`` (one weight per training example, the official code) or ``network``
            (a small MLP on per-example losses and teacher/student confidences).
        init_lambda: initial weight of the KD term(s) (0.9 in the official code).
        lookahead: ``last_layer`` (the classification head only, default) or ``all`` parameters.
        lookahead_lr: step size of the look-ahead; default the student's current learning rate.
        meta_every: run the meta step every ``meta_every`` training batches ...
        meta_interval: ... counted in ``step`` s or ``epoch`` s (then on every step of every
            ``meta_every``-th epoch);
        meta_warmup: ... from this batch (``meta_interval=step``; batches of this fit and the runs it
            resumed, counted from 0) or epoch (``epoch``) on.
        meta_steps: inner meta updates per meta step (each with a fresh clean batch).
        meta_optimizer: optimiser of the weights; default SGD(lr=meta_learning_rate) for the table,
            Adam(lr=meta_learning_rate) for the network.
        normalize_meta_grad: divide the table's meta-gradient by its mean absolute value over the
            batch (see :mod:`kdlight.components.meta`). Ignored for the network.
        center_meta_grad: subtract the batch's mean meta-gradient from the table rows before the
            meta step, so a step only moves the batch's weights relative to each other and their
            mean stays at ``init_lambda`` (in logit space). Our addition: the one-step look-ahead
            scored by clean CE drifts every weight toward the label loss (see
            ``benchmarks/results/noisy_ablation.md``); centring keeps the per-example signal and
            drops that drift. Ignored for the network.
        num_examples: rows of the table; default ``max idx + 1`` of the training split at fit start
            (restored from checkpoints automatically).
        mixer_hidden: hidden width of the mixing network.
        temperature: KD temperature (T = 4 in the paper's code).
        algorithm: ``default`` (the above) or ``official`` (the authors' code, see
            :mod:`kdlight.components.meta_official`: a table of free CE/KD weights, a closed-form
            last-layer meta pass over the training set every ``select_every`` epochs from ``warm_epoch``;
            ``mixer`` must be ``table``, and ``lookahead``, ``meta_every``, ``meta_interval``,
            ``meta_warmup``, ``meta_steps``, ``meta_optimizer``, ``normalize_meta_grad``,
            ``center_meta_grad`` do not apply).
        grad_fit: (official) training batches whose per-example gradients are accumulated per clean batch.
        select_every: (official) epochs between meta passes; 0: never.
        warm_epoch: (official) the first epoch (from 0) with a meta pass.
        meta_iterations: (official) plain gradient steps on the weights per clean batch.
        meta_learning_rate: default mode: see ``meta_optimizer`` (default 0.5); official: the step size
            of those plain steps (default 1500, the code's).
        lambda_plot: at the end of fit write ``<log_dir>/lambda.png`` (the learned teacher weights,
            flipped vs clean examples when the datamodule knows them) and log it if the logger takes
            images. With ``mixer: network`` this costs one forward pass over the training set. Either
            way the :class:`~kdlight.lambda_monitor.LambdaMonitor` logs ``lambda/flipped``,
            ``lambda/clean`` and ``lambda/flipped_auc`` every epoch.
        clean_score: the look-ahead's score on the clean batch: ``cross_entropy`` (the paper and the code)
            or ``expected_error`` (``1 - p(label)``; see :func:`kdlight.components.meta.clean_score`: once the
            student fits most of the clean split, CE's gradient is its few errors, and the look-ahead then
            rewards wrong labels -- measured in ``benchmarks/results/alm_inversion.md``). Both algorithms.
        **kwargs: see :class:`BaseDistiller` (student, optimiser, schedule, teacher-logit cache ...).
    """

    extra_teacher_sources: tuple[str, ...] | list[str] = ()  # MultiTeacherALMKD: the teachers after the first

    def __init__(
        self,
        teacher: str,
        mixer: Mixer = "table",
        init_lambda: float = 0.9,
        lookahead: LookaheadScope = "last_layer",
        lookahead_lr: float | None = None,
        meta_every: int = 1,
        meta_interval: MetaInterval = "step",
        meta_warmup: int = 0,
        meta_steps: int = 1,
        meta_optimizer: OptimizerCallable | None = None,
        meta_learning_rate: float | None = None,
        normalize_meta_grad: bool = True,
        center_meta_grad: bool = False,
        num_examples: int | None = None,
        mixer_hidden: int = 32,
        temperature: float = 4.0,
        algorithm: Algorithm = "default",
        grad_fit: int = 3,
        select_every: int = 10,
        warm_epoch: int = 10,
        meta_iterations: int = 5,
        lambda_plot: bool = True,
        clean_score: CleanScore = "cross_entropy",
        **kwargs,
    ) -> None:
        check_choice("algorithm", algorithm, Algorithm)
        official = {
            "grad_fit": grad_fit,
            "select_every": select_every,
            "warm_epoch": warm_epoch,
            "meta_iterations": meta_iterations,
        }
        learner, extra = (OfficialMetaLearner, official) if algorithm == "official" else (MetaLearner, {})
        # built (and its arguments checked) before any model is loaded; its weights come at fit start
        meta = learner(
            num_teachers=1 + len(self.extra_teacher_sources),
            mixer=mixer,
            init_lambda=init_lambda,
            lookahead=lookahead,
            lookahead_lr=lookahead_lr,
            meta_every=meta_every,
            meta_interval=meta_interval,
            meta_warmup=meta_warmup,
            meta_steps=meta_steps,
            meta_optimizer=meta_optimizer,
            meta_learning_rate=meta_learning_rate,
            normalize_meta_grad=normalize_meta_grad,
            center_meta_grad=center_meta_grad,
            num_examples=num_examples,
            mixer_hidden=mixer_hidden,
            temperature=temperature,
            clean_score=clean_score,
            **extra,
        )
        self._clean_batches = None
        self._clean_drawn = 0  # clean batches drawn so far (host counter; checkpointed)
        super().__init__(teacher, temperature=temperature, **kwargs)
        self.hparams.pop("meta_optimizer", None)
        self.hparams["meta_learning_rate"] = meta.learning_rate  # resolved from null; subclasses' frames keep null
        self.automatic_optimization = False
        self.meta = meta
        self._pass_score: Tensor | None = None  # the official meta pass's clean score, logged by the epoch's first step
        self.last_teacher_weight: tuple[Tensor, Tensor] | None = None  # (idx, weight) of the last training batch

    # ------------------------------------------------------------------------- the algorithm
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One training batch of ALM-KD (the paper's Algorithm 1):

        1. every ``meta_every`` batches, ``meta_steps`` meta steps: a look-ahead SGD step of the student on
           the batch's mixed loss is scored by CE on a fresh clean batch, and the gradient of that score
           moves the batch's mixing weights;
        2. the student's step on the per-example mixed loss ``w_CE * CE + w_KD * T^2 KL`` with the new weights.

        ``algorithm: official`` moves the weights in a pass over the training set as an epoch starts
        (:meth:`on_train_epoch_start`); its batches run step 2 only.
        """
        optimizers = self.optimizers()
        student_opt, meta_opt = optimizers if isinstance(optimizers, list) else (optimizers, None)
        seen = self.observe(batch)
        meta_loss, self._pass_score = self._pass_score, None
        if self.meta.step_due(self.current_epoch):
            for _ in range(self.hparams.meta_steps):
                lr = student_opt.param_groups[0]["lr"]
                meta_loss = self.meta.meta_gradients(self.student, seen, self.next_clean_batch(), lr)
                meta_opt.optimizer.step()  # raw: Lightning counts (max_steps) student updates only
        ce, kd = self.meta.losses(seen)
        weights = self.meta.weights(seen, ce, kd)
        loss = mixed_loss(weights, ce, kd)
        student_opt.zero_grad()
        self.manual_backward(loss)
        student_opt.step()
        self.lr_schedulers().step()
        lam = self.meta.teacher_weight(weights)
        self.last_teacher_weight = (seen.idx, lam)  # read by the LambdaMonitor callback
        self.log_step(loss, ce, kd, lam, meta_loss)
        self.meta.count_batch()
        return loss.detach()

    def on_train_epoch_start(self) -> None:
        self._pass_score = None
        if self.meta.pass_due(self.current_epoch):
            self._pass_score = self.official_meta_pass()

    @torch.no_grad()
    def official_meta_pass(self) -> Tensor | None:
        """The authors' meta pass over this rank's share of the training set, with the student frozen in
        eval mode (the code scores a frozen copy, update_model lines 41-42); returns the mean clean score."""
        was_training = self.student.training
        self.student.eval()
        try:
            lr, clean_batches = self.optimizers().param_groups[0]["lr"], iter(self.next_clean_batch, None)  # endless
            return self.meta.meta_pass(self.student, self.training_split(), clean_batches, lr)
        finally:
            self.student.train(was_training)

    # ------------------------------------------------------------------------------ batches
    def observe(self, batch: dict[str, Tensor]) -> MetaBatch:
        """A training batch as the meta-learner sees it: the teachers' and the student's logits, the head's input."""
        inputs, teacher_logits = model_inputs(batch), self.all_teacher_logits(batch)
        logits, head_input = self.meta.student_forward(self.student, inputs)
        return MetaBatch(inputs, batch["labels"], batch["idx"], logits, head_input.detach(), teacher_logits)

    def next_clean_batch(self) -> MetaBatch:
        """The next batch of the clean split (drawn in turn), on the device. How many were drawn goes into
        checkpoints, so a resumed run continues the same stream (an exact resume)."""
        if self._clean_batches is None:
            self._clean_batches = self.trainer.datamodule.clean_val_batches(start=self._clean_drawn)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in next(self._clean_batches).items()}
        self._clean_drawn += 1
        return MetaBatch(model_inputs(batch), batch["labels"], batch.get("idx"))

    def training_split(self) -> Iterator[MetaBatch]:
        """The whole training split, observed batch by batch: a seeded, epoch-dependent order (the code's
        shuffled ``trainloader_ind``), every rank taking every N-th example of one permutation, padded so
        all ranks see as many batches."""
        from torch.utils.data import DataLoader, Subset

        from kdlight.data.base import Collator

        datamodule = self.trainer.datamodule
        dataset = datamodule.splits[datamodule.train_split]
        world, rank = self.trainer.world_size, self.trainer.global_rank
        seed = int(datamodule.seed if hasattr(datamodule, "seed") else 0) * 1000 + self.current_epoch
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
        per_rank = -(-len(order) // world)
        order = (order + order[: per_rank * world - len(order)])[rank::world]
        loader = DataLoader(
            Subset(dataset, order),
            batch_size=datamodule.batch_size,
            collate_fn=Collator(datamodule.tokenizer.pad_token_id or 0),
        )
        for batch in loader:
            yield self.observe({k: v.to(self.device) for k, v in batch.items()})

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        # the table's bounds checked on the host copy of idx (checked on the device, it is a sync per step)
        if self._trainer is not None and self.trainer.training and "idx" in batch:
            self.meta.check_rows(batch["idx"])
        return batch

    # --------------------------------------------------------------------------- teachers
    def extra_teacher_list(self) -> list[nn.Module]:
        return list(self.extra_teachers) if hasattr(self, "extra_teachers") else []

    def configure_losses(self) -> None:  # the per-example CE and KD terms are the meta-learner's
        if self.task.num_labels < 2:
            raise KDLightError("AdaptiveLossMixingKD needs a classification head (num_labels >= 2)")

    def all_teacher_logits(self, batch: dict[str, Tensor]) -> list[Tensor]:
        logits = [self.teacher_logits(batch)]
        with torch.no_grad():
            logits += [t(**model_inputs(batch)).logits for t in self.extra_teacher_list()]
        return logits

    # ----------------------------------------------------------------------- fit plumbing
    @property
    def mixer(self) -> nn.Module:
        """The learned weights (``meta.mixer``): the lambda table or the mixing network."""
        if self.meta.mixer is None:
            raise KDLightError(
                "the mixing weights are built at fit start (or from a checkpoint); call trainer.fit first"
            )
        return self.meta.mixer

    def setup(self, stage: str) -> None:
        if stage == "fit" and not hasattr(self.trainer.datamodule, "clean_val_batches"):  # the first thing to fix
            raise KDLightError(
                "AdaptiveLossMixingKD meta-learns on clean data: wrap the datamodule in NoisyLabelDataModule"
            )
        super().setup(stage)
        if stage == "fit":
            if self.meta.mixer is None:
                self.meta.build(self.training_examples())
            keep_out_of_ddp(self, "meta")  # it steps outside the student's backward and reduces its own gradients

    def training_examples(self) -> int | None:
        """Rows of the lambda table: ``num_examples``, else ``max idx + 1`` of the training split."""
        num = self.hparams.num_examples
        if num is None and self.hparams.mixer == "table":
            if not hasattr(self.trainer.datamodule, "max_train_idx"):
                raise KDLightError(
                    "AdaptiveLossMixingKD needs data: NoisyLabelDataModule (clean batches and "
                    "example ids), or set num_examples"
                )
            num = self.trainer.datamodule.max_train_idx + 1
        elif num is not None and self.hparams.mixer == "table":
            largest = getattr(self.trainer.datamodule, "max_train_idx", None)
            if largest is not None and num <= largest:  # checked now: mid-training it is an IndexError
                raise KDLightError(
                    f"num_examples={num} is smaller than the training set: its example ids run to {largest}, so the "
                    f"lambda table needs {largest + 1} rows; set num_examples to {largest + 1} or more, or leave it "
                    "null (sized from the data)"
                )
        return num

    def configure_optimizers(self):
        student = super().configure_optimizers()
        meta = self.meta.configure_optimizer()
        if meta is None:  # official: the weights move by the meta pass's plain steps, not by an optimiser
            return student
        return [student["optimizer"], meta], [student["lr_scheduler"]]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._clean_batches = None  # reopened at the checkpointed position (0 for a new run)
        self.meta.read_batches_seen()  # once per fit (after any checkpoint restore)
        rank_zero_info(f"[kdlight] ALM-KD look-ahead: {lookahead_assumption(self.optimizers(), self.hparams)}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CLEAN_DRAWN_KEY] = self._clean_drawn
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith("extra_teachers.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._clean_drawn, self._clean_batches = int(checkpoint.get(CLEAN_DRAWN_KEY, 0)), None
        state = checkpoint["state_dict"]
        legacy = checkpoint.pop(LEGACY_MIXER_KEY, None)  # older checkpoints: the weights beside the state dict
        if legacy is not None:
            state.update({f"meta.mixer.{k}": v for k, v in legacy["state_dict"].items()})
        if "meta_progress" in state:  # older checkpoints: the batch counter on the module itself
            state["meta.batches_seen"] = state.pop("meta_progress")
        if "meta.batches_seen" not in state:  # written before the counter existed: Lightning's batch count
            loops = checkpoint.get("loops", {}).get("fit_loop", {})
            done = loops.get("epoch_loop.batch_progress", {}).get("total", {}).get("completed", 0)
            state["meta.batches_seen"] = torch.tensor([done], dtype=torch.long)
        for i, t in enumerate(self.extra_teacher_list()):
            state.update({f"extra_teachers.{i}.{k}": v for k, v in t.state_dict().items()})
        missing = [k for k in self.state_dict() if k.startswith("meta.") and k not in state]
        if missing:  # Lightning would load the student and silently start a fresh lambda table
            source = (
                self.trainer.ckpt_path if self._trainer is not None and self.trainer.ckpt_path else "the checkpoint"
            )
            raise KDLightError(
                f"{source} was not written by AdaptiveLossMixingKD (it has no {missing[0]}); resume an ALM run from "
                "its own checkpoint, or start a new run (a distilled student can be the teacher via its export)"
            )

    # ------------------------------------------------------------------------------ logs
    def log_step(self, loss: Tensor, ce: Tensor, kd: list[Tensor], lam: Tensor, meta_loss: Tensor | None) -> None:
        """``train/*`` at the logger's cadence (the per-epoch flipped/clean statistics: :class:`LambdaMonitor`)."""
        parts = None
        if self.logs_this_step():
            parts = {
                "loss": loss.detach(),
                "ce": ce.detach().mean(),
                "kd": torch.stack(kd).detach().mean(),
                "lambda_mean": lam.mean(),
                "lambda_std": lam.std() if len(ce) > 1 else torch.zeros((), device=lam.device),
            }
            if meta_loss is not None:
                parts["meta_loss"] = meta_loss
        self.log_training(parts, loss, len(ce))

    def configure_callbacks(self) -> list:
        """The lambda monitor: per-epoch teacher weights on flipped / clean examples, their AUC, ``lambda.png``."""
        return [LambdaMonitor(plot=self.hparams.get("lambda_plot", True))]

    @torch.no_grad()
    def learned_lambdas(self) -> tuple[Tensor, Tensor]:
        """(idx, teacher share) of every training example under the current mixer (a forward pass for the network)."""
        if not isinstance(self.mixer, MixingNetwork):
            datamodule = self.trainer.datamodule
            idx = torch.as_tensor(datamodule.splits[datamodule.train_split]["idx"], device=self.device)
            return idx, teacher_share(self.mixer(idx))
        ids, shares = [], []
        for seen in self.training_split():
            ids.append(seen.idx)
            shares.append(teacher_share(self.meta.weights(seen, *self.meta.losses(seen))))
        return torch.cat(ids), torch.cat(shares)

    def write_lambda_plot(self) -> Path | None:
        """``<log_dir>/lambda.png`` now (the monitor writes it at the end of fit)."""
        return write_lambda_plot(self.trainer, self)

    # ------------------------------------------------------------------------------ analysis
    def table_lambdas(self) -> Tensor:
        """Current teacher weight of every table row (``1 - w_CE``), for analysis."""
        return self.meta.table_lambdas()


class MultiTeacherALMKD(AdaptiveLossMixingKD):
    """ALM-KD with K teachers: per-example softmax weights over CE and the K KD terms (the paper's
    multi-teacher setting). ``teachers[0]`` is the base teacher (logit cache, test score); the
    others are frozen, kept out of checkpoints and reloaded from their sources.

    Args:
        teachers: two or more fine-tuned teachers with the student's label set and tokenizer
            (set ``data.init_args.tokenizer`` in the recipe).
        teacher: leave empty (it is ``teachers[0]``).
        **kwargs: see :class:`AdaptiveLossMixingKD`.
    """

    def __init__(self, teachers: list[str], teacher: str | None = None, **kwargs) -> None:
        if len(teachers) < 2:
            raise KDLightError(
                f"MultiTeacherALMKD needs two or more teachers, got {len(teachers)}; use AdaptiveLossMixingKD for one"
            )
        if teacher is not None and teacher != teachers[0]:
            raise KDLightError("MultiTeacherALMKD: leave teacher empty (teachers[0] is the base teacher)")
        self.extra_teacher_sources = list(teachers[1:])
        super().__init__(teachers[0], **kwargs)

    def configure_models(self) -> None:
        super().configure_models()
        task = self.task
        extra = []
        for source in self.extra_teacher_sources:
            model = load_classifier(source, task.num_labels, task.label_names, require_head=True, role="teacher")
            model.eval().requires_grad_(False)
            check_compatible(model, self.student)
            extra.append(model)
        self.extra_teachers = nn.ModuleList(extra)

    def model_sources(self) -> dict[str, str]:
        sources = super().model_sources()
        sources.update({f"teacher {i + 2}": source for i, source in enumerate(self.extra_teacher_sources)})
        return sources

    def position_limited_models(self) -> dict[str, nn.Module]:
        models = super().position_limited_models()
        models.update({f"teacher {i + 2}": model for i, model in enumerate(self.extra_teacher_list())})
        return models

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "extra_teachers"):
            self.extra_teachers.eval()
        return self
