"""ALM-KD as the authors' code runs it (``algorithm: official`` of :class:`~kdlight.modules.alm.AdaptiveLossMixingKD`).

Plain torch, no Lightning. Reference: durgas16/AMAL at commit 6c4764b, files

* ``KD/LearnMultiLambdaMeta.py`` (``get_lambdas``, lines 45-157): the meta pass;
* ``KD/train_distill_noise.py``: the table's initial values (lines 418-421), the training loss
  (lines 561-573), when the meta pass runs and with which step size (lines 540-547), SGD and T
  (lines 32-34, 161-165);
* ``KD/config/cifar100/config_amal_cifar100.py``: ``grad_fit=3`` (line 8), SGD lr 0.1, momentum 0.9,
  weight decay 5e-4 (lines 33-36), ``warm_epoch=10``, ``select_every=10`` (lines 41-44);
* ``KD/utils/custom_dataset.py`` ``create_noisy`` (lines 90-94): the uniform noise model
  (``noise_type="uniform"`` of :class:`~kdlight.data.noisy.NoisyLabelDataModule`).

The meta pass, per group of ``grad_fit`` training batches (the student frozen, in eval mode):

1. per example ``i`` and loss term ``c`` (CE, then each teacher's ``T^2 KL``), the closed-form
   gradient of the *batch-mean* loss with respect to the last linear layer: ``g = dL/dz_i`` (bias)
   and ``dL/dz_i (outer) h_i`` (weight), ``h_i`` the layer's input (LearnMultiLambdaMeta.py 61-67,
   87-101); the rows of the group are stacked (69-84);
2. ``G = sum_i sum_c lambda_{i,c} g_{i,c}`` (lines 121-132: a *sum* over the group's examples);
3. on one clean batch, look-ahead logits ``z' = z - eta * G_bias - eta * h @ G_weight^T`` with ``eta``
   the student's current learning rate (lines 107-138);
4. meta loss = mean CE of ``z'`` on the clean labels (line 141); ``lambda <- lambda - meta_lr * dloss/dlambda``
   for the group's rows (lines 144-150), ``meta_lr`` 1500; every weight clamped to ``[1e-7, 2 - 1e-7]``
   (lines 53, 154); steps 2-4 repeated ``meta_iterations`` = 5 times on the same clean batch (line 119).

The weights are *not* convex: each example has its own CE weight (initially ``1 - 0.9``) and KD
weight (initially 0.9), each clamped independently; the training loss is the batch mean of
``lambda_CE,i * CE_i + sum_k lambda_k,i * T^2 KL_k,i``.

What the official mode does, and where each piece comes from:

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

import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlight.components.meta import CleanScore, MetaBatch, MetaLearner, clean_score, teacher_share
from kdlight.distributed import mean_across_ranks, sum_across_ranks, world_size
from kdlight.errors import KDLightError

# MetaLearner's settings of the per-batch meta step, which the official algorithm does not have
PER_BATCH_SETTINGS = (
    "lookahead",
    "meta_every",
    "meta_interval",
    "meta_warmup",
    "meta_steps",
    "meta_optimizer",
    "normalize_meta_grad",
    "center_meta_grad",
    "mixer_hidden",
)
LAMBDA_MIN = 1e-7  # LearnMultiLambdaMeta.py line 154: clamp_(min=1e-7, max=max_value - 1e-7), max_value = 2 (line 53)
LAMBDA_MAX = 2.0 - 1e-7


def _full(t: Tensor) -> Tensor:
    """At least float32 (half-precision logits lose the small per-example gradients); float64 kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class OfficialLambdaTable(nn.Module):
    """AMAL's lambda table: per example, an unconstrained weight for CE (column 0) and each KD term.

    Initial values as ``train_distill_noise.py`` lines 418-421: every KD column ``init_lambda``, the
    CE column ``1 - init_lambda``. The values live in a buffer: they are changed by the meta pass's
    plain gradient steps, never by an optimiser.
    """

    def __init__(self, num_examples: int, num_teachers: int = 1, init_lambda: float = 0.9) -> None:
        super().__init__()
        self.num_teachers = num_teachers
        lam = torch.full((num_examples, num_teachers + 1), float(init_lambda))
        lam[:, 0] = 1 - init_lambda
        self.register_buffer("lam", lam)

    @property
    def num_examples(self) -> int:
        return self.lam.shape[0]

    def forward(self, idx: Tensor, features: Tensor | None = None) -> Tensor:
        return self.lam[idx]


