"""Why ALM-KD's default table put *less* teacher weight on the flipped tweets: the cause, measured.

    python -m benchmarks.noisy.inversion          # writes benchmarks/results/alm_inversion.{md,json,png}

The default table moves each example's weight along its meta-gradient; for the last-layer look-ahead that is, up
to a positive factor, the *teacher preference* ``t_i = grad_s . (grad KD_i - grad CE_i)`` (``grad_s``: the clean
split's CE gradient at the classification head). This computes ``t_i`` in closed form for every training example
at the study's starting student and after one epoch of KD, splits it into parts (bias, weight, centred input,
within-class) and scores each as a detector of flipped labels (ROC-AUC; < 0.5: inverted). The finding: docs/alm.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.nn.functional as F
from lightning import seed_everything
from torch.utils.data import DataLoader

from benchmarks.harness import quiet_trainer as trainer
from benchmarks.noisy.multiclass import datamodule, teacher_dir, train_teacher
from benchmarks.study import RESULTS, markdown_table
from kdlight.assets import cache_dir
from kdlight.components.meta import MetaLearner
from kdlight.data.base import Collator
from kdlight.lambda_monitor import flipped_label_auc
from kdlight.models import TruncatedTeacher
from kdlight.models.hf import load_classifier
from kdlight.modules import VanillaKD
from kdlight.modules.task import model_inputs

NAME = "alm_inversion"


def study_config() -> argparse.Namespace:
    """The noisy_multiclass study's task and sizes (its teachers are reused from the cache)."""
    sizes = dict(task="tweets", train_examples=1600, max_length=64, teacher_epochs=2, meta_batch=128, lr=2e-4)
    return argparse.Namespace(**sizes, work=cache_dir() / "alm_inversion")


@torch.no_grad()
def head_view(student, teacher, dm, split: str) -> dict[str, torch.Tensor]:
    """The split seen at the student's classification head: its input, the student's and teacher's logits."""
    learner = MetaLearner()
    student.eval()
    dm._loader(split, False, 128)  # tokenises the split if needed
    loader = DataLoader(dm.splits[split], batch_size=128, collate_fn=Collator(dm.tokenizer.pad_token_id or 0))
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        inputs = model_inputs(batch)
        logits, h = learner.student_forward(student, inputs)
        found = {"h": h, "z": logits, "t": teacher(**inputs).logits, "labels": batch["labels"]}
        for key in ("is_flipped", "clean_labels", "idx"):
            if key in batch:
                found[key] = batch[key]
        for key, value in found.items():
            parts.setdefault(key, []).append(value.float() if value.is_floating_point() else value)
    return {key: torch.cat(value) for key, value in parts.items()}


def teacher_preference(train: dict, clean: dict, temperature: float = 4.0, feature_shift=None, clean_weight=None):
    """Closed-form last-layer ``t_i = grad_s . (grad KD_i - grad CE_i)`` and its parts.

    ``grad_s`` = mean over the clean split of ``[r_v ; r_v h_v^T]``, ``r_v = softmax(z_v) - onehot(y_v)``;
    ``grad CE_i = [e_i ; e_i h_i^T]`` with ``e_i = softmax(z_i) - onehot(noisy y_i)``; ``grad KD_i`` the same
    with ``T (softmax(z_i / T) - softmax(t_i / T))`` (the gradient of ``T^2 KL``). Also returned: the label and
    teacher terms on their own (``-grad_s . grad CE_i``, ``grad_s . grad KD_i``), ``e_i`` and ``r_v``.
    """
    k, h_train, h_clean = train["z"].shape[-1], train["h"], clean["h"]
    if feature_shift is not None:
        h_train, h_clean = h_train - feature_shift, h_clean - feature_shift
    r = F.softmax(clean["z"], -1) - F.one_hot(clean["labels"].long(), k)
    if clean_weight is not None:  # the expected error 1 - p(label): its logit gradient is p(label) x the CE residual
        r = r * clean_weight
    grad_bias = r.mean(0)  # (K,)
    grad_weight = (r[:, :, None] * h_clean[:, None, :]).mean(0)  # (K, D)
    e_ce = F.softmax(train["z"], -1) - F.one_hot(train["labels"].long(), k)
    e_kd = temperature * (F.softmax(train["z"] / temperature, -1) - F.softmax(train["t"] / temperature, -1))
    diff = e_kd - e_ce  # (N, K): the KD step's minus the label step's logit gradient
    bias_part = diff @ grad_bias
    weight_part = ((diff @ grad_weight) * h_train).sum(-1)

    def along_clean_gradient(e: torch.Tensor) -> torch.Tensor:
        return e @ grad_bias + ((e @ grad_weight) * h_train).sum(-1)

    parts = {"label": -along_clean_gradient(e_ce), "teacher": along_clean_gradient(e_kd), "e_ce": e_ce, "r": r}
    return {"bias": bias_part, "weight": weight_part, "total": bias_part + weight_part, **parts}


