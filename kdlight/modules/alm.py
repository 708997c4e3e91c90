"""ALM-KD: knowledge distillation with noisy labels via adaptive (meta-learned) loss mixing.

Sivasubramanian, Shenoy, Prathosh AP, Ramakrishnan, "ALM-KD: Knowledge Distillation with noisy labels
via adaptive loss mixing" (arXiv 2202.03250); official code durgas16/AMAL
(``KD/LearnMultiLambdaMeta.py``; early versions ``getLambda/LearnLambdaMeta.py``).

Per example ``i``: ``loss_i = (1 - lambda_i) * CE_i + lambda_i * T^2 * KL(teacher_T || student_T)_i``;
with ``K`` teachers a softmax over CE and the K KD terms. The weights are meta-learned on a clean
validation split: a one-step look-ahead of the student's update (SGD, step size = the current
learning rate) is scored by CE on a clean batch, and that score's gradient updates the weights of
the examples in the batch. The student is then updated with the new (detached) weights.

Where this follows the **code**: a weight table indexed by the example's stable ``idx``, initialised
at 0.9, T = 4; the look-ahead restricted to the last layer (the classification head) by default;
convex weights (we parametrise them by a sigmoid/softmax of a logit table, the early code clamps to
[0, 1] instead). Where it follows the **paper**: per-example convex mixing meta-learned with a
one-step look-ahead on clean data, optionally through all parameters (``lookahead="all"``), and
the multi-teacher softmax. Our own additions: the Meta-Weight-Net style ``MixingNetwork`` option,
and ``normalize_meta_grad`` (the raw meta-gradient of a table row scales with the student's learning
rate, ~1e-4 for transformers, so the table barely moves with a plain SGD meta step; we divide the
batch's meta-gradient by its mean absolute value, a per-batch step-size normalisation that keeps
its direction), and ``center_meta_grad`` (off by default: subtract the batch's mean meta-gradient,
so the table only re-weights examples relative to one another; measured in
``benchmarks/results/noisy_ablation.md``).

Under DDP the weights are replicated on every rank (outside DDP's gradient buckets); each rank's
meta-gradient is summed across ranks before the meta step, so the copies stay identical.

``algorithm="official"`` runs the authors' code instead (:mod:`kdlight.models.alm_official`, with
file/line references to durgas16/AMAL):

===========================================  ======================================  ===========================
what                                         official mode                           source
===========================================  ======================================  ===========================
weights per example                          CE weight and KD weight(s), each        code: train_distill_noise.py
                                             free in [1e-7, 2), init 0.1 / 0.9       418-421; LearnMultiLambdaMeta
                                                                                     53, 154
training loss                                mean of w_CE*CE + w_KD*T^2*KL, T = 4    code: train_distill_noise.py
                                                                                     561-573, 34
when                                         a pass over the training set at the    code: train_distill_noise.py
                                             start of every ``select_every``-th      540-547; cifar100 config
                                             epoch from ``warm_epoch`` (10, 10)      41-44
per-example gradients                        closed form, last linear layer (bias   code: LearnMultiLambdaMeta
                                             and weight), of the batch-mean losses   61-67, 87-101
accumulation                                 ``grad_fit`` (3) batches per clean      code: LearnMultiLambdaMeta
                                             batch, summed                           69-84, 105, 132
look-ahead                                   z - eta * (G_b + h G_W^T), eta = the    code: LearnMultiLambdaMeta
                                             student's current lr                    134-138; train 547
meta loss / step                             CE on one clean batch; 5 plain steps    code: LearnMultiLambdaMeta
                                             of lr 1500, clamped after each          119, 141-154
clean batches                                drawn in turn from the clean split      code: LearnMultiLambdaMeta
                                                                                     107-113 (batch 1000 there)
student optimiser                            not set by the mode (the code: SGD lr   code: cifar100 config 33-38
                                             0.1, momentum 0.9, wd 5e-4, MultiStep)
convexity, per-example mixing, meta-         the paper (arXiv 2202.03250) states     paper
learning on a clean split                    convex weights; the code does not
DDP                                          G summed, dloss/dG averaged across      ours
                                             ranks; each rank updates its shard's
                                             rows, deltas summed after the pass
``lookahead_lr`` override, lambda.png,       -                                       ours
teacher share w_KD/(w_CE+w_KD) as lambda
===========================================  ======================================  ===========================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from kdlight.errors import KDLightError
from kdlight.losses import KLDivergence
from kdlight.models.alm_official import (
    OfficialLambdaTable,
    last_layer_grads,
    official_lambda_update,
    official_meta_due,
    teacher_share,
)
from kdlight.models.hf import load_classifier
from kdlight.models.mixer import (
    LambdaTable,
    MixingNetwork,
    last_linear_name,
    lookahead_meta_gradients,
    mixed_loss,
    mixer_features,
)
from kdlight.models.students import check_compatible
from kdlight.modules.distiller import BaseDistiller
from kdlight.modules.task import model_inputs

MIXERS = ("table", "network")
LOOKAHEADS = ("last_layer", "all")
MIXER_KEY = "kdlight_alm_mixer"
Algorithm = Literal["default", "official"]


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
        meta_learning_rate: see ``meta_optimizer``.
        normalize_meta_grad: divide the table's meta-gradient by its mean absolute value over the
            batch (see the module docstring). Ignored for the network.
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
        algorithm: ``default`` (the above) or ``official`` (the authors' code, see the module docstring:
            a table of free CE/KD weights, a closed-form last-layer meta pass over the training set every
            ``select_every`` epochs from ``warm_epoch``; ``mixer`` must be ``table``, and ``lookahead``,
            ``meta_every``, ``meta_interval``, ``meta_warmup``, ``meta_steps``, ``meta_optimizer``,
            ``normalize_meta_grad``, ``center_meta_grad`` do not apply).
        grad_fit: (official) training batches whose per-example gradients are accumulated per clean batch.
        select_every: (official) epochs between meta passes; 0: never.
        warm_epoch: (official) the first epoch (from 0) with a meta pass.
        meta_iterations: (official) plain gradient steps on the weights per clean batch.
        meta_learning_rate: default mode: see ``meta_optimizer`` (default 0.5); official: the step size
            of those plain steps (default 1500, the code's).
        lambda_plot: at the end of fit write ``<log_dir>/lambda.png`` (the learned teacher weights,
            flipped vs clean examples when the datamodule knows them) and log it if the logger takes
            images. With ``mixer: network`` this costs one forward pass over the training set.
        **kwargs: see :class:`BaseDistiller` (student, optimiser, schedule, teacher-logit cache ...).
    """

    def __init__(
        self,
        teacher: str,
        mixer: str = "table",
        init_lambda: float = 0.9,
        lookahead: str = "last_layer",
        lookahead_lr: float | None = None,
        meta_every: int = 1,
        meta_interval: str = "step",
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
        **kwargs,
    ) -> None:
        if algorithm not in ("default", "official"):
            raise KDLightError(f"algorithm must be 'default' or 'official', got {algorithm!r}")
        if algorithm == "official" and mixer != "table":
            raise KDLightError("algorithm='official' learns a lambda table; set mixer: table (or algorithm: default for the network)")
        if grad_fit < 1 or select_every < 0 or warm_epoch < 0 or meta_iterations < 0:
            raise KDLightError("grad_fit must be >= 1; select_every, warm_epoch and meta_iterations >= 0")
        if meta_learning_rate is None:
            meta_learning_rate = 1500.0 if algorithm == "official" else 0.5
        if mixer not in MIXERS:
            raise KDLightError(f"mixer must be one of {MIXERS}, got {mixer!r}")
        if lookahead not in LOOKAHEADS:
            raise KDLightError(f"lookahead must be one of {LOOKAHEADS}, got {lookahead!r}")
        if meta_interval not in ("step", "epoch"):
            raise KDLightError(f"meta_interval must be 'step' or 'epoch', got {meta_interval!r}")
        if meta_every < 1 or meta_steps < 0 or meta_warmup < 0:
            raise KDLightError("meta_every must be >= 1, meta_steps and meta_warmup >= 0")
        if not 0 < init_lambda < 1:
            raise KDLightError(f"init_lambda must be in (0, 1), got {init_lambda}")
        if meta_learning_rate < 0 or (lookahead_lr is not None and lookahead_lr < 0):
            name, value = ("meta_learning_rate", meta_learning_rate) if meta_learning_rate < 0 else ("lookahead_lr", lookahead_lr)
            raise KDLightError(f"{name} must be >= 0, got {value}")
        if mixer_hidden < 1 or (num_examples is not None and num_examples < 1):
            raise KDLightError(f"mixer_hidden and num_examples must be >= 1, got {mixer_hidden} and {num_examples}")
        self.meta_optimizer_factory = meta_optimizer
        self._mixer_module: nn.Module | None = None
        self._clean_batches = None
        super().__init__(teacher, temperature=temperature, **kwargs)
        self.hparams.pop("meta_optimizer", None)
        self.hparams["meta_learning_rate"] = meta_learning_rate  # resolved from null; subclasses' frames keep null
        self.automatic_optimization = False
        # training batches seen: the meta schedule counts these, not global_step (which also counts
        # the meta optimiser's steps); a buffer, so checkpoints carry it and resume continues it
        self.register_buffer("meta_progress", torch.zeros(1, dtype=torch.long))
        self.meta_batches_seen: int | None = None  # meta_progress on the host: meta_due reads no device tensor

    # --------------------------------------------------------------------------- teachers
    @property
    def num_teachers(self) -> int:
        return 1 + len(self.extra_teacher_list())

    def extra_teacher_list(self) -> list[nn.Module]:
        return list(self.extra_teachers) if hasattr(self, "extra_teachers") else []

    def configure_losses(self) -> None:
        if self.task.num_labels < 2:
            raise KDLightError("AdaptiveLossMixingKD needs a classification head (num_labels >= 2)")
        self.kd_loss = KLDivergence(self.hparams.temperature, reduction="none")

    def all_teacher_logits(self, batch: dict[str, Tensor]) -> list[Tensor]:
        logits = [self.teacher_logits(batch)]
        with torch.no_grad():
            logits += [t(**model_inputs(batch)).logits for t in self.extra_teacher_list()]
        return logits

    # ------------------------------------------------------------------------------ mixer
    @property
    def mixer(self) -> nn.Module:
        """The lambda table or mixing network. Kept outside the registered submodules on purpose
        (so DDP never buckets it); moved with the module and saved in checkpoints by hand."""
        if self._mixer_module is None:
            raise KDLightError("the mixing weights are built at fit start (or from a checkpoint); call trainer.fit first")
        return self._mixer_module

    def build_mixer(self, num_examples: int | None) -> nn.Module:
        hp = self.hparams
        if hp.mixer == "network":
            mixer = MixingNetwork(self.num_teachers, hp.mixer_hidden, hp.init_lambda)
        elif self.official:
            if not num_examples:
                raise KDLightError("the lambda table needs num_examples (or a NoisyLabelDataModule to count them)")
            mixer = OfficialLambdaTable(num_examples, self.num_teachers, hp.init_lambda)
        else:
            if not num_examples:
                raise KDLightError("the lambda table needs num_examples (or a NoisyLabelDataModule to count them)")
            mixer = LambdaTable(num_examples, self.num_teachers, hp.init_lambda)
        self.__dict__["_mixer_module"] = mixer.to(self.device)  # not a registered submodule (see ``mixer``)
        return mixer

    def side_modules(self) -> dict[str, nn.Module]:
        mixer = self.__dict__.get("_mixer_module")
        return {"mixer": mixer} if mixer is not None else {}

    def setup(self, stage: str) -> None:
        if stage == "fit" and not hasattr(self.trainer.datamodule, "clean_val_batches"):  # the first thing to fix
            raise KDLightError("AdaptiveLossMixingKD meta-learns on clean data: wrap the datamodule in NoisyLabelDataModule")
        super().setup(stage)
        if stage == "fit" and self._mixer_module is None:
            num = self.hparams.num_examples
            datamodule = self.trainer.datamodule
            if num is None and self.hparams.mixer == "table":
                if not hasattr(datamodule, "max_train_idx"):
                    raise KDLightError("AdaptiveLossMixingKD needs data: NoisyLabelDataModule (clean batches and example ids), or set num_examples")
                num = datamodule.max_train_idx + 1
            self.build_mixer(num)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("extra_teachers.")}
        if self._mixer_module is not None:
            checkpoint[MIXER_KEY] = {"state_dict": {k: v.detach().cpu() for k, v in self._mixer_module.state_dict().items()}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.meta_batches_seen = None  # re-read from the restored buffer
        if "meta_progress" not in checkpoint["state_dict"]:  # written before the counter existed: Lightning's batch count
            loops = checkpoint.get("loops", {}).get("fit_loop", {})
            done = loops.get("epoch_loop.batch_progress", {}).get("total", {}).get("completed", 0)
            checkpoint["state_dict"]["meta_progress"] = torch.tensor([done], dtype=torch.long)
        for i, t in enumerate(self.extra_teacher_list()):
            checkpoint["state_dict"].update({f"extra_teachers.{i}.{k}": v for k, v in t.state_dict().items()})
        saved = checkpoint.get(MIXER_KEY)
        if saved is not None:
            state = saved["state_dict"]
            if self._mixer_module is None:
                rows = state.get("logits", state.get("lam"))  # lam: the official table
                self.build_mixer(rows.shape[0] if rows is not None else None)
            self._mixer_module.load_state_dict(state)

    # ------------------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        student = super().configure_optimizers()
        if self._mixer_module is None:  # called outside fit (e.g. by tests): build from hparams
            self.build_mixer(self.hparams.num_examples)
        if self.official:  # the weights move by the meta pass's plain steps, not by an optimiser
            return student
        params = list(self.mixer.parameters())
        if self.meta_optimizer_factory is not None:
            meta = self.meta_optimizer_factory(params)
        elif self.hparams.mixer == "network":
            meta = torch.optim.Adam(params, lr=self.hparams.meta_learning_rate)
        else:
            meta = torch.optim.SGD(params, lr=self.hparams.meta_learning_rate)
        return [student["optimizer"], meta], [student["lr_scheduler"]]

    def meta_due(self) -> bool:
        hp = self.hparams
        if hp.meta_steps == 0:
            return False
        if hp.meta_interval == "step":
            if self.meta_batches_seen is None:
                self.meta_batches_seen = int(self.meta_progress[0])
            step = self.meta_batches_seen
            return step >= hp.meta_warmup and (step - hp.meta_warmup) % hp.meta_every == 0
        epoch = self.current_epoch
        return epoch >= hp.meta_warmup and (epoch - hp.meta_warmup) % hp.meta_every == 0

    def next_clean_batch(self) -> dict[str, Tensor]:
        if self._clean_batches is None:
            self._clean_batches = self.trainer.datamodule.clean_val_batches()
        batch = next(self._clean_batches)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        # the table's bounds checked on the host copy of idx (checked on the device, it is a sync per step)
        mixer = self.__dict__.get("_mixer_module")
        if isinstance(mixer, LambdaTable) and self._trainer is not None and self.trainer.training and "idx" in batch:
            mixer.check_rows(batch["idx"])
        return batch

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._clean_batches = None
        self._flip_stats = torch.zeros(4, device=self.device)  # sum lambda flipped, n flipped, sum clean, n clean
        self.meta_batches_seen = int(self.meta_progress[0])  # once per fit (after any checkpoint restore)

    # --------------------------------------------------------------------------------- step
    def per_example_losses(self, student_logits: Tensor, teacher_logits: list[Tensor], labels: Tensor) -> tuple[Tensor, list[Tensor]]:
        ce = F.cross_entropy(student_logits.float(), labels.long(), reduction="none")
        kd = [self.kd_loss(student_logits, t) for t in teacher_logits]
        return ce, kd

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.official:
            return self.official_training_step(batch)
        student_opt, meta_opt = self.optimizers()
        scheduler = self.lr_schedulers()
        labels, idx = batch["labels"], batch["idx"]
        teacher_logits = self.all_teacher_logits(batch)

        if getattr(self, "_head_name", None) is None:  # the student's shape never changes: look it up once
            self._head_name = last_linear_name(self.student, self.task.num_labels)
        head_name = self._head_name
        head = self.student.get_submodule(head_name)
        captured: dict[str, Tensor] = {}
        hook = head.register_forward_hook(lambda m, inputs, out: captured.__setitem__("x", inputs[0]))
        try:
            student_logits = self.student_logits(batch)
        finally:
            hook.remove()

        meta_loss = None
        if self.meta_due():
            for _ in range(self.hparams.meta_steps):
                meta_loss = self.meta_step(meta_opt, student_opt, batch, captured["x"].detach(), head, head_name,
                                           student_logits.detach(), teacher_logits)

        ce, kd = self.per_example_losses(student_logits, teacher_logits, labels)
        with torch.no_grad():
            features = mixer_features(ce, kd, student_logits, teacher_logits, labels) if self.hparams.mixer == "network" else None
            weights = self.mixer(idx, features).detach()
        loss = mixed_loss(weights, ce, kd)
        student_opt.zero_grad()
        self.manual_backward(loss)
        student_opt.step()
        scheduler.step()

        self._log_step(loss, ce, kd, weights, batch, meta_loss)
        self.meta_progress += 1
        if self.meta_batches_seen is not None:
            self.meta_batches_seen += 1
        return loss.detach()

    def meta_step(self, meta_opt, student_opt, batch, features_x, head, head_name, student_logits, teacher_logits) -> Tensor:
        """One meta update of the mixing weights from a look-ahead scored on a clean batch."""
        hp = self.hparams
        labels, idx = batch["labels"], batch["idx"]
        clean = self.next_clean_batch()
        lr = hp.lookahead_lr if hp.lookahead_lr is not None else student_opt.param_groups[0]["lr"]
        mix_params = list(self.mixer.parameters())
        features = None
        if hp.mixer == "network":
            ce0, kd0 = self.per_example_losses(student_logits, teacher_logits, labels)
            features = mixer_features(ce0, kd0, student_logits, teacher_logits, labels)
        weights = self.mixer(idx, features)

        def inner_loss(train_logits: Tensor) -> Tensor:
            ce, kd = self.per_example_losses(train_logits, teacher_logits, labels)
            return mixed_loss(weights, ce, kd)

        if hp.lookahead == "last_layer":
            with torch.no_grad():  # the clean batch's head input under the current (fixed) body
                captured: dict[str, Tensor] = {}
                hook = head.register_forward_hook(lambda m, inputs, out: captured.__setitem__("x", inputs[0]))
                try:
                    self.student(**model_inputs(clean))
                finally:
                    hook.remove()
            module, params = head, {k: v for k, v in head.named_parameters()}
            train_inputs, val_inputs, logits_of = {"input": features_x}, {"input": captured["x"]}, (lambda out: out)
        else:
            module, params = self.student, {k: v for k, v in self.student.named_parameters() if v.requires_grad}
            train_inputs, val_inputs, logits_of = model_inputs(batch), model_inputs(clean), (lambda out: out.logits)
        world = self.trainer.world_size
        score, grads = lookahead_meta_gradients(module, params, train_inputs, val_inputs, clean["labels"], inner_loss, lr,
                                                mix_params, logits_of, average=self.average_across_ranks, world_size=world)
        if hp.mixer == "table" and hp.center_meta_grad:
            # before the cross-rank sum, while each rank's gradient holds only its own rows: every rank
            # subtracts the global batch's mean row from its rows, so the summed table stays identical
            rows = grads[0][idx]  # (B, width)
            local = torch.cat([rows.sum(0), rows.new_full((1,), float(len(idx)))])  # new_full: no host-to-device copy
            total = self.sum_across_ranks([local])[0]
            grads[0] = grads[0].index_put((idx,), rows - total[:-1] / total[-1])
        if world > 1:  # each rank holds its own examples' contributions: their sum is the global meta-gradient
            grads = self.sum_across_ranks(grads)
        if hp.mixer == "table" and hp.normalize_meta_grad:
            # the mean |gradient| over the global batch's rows, the same number on every rank
            local = torch.stack([grads[0][idx].abs().sum(), grads[0].new_full((), float(grads[0][idx].numel()))])
            total = self.sum_across_ranks([local])[0] if world > 1 else local
            grads[0] = grads[0] / (total[0] / total[1]).clamp_min(1e-12)
        meta_opt.zero_grad()
        for p, g in zip(mix_params, grads):
            p.grad = g.detach()
        meta_opt.step()
        return score.detach()

    def sum_across_ranks(self, tensors: list[Tensor]) -> list[Tensor]:
        if self.trainer.world_size == 1:
            return tensors
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        return [part.view_as(t) for part, t in zip(torch.split(flat, [t.numel() for t in tensors]), tensors)]

    def average_across_ranks(self, tensors: list[Tensor]) -> list[Tensor]:
        world = self.trainer.world_size
        return tensors if world == 1 else [t / world for t in self.sum_across_ranks(tensors)]

    def _log_step(self, loss, ce, kd, weights, batch, meta_loss) -> None:
        n = len(ce)
        lam = 1 - weights[:, 0]  # total weight on the teacher terms
        if "is_flipped" in batch:  # every step (epoch statistics); products, not boolean indexing (a host sync on GPU)
            flipped = batch["is_flipped"].to(lam.dtype)
            self._flip_stats += torch.stack([(lam * flipped).sum(), flipped.sum(), (lam * (1 - flipped)).sum(), (1 - flipped).sum()])
        parts = None
        if self.logs_this_step():
            parts = {"loss": loss.detach(), "ce": ce.detach().mean(), "kd": torch.stack(kd).detach().mean(), "lambda_mean": lam.mean(),
                     "lambda_std": lam.std() if n > 1 else torch.zeros((), device=lam.device)}
            if meta_loss is not None:
                parts["meta_loss"] = meta_loss
        self.log_training(parts, loss, n)

    def on_train_epoch_end(self) -> None:
        stats = self._flip_stats
        if self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        out = {}
        if stats[1] > 0:
            out["train/lambda_flipped"] = stats[0] / stats[1]
        if stats[3] > 0:
            out["train/lambda_clean"] = stats[2] / stats[3]
        if out:
            self.log_dict(out, sync_dist=False)
        self.last_flip_stats = {k.split("/")[1]: float(v) for k, v in out.items()}
        self._flip_stats = torch.zeros(4, device=self.device)

    # ------------------------------------------------------------------------- official mode
    @property
    def official(self) -> bool:
        return self.hparams.get("algorithm", "default") == "official"

    def official_training_step(self, batch: dict[str, Tensor]) -> Tensor:
        """train_distill_noise.py lines 554-580: the weighted loss with the table's current weights."""
        student_opt, scheduler = self.optimizers(), self.lr_schedulers()
        teacher_logits = self.all_teacher_logits(batch)
        student_logits = self.student_logits(batch)
        ce, kd = self.per_example_losses(student_logits, teacher_logits, batch["labels"])
        weights = self.mixer(batch["idx"]).detach()
        loss = mixed_loss(weights, ce, kd)
        student_opt.zero_grad()
        self.manual_backward(loss)
        student_opt.step()
        if scheduler is not None:
            scheduler.step()
        # the logged lambda is the teacher share w_KD / (w_CE + w_KD), 1 - w_CE when the weights are convex
        share = teacher_share(weights)
        self._log_step(loss, ce, kd, torch.stack([1 - share, share], -1), batch, self._official_meta_score)
        self._official_meta_score = None
        self.meta_progress += 1
        return loss.detach()

    def on_train_epoch_start(self) -> None:
        self._official_meta_score = None
        if self.official and official_meta_due(self.current_epoch, self.hparams.warm_epoch, self.hparams.select_every):
            self._official_meta_score = self.official_meta_pass()

    def _meta_pass_loader(self):
        """The training split in a seeded, epoch-dependent order (the code's shuffled ``trainloader_ind``),
        every rank taking every N-th example of one permutation, padded so all ranks see as many batches."""
        from torch.utils.data import DataLoader, Subset

        from kdlight.data.base import Collator

        datamodule = self.trainer.datamodule
        dataset = datamodule.splits[datamodule.train_split]
        world, rank = self.trainer.world_size, self.trainer.global_rank
        generator = torch.Generator().manual_seed(int(datamodule.seed if hasattr(datamodule, "seed") else 0) * 1000 + self.current_epoch)
        order = torch.randperm(len(dataset), generator=generator).tolist()
        per_rank = -(-len(order) // world)
        order = (order + order[: per_rank * world - len(order)])[rank::world]
        return DataLoader(Subset(dataset, order), batch_size=datamodule.batch_size,
                          collate_fn=Collator(datamodule.tokenizer.pad_token_id or 0))

    def _head_forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, nn.Linear]:
        """Student logits and the last linear layer's input (``model(inputs, last=True)`` in the code)."""
        head = self.student.get_submodule(last_linear_name(self.student, self.task.num_labels))
        captured: dict[str, Tensor] = {}
        hook = head.register_forward_hook(lambda m, inputs, out: captured.__setitem__("x", inputs[0]))
        try:
            logits = self.student_logits(batch)
        finally:
            hook.remove()
        return logits, captured["x"], head

    @torch.no_grad()
    def official_meta_pass(self) -> Tensor:
        """LearnMultiLambdaMeta.get_lambdas (lines 45-157) over this rank's share of the training set."""
        hp = self.hparams
        table: OfficialLambdaTable = self.mixer
        student_opt = self.optimizers()
        eta = hp.lookahead_lr if hp.lookahead_lr is not None else student_opt.param_groups[0]["lr"]
        world = self.trainer.world_size
        sum_ranks = (lambda t: self.sum_across_ranks([t])[0]) if world > 1 else None
        mean_ranks = (lambda t: self.average_across_ranks([t])[0]) if world > 1 else None
        before = table.lam.clone()
        was_training = self.student.training
        self.student.eval()  # the code scores a frozen copy in eval mode (update_model, lines 41-42)
        scores, group, idx_group = [], [], []
        loader = self._meta_pass_loader()
        try:
            for b, batch in enumerate(loader):
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits, features, head = self._head_forward(batch)
                teachers = self.all_teacher_logits(batch)
                bias = head.bias is not None
                labels = batch["labels"]
                rows = [last_layer_grads(logits, features, lambda z, y=labels: F.cross_entropy(z, y.long()), bias)]
                rows += [last_layer_grads(logits, features, lambda z, t=t: self.kd_loss(z, t).mean(), bias) for t in teachers]
                if world > 1:  # the global batch's mean loss is the mean of the ranks' means
                    rows = [r / world for r in rows]
                group.append(rows)
                idx_group.append(batch["idx"])
                if (b + 1) % hp.grad_fit == 0 or b + 1 == len(loader):
                    idx = torch.cat(idx_group)
                    grads = [torch.cat([r[c] for r in group]) for c in range(len(group[0]))]
                    clean = self.next_clean_batch()
                    clean_logits, clean_features, _ = self._head_forward(clean)
                    lam, score = official_lambda_update(table.lam[idx], grads, clean_logits, clean_features, clean["labels"],
                                                        eta, hp.meta_learning_rate, hp.meta_iterations, bias, sum_ranks, mean_ranks)
                    table.lam[idx] = lam
                    scores.append(score)
                    group, idx_group = [], []
        finally:
            self.student.train(was_training)
        if world > 1:  # each rank moved its own rows: the sum of the ranks' changes is the global table
            table.lam.copy_((before + self.sum_across_ranks([table.lam - before])[0]).clamp(1e-7, 2 - 1e-7))
        return torch.stack(scores).mean() if scores else None

    # ------------------------------------------------------------------------------ the picture
    def on_fit_end(self) -> None:
        super().on_fit_end()
        if self.hparams.get("lambda_plot", True) and not self.trainer.fast_dev_run and self._mixer_module is not None:
            self.write_lambda_plot()

    @torch.no_grad()
    def learned_lambdas(self) -> tuple[Tensor, Tensor]:
        """(idx, teacher share) of every training example under the current mixer (a forward pass for the network)."""
        datamodule = self.trainer.datamodule
        if not isinstance(self.mixer, MixingNetwork):
            dataset = datamodule.splits[datamodule.train_split]
            idx = torch.as_tensor(dataset["idx"], device=self.device)
            return idx, teacher_share(self.mixer(idx))
        ids, shares = [], []
        for batch in self._meta_pass_loader():
            batch = {k: v.to(self.device) for k, v in batch.items()}
            logits, teachers = self.student_logits(batch), self.all_teacher_logits(batch)
            ce, kd = self.per_example_losses(logits, teachers, batch["labels"])
            ids.append(batch["idx"])
            shares.append(teacher_share(self.mixer(batch["idx"], mixer_features(ce, kd, logits, teachers, batch["labels"]))))
        return torch.cat(ids), torch.cat(shares)

    def write_lambda_plot(self) -> Path | None:
        """``<log_dir>/lambda.png``: histogram of the learned teacher weights, flipped vs clean if known."""
        was_training = self.student.training
        self.student.eval()
        try:
            idx, lam = self.learned_lambdas()
        finally:
            self.student.train(was_training)
        root = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective under DDP: every rank asks
        if not self.trainer.is_global_zero:
            return None
        report = getattr(self.trainer.datamodule, "noise_report", None) or {}
        flipped_ids = set(report.get("flipped_idx", []))
        lam, idx = lam.float().cpu().numpy(), idx.cpu().numpy()
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=(6, 4))
        lo, hi = float(lam.min()), float(lam.max())
        if hi - lo < 1e-3:  # weights that did not move (e.g. no meta step yet): numpy cannot bin a zero range
            lo, hi = lo - 0.01, hi + 0.01
        bins = np.linspace(lo, hi, 41)
        if flipped_ids:
            mask = [int(i) in flipped_ids for i in idx]
            flipped = lam[mask]
            clean = lam[[not m for m in mask]]
            ax.hist(clean, bins=bins, alpha=0.6, density=True, label=f"clean labels (n={len(clean)}, mean {clean.mean():.3f})")
            if len(flipped):
                ax.hist(flipped, bins=bins, alpha=0.6, density=True, label=f"flipped labels (n={len(flipped)}, mean {flipped.mean():.3f})")
            ax.legend(fontsize=8)
        else:
            ax.hist(lam, bins=bins, alpha=0.8, density=True)
        ax.set_xlabel("learned teacher weight lambda (w_KD / (w_CE + w_KD))")
        ax.set_ylabel("density")
        ax.set_title(f"ALM-KD ({self.hparams.get('algorithm', 'default')}, {self.hparams.mixer}) after {self.current_epoch} epoch(s)")
        fig.tight_layout()
        root.mkdir(parents=True, exist_ok=True)
        path = root / "lambda.png"
        fig.savefig(path, dpi=110)
        logged = False
        for logger in self.trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(logger, "log_image"):  # W&B, Neptune
                logger.log_image(key="lambda", images=[str(path)])
                logged = True
            elif hasattr(experiment, "add_figure"):  # TensorBoard
                experiment.add_figure("lambda", fig, global_step=self.global_step)
                logged = True
        plt.close(fig)
        rank_zero_info(f"[kdlight] learned lambda histogram: {path}{' (also logged)' if logged else ''}")
        return path

    # ------------------------------------------------------------------------------ analysis
    @torch.no_grad()
    def table_lambdas(self) -> Tensor:
        """Current teacher weight of every table row (``1 - w_CE``), for analysis."""
        if not isinstance(self.mixer, (LambdaTable, OfficialLambdaTable)):
            raise KDLightError("table_lambdas needs mixer='table'")
        return teacher_share(self.mixer(torch.arange(self.mixer.num_examples, device=self.device)))


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
            raise KDLightError(f"MultiTeacherALMKD needs two or more teachers, got {len(teachers)}; use AdaptiveLossMixingKD for one")
        if teacher is not None and teacher != teachers[0]:
            raise KDLightError("MultiTeacherALMKD: leave teacher empty (teachers[0] is the base teacher)")
        self.extra_teacher_sources = list(teachers[1:])
        super().__init__(teachers[0], **kwargs)

    def configure_models(self) -> None:
        super().configure_models()
        task = self.task
        extra = []
        for source in self.extra_teacher_sources:
            model = load_classifier(source, task.num_labels, task.label_names, require_head=True, role="teacher").eval().requires_grad_(False)
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
