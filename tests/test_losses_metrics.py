import math

import pytest
import torch
import torch.nn.functional as F

from kdlight.losses import KLDivergence, LogitMSE, SoftCrossEntropy, distillation_loss, label_loss
from kdlight.metrics import build_metrics, headline


def test_kl_is_zero_for_identical_logits_and_matches_torch():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    assert KLDivergence(2.0)(t, t).item() == pytest.approx(0.0, abs=1e-6)
    expected = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="batchmean") * 4
    assert KLDivergence(2.0)(s, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_per_example_and_soft_ce_differ_by_teacher_entropy():
    torch.manual_seed(1)
    s, t = torch.randn(4, 2), torch.randn(4, 2)
    per = KLDivergence(1.0, reduction="none")(s, t)
    assert per.shape == (4,) and (per >= 0).all()
    p = F.softmax(t, -1)
    entropy = -(p * p.log()).sum(-1)
    assert torch.allclose(SoftCrossEntropy(1.0, reduction="none")(s, t), per + entropy, atol=1e-5)


def test_regression_heads_use_mse():
    assert isinstance(distillation_loss(1, 4.0), LogitMSE)
    s, y = torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])
    assert label_loss(s, y).item() == pytest.approx((1 + 4) / 2)


def test_bad_temperature_is_rejected():
    with pytest.raises(ValueError, match="temperature"):
        KLDivergence(0.0)


def test_glue_metrics_match_hand_computation():
    preds, labels = torch.tensor([1, 1, 0, 0, 1, 0]), torch.tensor([1, 0, 0, 1, 1, 0])
    metrics = build_metrics("f1", 2)
    values = metrics(preds, labels)
    tp, fp, fn = 2, 1, 1
    assert values["f1"].item() == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert values["accuracy"].item() == pytest.approx(4 / 6)
    mcc = build_metrics("matthews", 2)(preds, labels)["matthews"].item()
    tn = 2
    assert mcc == pytest.approx((tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    reg = build_metrics("pearson_spearman", 1)(torch.tensor([1.0, 2.0, 3.5]), torch.tensor([1.0, 2.0, 3.0]))
    assert reg["spearman"].item() == pytest.approx(1.0, abs=1e-5) and 0.98 < reg["pearson"].item() < 1.0
    assert [headline(m) for m in ("accuracy", "matthews", "f1", "pearson_spearman")] == [
        "accuracy",
        "matthews",
        "f1",
        "pearson",
    ]


def test_metric_errors_name_the_fix():
    with pytest.raises(ValueError, match="metric must be one of accuracy"):
        build_metrics("bleu", 2)
    with pytest.raises(ValueError, match="regression"):
        build_metrics("pearson_spearman", 2)