def within_class(score: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``score`` minus its mean over the examples with the same (noisy) label."""
    out = score.clone()
    for c in labels.unique():
        sel = labels == c
        out[sel] = score[sel] - score[sel].mean()
    return out


def analyse(student, teacher, dm) -> dict:
    """The AUCs of ``t_i`` and its parts, the head input's shared component, class effects."""
    train, clean = head_view(student, teacher, dm, "train"), head_view(student, teacher, dm, "clean_validation")
    flipped = train["is_flipped"].bool()
    labels = train["labels"]
    pref = teacher_preference(train, clean)
    mean_h = torch.cat([train["h"], clean["h"]]).mean(0)
    centred = teacher_preference(train, clean, feature_shift=mean_h)
    unit = F.normalize(train["h"], dim=-1)
    right = clean["z"].argmax(-1) == clean["labels"]

    def only(mask: torch.Tensor) -> dict:
        return {key: value[mask] for key, value in clean.items()}

    p_label = F.softmax(train["z"], -1).gather(1, labels.long().view(-1, 1)).squeeze(1)
    p_true = F.softmax(clean["z"], -1).gather(1, clean["labels"].long().view(-1, 1))
    p_teacher = F.softmax(train["t"], -1).gather(1, labels.long().view(-1, 1)).squeeze(1)
    expected_error = teacher_preference(train, clean, clean_weight=p_true)

    def from_clean(mask: torch.Tensor) -> torch.Tensor | None:
        return teacher_preference(train, only(mask))["total"] if mask.any() else None

    scores = {  # name -> the score whose flipped-label AUC is reported (None: no examples to compute it from)
        "t_i (what the default table follows)": pref["total"],
        "bias part": pref["bias"],
        "weight part": pref["weight"],
        "t_i, head input centred": centred["total"],
        "t_i centred within each noisy-label class": within_class(pref["total"], labels),
        "label part: -grad_s . grad CE_i": pref["label"],
        "teacher part: grad_s . grad KD_i": pref["teacher"],
        f"t_i with grad_s from the {int(right.sum())} correctly classified clean examples only": from_clean(right),
        f"t_i with grad_s from the {int((~right).sum())} misclassified clean examples only": from_clean(~right),
        "t_i with the expected-error clean score (residual x p(label))": expected_error["total"],
        "size of the label gradient |softmax - onehot(noisy)|": pref["e_ce"].norm(dim=-1),
        "student's probability of the noisy label (lower = flipped)": -p_label,
        "teacher's probability of the noisy label (lower = flipped)": -p_teacher,
    }
    shared = (pref["total"] - centred["total"]).abs().mean() / pref["total"].abs().mean()
    out = {
        "auc": {name: None if v is None else flipped_label_auc(v, flipped) for name, v in scores.items()},
        "share_of_t_from_bias_and_shared_input": float(shared),
        "mean_cosine_between_head_inputs": float((unit.mean(0) ** 2).sum()),  # = mean pairwise cosine (with self)
        "head_input_norm": float(train["h"].norm(dim=-1).mean()),
        "clean_residual_mean (softmax - onehot, by class)": [round(float(v), 4) for v in pref["r"].mean(0)],
        "student_clean_accuracy": float((clean["z"].argmax(-1) == clean["labels"]).float().mean()),
        "teacher_accuracy_on_flipped": float((train["t"].argmax(-1) == train["clean_labels"])[flipped].float().mean()),
        "teacher_accuracy_on_clean": float((train["t"].argmax(-1) == train["clean_labels"])[~flipped].float().mean()),
        "by_noisy_label": {},
    }
    for c in labels.unique().tolist():
        sel = labels == c
        out["by_noisy_label"][dm.label_names[c]] = {
            "examples": int(sel.sum()),
            "flipped_share": float(flipped[sel].float().mean()),
            "mean_t_i": float(pref["total"][sel].mean()),
            "auc_within": flipped_label_auc(pref["total"][sel], flipped[sel]),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=["clean"])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg, rate = study_config(), 0.4
    out_path = args.results / f"{NAME}.json"
    result = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for kind in args.teachers:
        path = str(teacher_dir(cfg, kind, rate))
        if not (Path(path) / "config.json").is_file():
            train_teacher(cfg, kind, rate)
        dm = datamodule(cfg, rate)
        dm.setup("fit")
        teacher = load_classifier(path, dm.num_labels, dm.label_names, require_head=True, role="teacher").eval()
        student = TruncatedTeacher(2).build(teacher, dm.num_labels, dm.label_names)
        entry = result.setdefault(kind, {})
        entry["at_start"] = analyse(student, teacher, dm)
        # the student after one epoch of KD (lambda 0.9, the study's optimiser), trained by the first run of this
        export = cfg.work / f"kd_{kind}" / "export"
        seed_everything(0, verbose=False)
        kd = dict(alpha=0.9, temperature=4.0, cache_teacher_logits=True, learning_rate=cfg.lr, warmup_ratio=0.1)
        kd = VanillaKD(teacher=path, student=TruncatedTeacher(2), task=dm.task, export_dir=str(export), **kd)
        kd.student.get_input_embeddings().requires_grad_(False)
        if (export / "config.json").is_file():
            trained = load_classifier(str(export), dm.num_labels, dm.label_names, require_head=True)
        else:
            trainer(cfg.work / f"kd_{kind}", 1).fit(kd, datamodule=dm)
            trained = kd.student
        entry["after_one_kd_epoch"] = analyse(trained, teacher, dm)
        for stage in ("at_start", "after_one_kd_epoch"):
            print(kind, stage, json.dumps(entry[stage]["auc"], indent=1), flush=True)
        args.results.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1))
    write_report(result, args.results)