def official_meta_due(epoch: int, warm_epoch: int, select_every: int) -> bool:
    """Whether the meta pass runs at the start of ``epoch`` (counted from 0).

    Every ``select_every`` epochs from ``warm_epoch``. The code's test is ``i % select == 0 and
    i >= select`` (train_distill_noise.py line 540), the same epochs for its configs, where
    ``warm_epoch == select_every`` (10); ``select_every`` 0 turns the meta pass off.
    """
    return select_every > 0 and epoch >= warm_epoch and (epoch - warm_epoch) % select_every == 0


def last_layer_grads(
    logits: Tensor, features: Tensor, loss_fn: Callable[[Tensor], Tensor], bias: bool = True
) -> Tensor:
    """Per-example gradients of ``loss_fn(logits)`` (a batch *mean*) for a last linear layer, closed form.

    Row ``i``: ``[dL/dz_i (K values, if bias), dL/dz_i[k] * h_i[d] for k, d (K*D values, row-major
    like the layer's ``(K, D)`` weight)]``. ``features`` is the layer's input ``h``.
    """
    z = _full(logits.detach()).requires_grad_(True)
    with torch.enable_grad():
        dz = torch.autograd.grad(loss_fn(z), z)[0]
    weight = (dz[:, :, None] * _full(features.detach())[:, None, :]).reshape(len(dz), -1)
    return torch.cat([dz, weight], dim=1) if bias else weight


@dataclass
class HeadView:
    """A batch seen at the student's last linear layer ``z = h @ W^T (+ b)``: ``z``, ``h`` and the labels."""

    logits: Tensor
    features: Tensor
    labels: Tensor
    bias: bool = True  # whether the layer has a bias (the per-example gradient rows then start with dL/dz)


def lookahead_lambda_grads(
    lam: Tensor, grads: list[Tensor], clean: HeadView, eta: float, score_kind: CleanScore = "cross_entropy"
) -> tuple[Tensor, Tensor]:
    """Clean CE after the closed-form last-layer look-ahead, and its gradient with respect to ``lam``.

    ``lam`` is ``(n, C)`` (the group's rows), ``grads[c]`` the ``(n, P)`` per-example gradients of loss
    term ``c``. With ``G = sum_i sum_c lam[i, c] * grads[c][i]`` the look-ahead logits are
    ``clean.logits - eta * (G_bias + clean.features @ G_weight^T)``; ``dloss/dlam[i, c] =
    grads[c][i] . dloss/dG`` (the chain rule of the code's autograd, lines 121-149). Under data
    parallelism ``G`` is summed across ranks (each rank holds its own examples) and ``dloss/dG``
    averaged (each rank scores its own clean batch).
    """
    num_classes = clean.logits.shape[-1]
    total = sum((lam[:, c : c + 1].to(g.dtype) * g).sum(0) for c, g in enumerate(grads))
    (total,) = sum_across_ranks([total])
    total = total.detach().requires_grad_(True)
    with torch.enable_grad():
        weight = total[num_classes:] if clean.bias else total
        step = clean.features.to(total.dtype) @ weight.view(num_classes, -1).T
        if clean.bias:
            step = step + total[:num_classes]
        logits = clean.logits.to(total.dtype) - eta * step
        if score_kind == "cross_entropy":  # the code's criterion_red (line 141), in the logits' own precision
            score = F.cross_entropy(logits, clean.labels.long())
        else:
            score = clean_score(logits, clean.labels, score_kind)
        d_total = torch.autograd.grad(score, total)[0]
    (d_total,) = mean_across_ranks([d_total])
    return score.detach(), torch.stack([g @ d_total for g in grads], dim=1)


def official_lambda_update(
    lam: Tensor,
    grads: list[Tensor],
    clean: HeadView,
    eta: float,
    meta_lr: float = 1500.0,
    iterations: int = 5,
    score_kind: CleanScore = "cross_entropy",
) -> tuple[Tensor, Tensor]:
    """``iterations`` plain gradient steps on one group's rows, each clamped (lines 119-154).

    Returns the new rows and the clean score before the last step.
    """
    score = torch.zeros(())
    for _ in range(iterations):
        score, d_lam = lookahead_lambda_grads(lam, grads, clean, eta, score_kind)
        lam = (lam - meta_lr * d_lam.to(lam.dtype)).clamp(LAMBDA_MIN, LAMBDA_MAX)
    return lam, score


