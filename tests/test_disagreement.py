"""TeacherDisagreementKD: the teacher alone on the labels it disagrees with, ``alpha`` on the rest."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdlight.errors import KDLightError
from kdlight.losses import KLDivergence
from kdlight.modules import TeacherDisagreementKD


def module(alpha: float = 0.3) -> SimpleNamespace:
    """The loss's state without a teacher folder: temperature 2, ``alpha``, the class's own flag."""
    m = SimpleNamespace(hparams=SimpleNamespace(temperature=2.0), alpha=alpha)
    m.teacher_only = lambda t, b: TeacherDisagreementKD.teacher_only(m, t, b)
    return m


TEACHER = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])  # predicts 0, 1, 2, 0


def test_the_label_is_left_out_where_the_teacher_predicts_another_class():
    """The flag is the teacher's argmax != label (not the datamodule's flip mask), and it is what the lambda
    monitor reads."""
    torch.manual_seed(0)
    student, m = torch.randn(4, 3), module()
    labels = torch.tensor([0, 2, 2, 1])  # the 2nd and 4th disagree with the teacher
    batch = {"labels": labels, "is_flipped": torch.tensor([1, 0, 1, 0]), "idx": torch.arange(4)}
    out = TeacherDisagreementKD.compute_loss(m, student, TEACHER, batch)
    assert torch.allclose(m.last_teacher_weight[1], torch.tensor([0.3, 1.0, 0.3, 1.0]))
    kd = KLDivergence(2.0, reduction="none")(student, TEACHER)
    ce = F.cross_entropy(student, labels, reduction="none")
    expected = (0.3 * kd[0] + 0.7 * ce[0] + kd[1] + 0.3 * kd[2] + 0.7 * ce[2] + kd[3]) / 4
    assert torch.allclose(out["loss"], expected) and float(out["teacher_only"]) == 0.5
    # a disagreeing row's label does not count; an agreeing row's does
    relabelled = TeacherDisagreementKD.compute_loss(
        m, student, TEACHER, {**batch, "labels": torch.tensor([0, 0, 2, 2])}
    )
    assert torch.allclose(relabelled["loss"], out["loss"])
    moved = TeacherDisagreementKD.compute_loss(m, student, TEACHER, {**batch, "labels": torch.tensor([1, 2, 2, 1])})
    assert not torch.allclose(moved["loss"], out["loss"])


def test_unlabelled_rows_get_the_teacher_only():
    torch.manual_seed(1)
    student, m = torch.randn(4, 3), module(alpha=0.0)
    labels = torch.tensor([0, -100, 2, -100])  # the teacher agrees with both labelled rows
    out = TeacherDisagreementKD.compute_loss(m, student, TEACHER, {"labels": labels})
    kd = KLDivergence(2.0, reduction="none")(student, TEACHER)
    ce = F.cross_entropy(student, labels, ignore_index=-100, reduction="none")
    assert torch.allclose(out["loss"], (ce[0] + kd[1] + ce[2] + kd[3]) / 4)
    assert torch.isfinite(out["ce"])


def test_a_regression_head_is_refused_with_the_fix():
    with pytest.raises(KDLightError, match="classification head.*use VanillaKD"):
        TeacherDisagreementKD.compute_loss(module(), torch.randn(2, 1), torch.randn(2, 1), {"labels": torch.ones(2)})