def write_report(result: dict, results: Path) -> None:
    lines = [
        "# Why the default ALM table inverted on tweets (40 % uniform noise)",
        "",
        "Written by `python -m benchmarks.noisy.inversion` (see its docstring for the maths). The symptom: in the "
        "earlier `noisy_multiclass` study (2-block student, AdamW 2e-4, 2 epochs, clean-trained teacher) the default "
        "table ended with a mean teacher weight of 0.718 on flipped vs 0.871 on clean training examples. Below, "
        "`t_i` is the direction in which the meta step moves example i's teacher weight (positive: up), computed in "
        "closed form over the 1,440 training tweets at two students of that study's setting, and scored as a detector "
        "of the flipped labels (ROC-AUC; 0.5 = chance, below 0.5 = inverted).",
        "",
    ]
    for kind, entry in result.items():
        for stage in ("at_start", "after_one_kd_epoch"):
            if stage not in entry:
                continue
            a = entry[stage]
            aucs = [{"score": k, "auc": f"{v:.3f}"} for k, v in a["auc"].items() if v is not None]
            lines += [
                f"## {kind} teacher, student {stage.replace('_', ' ')}",
                "",
                markdown_table(aucs, "score; auc=flipped-label AUC").rstrip("\n"),
                "",
                f"- share of |t_i| that the bias and the head input's shared component carry: "
                f"{a['share_of_t_from_bias_and_shared_input']:.2f}; mean cosine between head inputs "
                f"{a['mean_cosine_between_head_inputs']:.3f}",
                f"- student clean-split accuracy {a['student_clean_accuracy']:.3f}; clean residual by class "
                f"{a['clean_residual_mean (softmax - onehot, by class)']}",
                f"- teacher accuracy on flipped examples {a['teacher_accuracy_on_flipped']:.3f}, on clean "
                f"{a['teacher_accuracy_on_clean']:.3f}",
                "",
            ]
            by_label = [
                {"label": label, "n": b["examples"], "share": f"{b['flipped_share']:.3f}", "t": f"{b['mean_t_i']:+.2e}"}
                | {"auc": None if b["auc_within"] is None else f"{b['auc_within']:.3f}"}
                for label, b in a["by_noisy_label"].items()
            ]
            columns = "label=noisy label; n=examples; share=flipped share; t=mean t_i; auc=AUC within the class"
            lines += [markdown_table(by_label, columns).rstrip("\n"), ""]
    lines += reading(result)
    (results / f"{NAME}.md").write_text("\n".join(lines) + "\n")


