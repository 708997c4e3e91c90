"""Per-step cost of the layer-wise losses against plain KD (a quick measurement, not the compact study).

Teacher: all-MiniLM-L6-v2 with a classification head (weights as packaged; the head's values do not
change the cost). Student: 2 blocks cut from it (so attention maps are comparable). Batch 32 of
Rotten Tomatoes snippets padded to 64 tokens, one torch thread, one training step = teacher forward,
student forward and backward, AdamW step. Variants are interleaved over rounds; medians reported.

    python -m benchmarks.compact.step_cost [--rounds 5] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdlight.data.base import load_tokenizer
from kdlight.losses.layerwise import AttentionMSE, HiddenMSE, PatientCLS, SelfAttentionRelations
from kdlight.models import TruncatedTeacher
from kdlight.models.hf import load_classifier
from kdlight.models.layers import Needs, forward_internals
from kdlight.modules.layerwise import bind_losses

TEACHER = "packaged/all-MiniLM-L6-v2"


def variants():
    return {
        "logit KD only": [],
        "+ HiddenMSE (uniform)": [HiddenMSE()],
        "+ AttentionMSE (uniform, eager attention)": [AttentionMSE()],
        "+ SelfAttentionRelations (16 heads)": [SelfAttentionRelations(num_relation_heads=16)],
        "+ PatientCLS (uniform)": [PatientCLS()],
    }


def build(losses):
    torch.manual_seed(0)
    teacher = load_classifier(TEACHER, 2).eval().requires_grad_(False)
    student = TruncatedTeacher(2).build(teacher, 2).train()
    modules, s_needs, t_needs = (
        bind_losses(losses, student, teacher) if losses else (torch.nn.ModuleList(), Needs(), Needs())
    )
    params = list(student.parameters()) + list(modules.parameters())
    return teacher, student, modules, s_needs, t_needs, torch.optim.AdamW(params, lr=1e-4)


def step(setup, batch):
    teacher, student, modules, s_needs, t_needs, optimizer = setup
    with torch.no_grad():
        t_out = forward_internals(teacher, batch, t_needs)
    s_out = forward_internals(student, batch, s_needs)
    loss = torch.nn.functional.kl_div(
        s_out.logits.log_softmax(-1), t_out.logits.log_softmax(-1), log_target=True, reduction="batchmean"
    )
    for module in modules:
        loss = loss + module(s_out, t_out, batch["attention_mask"])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(TEACHER)
    texts = [
        f"a film that is {'good' if i % 2 else 'dull'} and, in places, " + "very " * (i % 40) + "long"
        for i in range(32)
    ]
    batch = dict(tokenizer(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt"))
    setups = {name: build(losses) for name, losses in variants().items()}
    times: dict[str, list[float]] = {name: [] for name in setups}
    for setup in setups.values():  # warm-up
        step(setup, batch)
    for _ in range(args.rounds):
        for name, setup in setups.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(setup, batch)
            times[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["logit KD only"])
    print("| variant | s / step (median) | vs logit KD |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.median(values) / base:.2f}x |")


if __name__ == "__main__":
    main()
