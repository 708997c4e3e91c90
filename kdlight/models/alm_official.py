"""ALM-KD as the authors' code runs it (``algorithm="official"`` of :class:`~kdlight.modules.alm.AdaptiveLossMixingKD`).

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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def teacher_share(weights: Tensor) -> Tensor:
    """The fraction of an example's total weight on the teacher terms; ``1 - w_CE`` for convex weights."""
    return weights[:, 1:].sum(-1) / weights.sum(-1).clamp_min(1e-12)


def official_meta_due(epoch: int, warm_epoch: int, select_every: int) -> bool:
    """Whether the meta pass runs at the start of ``epoch`` (counted from 0).

    Every ``select_every`` epochs from ``warm_epoch``. The code's test is ``i % select == 0 and
    i >= select`` (train_distill_noise.py line 540), the same epochs for its configs, where
    ``warm_epoch == select_every`` (10); ``select_every`` 0 turns the meta pass off.
    """
    return select_every > 0 and epoch >= warm_epoch and (epoch - warm_epoch) % select_every == 0


def last_layer_grads(logits: Tensor, features: Tensor, loss_fn: Callable[[Tensor], Tensor], bias: bool = True) -> Tensor:
    """Per-example gradients of ``loss_fn(logits)`` (a batch *mean*) for a last linear layer, closed form.

    Row ``i``: ``[dL/dz_i (K values, if bias), dL/dz_i[k] * h_i[d] for k, d (K*D values, row-major
    like the layer's ``(K, D)`` weight)]``. ``features`` is the layer's input ``h``.
    """
    z = _full(logits.detach()).requires_grad_(True)
    with torch.enable_grad():
        dz = torch.autograd.grad(loss_fn(z), z)[0]
    weight = (dz[:, :, None] * _full(features.detach())[:, None, :]).reshape(len(dz), -1)
    return torch.cat([dz, weight], dim=1) if bias else weight


def lookahead_lambda_grads(
    lam: Tensor,
    grads: list[Tensor],
    clean_logits: Tensor,
    clean_features: Tensor,
    clean_labels: Tensor,
    eta: float,
    bias: bool = True,
    sum_across_ranks: Callable[[Tensor], Tensor] | None = None,
    mean_across_ranks: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Clean CE after the closed-form last-layer look-ahead, and its gradient with respect to ``lam``.

    ``lam`` is ``(n, C)`` (the group's rows), ``grads[c]`` the ``(n, P)`` per-example gradients of loss
    term ``c``. With ``G = sum_i sum_c lam[i, c] * grads[c][i]`` the look-ahead logits are
    ``clean_logits - eta * (G_bias + clean_features @ G_weight^T)``; ``dloss/dlam[i, c] =
    grads[c][i] . dloss/dG`` (the chain rule of the code's autograd, lines 121-149). Under data
    parallelism ``sum_across_ranks`` sums ``G`` (each rank holds its own examples) and
    ``mean_across_ranks`` averages ``dloss/dG`` (each rank scores its own clean batch).
    """
    num_classes = clean_logits.shape[-1]
    total = sum((lam[:, c : c + 1].to(g.dtype) * g).sum(0) for c, g in enumerate(grads))
    if sum_across_ranks is not None:
        total = sum_across_ranks(total)
    total = total.detach().requires_grad_(True)
    with torch.enable_grad():
        weight = total[num_classes:] if bias else total
        step = clean_features.to(total.dtype) @ weight.view(num_classes, -1).T
        if bias:
            step = step + total[:num_classes]
        score = F.cross_entropy(clean_logits.to(total.dtype) - eta * step, clean_labels.long())
        d_total = torch.autograd.grad(score, total)[0]
    if mean_across_ranks is not None:
        d_total = mean_across_ranks(d_total)
    return score.detach(), torch.stack([g @ d_total for g in grads], dim=1)


def official_lambda_update(
    lam: Tensor,
    grads: list[Tensor],
    clean_logits: Tensor,
    clean_features: Tensor,
    clean_labels: Tensor,
    eta: float,
    meta_lr: float = 1500.0,
    iterations: int = 5,
    bias: bool = True,
    sum_across_ranks: Callable[[Tensor], Tensor] | None = None,
    mean_across_ranks: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """``iterations`` plain gradient steps on one group's rows, each clamped (lines 119-154).

    Returns the new rows and the clean score before the last step.
    """
    score = torch.zeros(())
    for _ in range(iterations):
        score, d_lam = lookahead_lambda_grads(lam, grads, clean_logits, clean_features, clean_labels, eta, bias,
                                              sum_across_ranks, mean_across_ranks)
        lam = (lam - meta_lr * d_lam.to(lam.dtype)).clamp(LAMBDA_MIN, LAMBDA_MAX)
    return lam, score