def reading(result: dict) -> list[str]:
    """The finding, in words, from the numbers above."""
    out = ["## Reading (generated from the numbers above)", ""]
    for kind, entry in result.items():
        if "at_start" not in entry or "after_one_kd_epoch" not in entry:
            continue
        start, later = entry["at_start"]["auc"], entry["after_one_kd_epoch"]["auc"]
        key = "t_i (what the default table follows)"
        correct = next((v for k, v in later.items() if "correctly classified" in k), None)
        wrong = next((v for k, v in later.items() if "misclassified" in k), None)
        n_wrong = next((k.split("the ")[1].split(" ")[0] for k in later if "misclassified" in k), "?")
        scored = later.get("t_i with the expected-error clean score (residual x p(label))")
        out += [
            f"- {kind} teacher: the direction the default table moves the weights detects flipped labels with AUC "
            f"{start[key]:.3f} at the student the study starts from, and {later[key]:.3f} after one epoch of KD "
            f"({'inverted' if later[key] < 0.5 else 'not inverted'}).",
            f"- The label part carries it (AUC {later['label part: -grad_s . grad CE_i']:.3f}); the teacher part "
            f"cannot tell flipped from clean (AUC {later['teacher part: grad_s . grad KD_i']:.3f}, it does not "
            "see the label). Neither the bias, the head input's shared component nor a class effect is the cause: "
            f"bias part {later['bias part']:.3f}, weight part {later['weight part']:.3f}, centred input "
            f"{later['t_i, head input centred']:.3f}, "
            f"within-class {later['t_i centred within each noisy-label class']:.3f}.",
            "- The cause is which clean examples the clean gradient is made of: from the correctly classified "
            f"clean examples alone the direction is right (AUC {correct:.3f}), from the {n_wrong} misclassified "
            f"ones alone it is inverted (AUC {wrong:.3f}), and the CE residuals of the misclassified ones are the "
            "large ones, so they "
            "win. A CE step on a flipped example pushes the student away from its own prediction, which is mostly "
            "right; that is the direction that lowers the loss on the clean examples the student still gets wrong, so "
            "to first order the one-step look-ahead rewards the wrong label. Not a sign or indexing defect: the "
            "synthetic test (`tests/test_alm_mechanism.py`) passes for every mode, and the same maths is the authors'.",
            f"- Remedy: score the look-ahead with the expected error 1 - p(label) (`clean_score: expected_error`), "
            f"whose gradient is the CE residual times p(label): AUC {scored:.3f} at the same student "
            f"(start: {start.get('t_i with the expected-error clean score (residual x p(label))', float('nan')):.3f}).",
            "",
        ]
    return out


if __name__ == "__main__":
    main()