class OfficialMetaLearner(MetaLearner):
    """:class:`~kdlight.components.meta.MetaLearner` with the authors' table and schedule.

    The weights move only in :meth:`meta_pass`, at the start of every ``select_every``-th epoch from
    ``warm_epoch``; the training batches then just read them (no per-batch meta step, no optimiser).
    """

    table_class = OfficialLambdaTable
    default_learning_rate = 1500.0

    def __init__(
        self, grad_fit: int = 3, select_every: int = 10, warm_epoch: int = 10, meta_iterations: int = 5, **kwargs
    ) -> None:
        if kwargs.get("mixer", "table") != "table":
            raise KDLightError(
                "algorithm='official' learns a lambda table; set mixer: table (or algorithm: default for the network)"
            )
        if grad_fit < 1 or select_every < 0 or warm_epoch < 0 or meta_iterations < 0:
            raise KDLightError("grad_fit must be >= 1; select_every, warm_epoch and meta_iterations >= 0")
        defaults = inspect.signature(MetaLearner.__init__).parameters
        unused = [k for k in PER_BATCH_SETTINGS if k in kwargs and kwargs[k] != defaults[k].default]
        if unused:  # the official algorithm has no per-batch meta step: these would be silently ignored
            raise KDLightError(
                f"{unused[0]} does not apply to OfficialMetaLearner (its weights move in a pass every select_every "
                "epochs); remove it, or use MetaLearner"
            )
        super().__init__(**kwargs)
        self.grad_fit, self.select_every, self.warm_epoch = grad_fit, select_every, warm_epoch
        self.iterations = meta_iterations
        self.own_settings = {
            "grad_fit": grad_fit,
            "select_every": select_every,
            "warm_epoch": warm_epoch,
            "meta_iterations": meta_iterations,
        }

    def configure_optimizer(self) -> None:  # the weights move by the meta pass's plain steps
        if self.mixer is None:
            self.build()

    def step_due(self, epoch: int) -> bool:
        return False

    def pass_due(self, epoch: int) -> bool:
        return official_meta_due(epoch, self.warm_epoch, self.select_every)

    @torch.no_grad()
    def weights(self, batch: MetaBatch, ce: Tensor, kd: list[Tensor]) -> Tensor:
        return self.mixer(batch.idx).detach()

    def teacher_weight(self, weights: Tensor) -> Tensor:
        """The logged lambda: the teacher share ``w_KD / (w_CE + w_KD)`` (``1 - w_CE`` for convex weights)."""
        return teacher_share(weights)

    @torch.no_grad()
    def meta_pass(
        self, student: nn.Module, batches: Iterable[MetaBatch], clean: Iterator[MetaBatch], student_lr: float
    ) -> Tensor | None:
        """LearnMultiLambdaMeta.get_lambdas (lines 45-157) over this rank's share of the training set.

        ``batches``: the training batches with the (frozen) student's and the teachers' logits; ``clean``
        yields a fresh clean batch per group of ``grad_fit`` of them. Returns the mean clean score.
        """
        head = self.head(student)
        bias = head.bias is not None
        eta = self.lookahead_lr if self.lookahead_lr is not None else student_lr
        world = world_size()
        table: OfficialLambdaTable = self.mixer
        before = table.lam.clone()
        scores, group = [], []
        for batch in batches:
            losses = [lambda z, y=batch.labels: F.cross_entropy(z, y.long())]  # CE, then each teacher's KD term
            losses += [lambda z, t=t: self.kd_loss(z, t).mean() for t in batch.teacher_logits]
            rows = [last_layer_grads(batch.logits, batch.head_input, loss, bias) for loss in losses]
            if world > 1:  # the global batch's mean loss is the mean of the ranks' means
                rows = [r / world for r in rows]
            group.append((batch.idx, rows))
            if len(group) == self.grad_fit:
                scores.append(self._update_rows(student, group, next(clean), eta, bias))
                group = []
        if group:
            scores.append(self._update_rows(student, group, next(clean), eta, bias))
        if world > 1:  # each rank moved its own rows: the sum of the ranks' changes is the global table
            (delta,) = sum_across_ranks([table.lam - before])
            table.lam.copy_((before + delta).clamp(LAMBDA_MIN, LAMBDA_MAX))
        return torch.stack(scores).mean() if scores else None

    def _update_rows(
        self, student: nn.Module, group: list[tuple[Tensor, list[Tensor]]], clean: MetaBatch, eta: float, bias: bool
    ) -> Tensor:
        """One clean batch's plain steps on the rows of a group of training batches (lines 105-154)."""
        idx = torch.cat([i for i, _ in group])
        grads = [torch.cat([rows[c] for _, rows in group]) for c in range(len(group[0][1]))]
        logits, features = self.student_forward(student, clean.inputs)
        view = HeadView(logits, features, clean.labels, bias)
        lam, score = official_lambda_update(
            self.mixer.lam[idx], grads, view, eta, self.learning_rate, self.iterations, self.clean_score
        )
        self.mixer.lam[idx] = lam
        return score


__all__ = [
    "HeadView",
    "OfficialLambdaTable",
    "OfficialMetaLearner",
    "last_layer_grads",
    "lookahead_lambda_grads",
    "official_lambda_update",
    "official_meta_due",
]
