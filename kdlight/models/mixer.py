"""ALM-KD building blocks in plain torch: per-example loss-mixing weights and the meta look-ahead.

* :class:`LambdaTable` - one learned weight vector per training example, indexed by the example's
  stable ``idx`` (AMAL's ``LearnMultiLambdaMeta``/``LearnLambdaMeta``). One loss term to mix with CE
  (a single teacher): a sigmoid of one logit, ``lambda_i in (0, 1)``. ``K`` teachers: a softmax over
  ``K + 1`` logits (CE and the K KD terms).
* :class:`MixingNetwork` - Meta-Weight-Net style: per-example losses and confidences in, the same
  convex weights out; it generalises to examples it has not seen.
* :func:`lookahead_loss` - the one-step look-ahead (SGD step of size ``lr`` on the mixed training
  loss, differentiable in the weights) scored by cross-entropy on a clean batch, computed with
  ``torch.func.functional_call``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call


def mix_weights_from_logits(logits: Tensor) -> Tensor:
    """Map mixer logits ``(B, 1)`` (sigmoid) or ``(B, K + 1)`` (softmax) to convex weights ``(B, K + 1)``.

    Column 0 weighs the label loss (CE), columns ``1..K`` the KD terms.
    """
    if logits.shape[-1] == 1:
        lam = torch.sigmoid(logits)
        return torch.cat([1 - lam, lam], dim=-1)
    return torch.softmax(logits, dim=-1)


def initial_logits(init_lambda: float, num_teachers: int) -> Tensor:
    """Logits whose weights are ``1 - init_lambda`` on CE and ``init_lambda`` shared by the teachers."""
    if not 0 < init_lambda < 1:
        raise ValueError(f"init_lambda must be in (0, 1), got {init_lambda}")
    if num_teachers == 1:
        return torch.tensor([math.log(init_lambda / (1 - init_lambda))])
    per_teacher = init_lambda / num_teachers
    return torch.tensor([math.log(1 - init_lambda)] + [math.log(per_teacher)] * num_teachers)


class LambdaTable(nn.Module):
    """One row of mixing logits per training example (rows addressed by the example's ``idx``)."""

    def __init__(self, num_examples: int, num_teachers: int = 1, init_lambda: float = 0.9) -> None:
        super().__init__()
        self.num_teachers = num_teachers
        width = 1 if num_teachers == 1 else num_teachers + 1
        self.logits = nn.Parameter(initial_logits(init_lambda, num_teachers).repeat(num_examples, 1).reshape(num_examples, width))

    @property
    def num_examples(self) -> int:
        return self.logits.shape[0]

    def check_rows(self, idx: Tensor) -> None:
        """Raise if an example idx has no row. Call it on the host copy of ``idx`` before the batch
        moves (AdaptiveLossMixingKD does): checked in ``forward`` it would read the device back."""
        if len(idx) and (int(idx.max()) >= self.num_examples or int(idx.min()) < 0):
            raise IndexError(f"example idx {int(idx.max())} outside the lambda table of {self.num_examples} rows")

    def forward(self, idx: Tensor, features: Tensor | None = None) -> Tensor:
        return mix_weights_from_logits(self.logits[idx])


class MixingNetwork(nn.Module):
    """A small MLP from per-example features (losses, confidences) to convex mixing weights.

    Features (see :func:`mixer_features`): CE_i, the K KD_i, the student's max probability and
    probability of the given label, and the same two for every teacher.
    """

    def __init__(self, num_teachers: int = 1, hidden: int = 32, init_lambda: float = 0.9) -> None:
        super().__init__()
        self.num_teachers = num_teachers
        width = 1 if num_teachers == 1 else num_teachers + 1
        self.net = nn.Sequential(nn.Linear(feature_size(num_teachers), hidden), nn.ReLU(), nn.Linear(hidden, width))
        with torch.no_grad():  # start at init_lambda everywhere, like the table
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.copy_(initial_logits(init_lambda, num_teachers))

    def forward(self, idx: Tensor, features: Tensor | None = None) -> Tensor:
        if features is None:
            raise ValueError("MixingNetwork needs per-example features")
        return mix_weights_from_logits(self.net(features))


def feature_size(num_teachers: int) -> int:
    return 1 + num_teachers + 2 + 2 * num_teachers


@torch.no_grad()
def mixer_features(ce: Tensor, kd: list[Tensor], student_logits: Tensor, teacher_logits: list[Tensor], labels: Tensor) -> Tensor:
    """Per-example inputs of the mixing network (all detached): losses and confidences."""
    cols = [ce.detach().float(), *[k.detach().float() for k in kd]]
    for logits in [student_logits, *teacher_logits]:
        probs = F.softmax(logits.detach().float(), dim=-1)
        cols += [probs.max(-1).values, probs.gather(-1, labels.long().view(-1, 1)).squeeze(-1)]
    return torch.stack(cols, dim=-1)


def mixed_loss(weights: Tensor, ce: Tensor, kd: list[Tensor]) -> Tensor:
    """Mean over the batch of ``w_0 * CE_i + sum_k w_k * KD_k,i``."""
    terms = torch.stack([ce, *kd], dim=-1)
    return (weights * terms).sum(-1).mean()


def last_linear_name(model: nn.Module, out_features: int) -> str:
    """Name of the last ``nn.Linear`` producing ``out_features`` outputs (the classification head)."""
    name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == out_features:
            name = module_name
    if name is None:
        raise ValueError(f"no nn.Linear with {out_features} outputs in {type(model).__name__}")
    return name


def lookahead_loss(
    module: nn.Module,
    params: dict[str, Tensor],
    train_inputs: dict,
    val_inputs: dict,
    val_labels: Tensor,
    inner_loss: Callable[[Tensor], Tensor],
    lr: float,
    logits_of: Callable = lambda out: out,
) -> Tensor:
    """CE on a clean batch after one differentiable SGD step of ``inner_loss`` on ``params``.

    ``module`` is called with ``functional_call(module, params, kwargs=inputs)``; parameters not in
    ``params`` keep their current (constant) values. ``inner_loss(train_logits)`` must depend on the
    mixing weights, so that the returned loss is differentiable with respect to them.
    """
    train_logits = logits_of(functional_call(module, params, args=(), kwargs=train_inputs))
    loss = inner_loss(train_logits)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    updated = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
    val_logits = logits_of(functional_call(module, updated, args=(), kwargs=val_inputs))
    return F.cross_entropy(val_logits.float(), val_labels.long())


def lookahead_meta_gradients(
    module: nn.Module,
    params: dict[str, Tensor],
    train_inputs: dict,
    val_inputs: dict,
    val_labels: Tensor,
    inner_loss: Callable[[Tensor], Tensor],
    lr: float,
    mix_params: list[Tensor],
    logits_of: Callable = lambda out: out,
    average: Callable[[list[Tensor]], list[Tensor]] | None = None,
    world_size: int = 1,
) -> tuple[Tensor, list[Tensor]]:
    """The gradient of :func:`lookahead_loss` with respect to ``mix_params``, data-parallel exact.

    With N ranks, one data-parallel step moves the parameters by the ranks' *mean* gradient, and the
    clean score is the mean over all ranks' clean batches. ``average(tensors)`` averages a list of
    tensors across ranks (identity on one process). Each rank's result holds the contributions of
    its own examples; summed across ranks it equals the single-process meta-gradient of the same
    global batch (for equal per-rank batch sizes). Returns (the ranks' mean clean score, gradients).
    """
    average = average or (lambda tensors: tensors)
    train_logits = logits_of(functional_call(module, params, args=(), kwargs=train_inputs))
    grads = torch.autograd.grad(inner_loss(train_logits), list(params.values()), create_graph=True)
    # the value is the ranks' mean gradient; the derivative flows only into this rank's weights
    means = average([g.detach() for g in grads])
    grads = [m + (g - g.detach()) / world_size for m, g in zip(means, grads)]
    updated = {name: p.detach() - lr * g for (name, p), g in zip(params.items(), grads)}
    val_logits = logits_of(functional_call(module, updated, args=(), kwargs=val_inputs))
    score = F.cross_entropy(val_logits.float(), val_labels.long())
    # chain rule through the updated parameters, with the clean-score gradient averaged over ranks
    outer = average(list(torch.autograd.grad(score, list(updated.values()), retain_graph=True)))
    meta = torch.autograd.grad(list(updated.values()), mix_params, grad_outputs=outer, allow_unused=True)
    meta = [torch.zeros_like(p) if g is None else g for p, g in zip(mix_params, meta)]
    return average([score.detach()])[0], meta
