"""Per-step cost of the layer-wise losses against plain KD (a quick measurement, not the compact study).

    python -m benchmarks.compact.step_cost [--rounds 5] [--steps 4]

MiniLM-L6 teacher, 2-block student cut from it, batch 32 x 64 tokens, one torch thread, one step = teacher
forward, student forward and backward, AdamW; variants take turns over rounds, medians reported. Writes
benchmarks/results/compact_step_cost.{md,json,png}; kept in compact_step_cost_runs.json (delete it to re-measure).
"""

from __future__ import annotations

import time

import torch

from benchmarks.harness import interleaved, step_cost_main
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
    none = (torch.nn.ModuleList(), Needs(), Needs())
    modules, s_needs, t_needs = bind_losses(losses, student, teacher) if losses else none
    params = list(student.parameters()) + list(modules.parameters())
    return teacher, student, modules, s_needs, t_needs, torch.optim.AdamW(params, lr=1e-4)


def step(setup, batch):
    teacher, student, modules, s_needs, t_needs, optimizer = setup
    with torch.no_grad():
        t_out = forward_internals(teacher, batch, t_needs)
    s_out = forward_internals(student, batch, s_needs)
    s_log, t_log = s_out.logits.log_softmax(-1), t_out.logits.log_softmax(-1)
    loss = torch.nn.functional.kl_div(s_log, t_log, log_target=True, reduction="batchmean")
    loss = loss + sum(module(s_out, t_out, batch["attention_mask"]) for module in modules)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def measure(rounds: int, steps: int) -> dict[str, list[float]]:
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(TEACHER)
    texts = [
        f"a film that is {'good' if i % 2 else 'dull'} and, in places, " + "very " * (i % 40) + "long"
        for i in range(32)
    ]
    batch = dict(tokenizer(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt"))
    setups = {name: build(losses) for name, losses in variants().items()}
    for setup in setups.values():  # warm-up
        step(setup, batch)

    def timed(setup) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            step(setup, batch)
        return (time.perf_counter() - start) / steps

    return interleaved({name: (lambda s=setup: timed(s)) for name, setup in setups.items()}, rounds)


def main(argv: list[str] | None = None) -> list[dict]:
    spec = dict(
        names=list(variants()),
        table=("variant", "vs_logit_kd", "variant; step_seconds=s / step (median); vs_logit_kd=vs logit KD"),
        plot=("vs_logit_kd", "step time / logit KD's (median)"),
        title="Layer-wise losses: step cost against logit KD",
        intro="{rounds} rounds x {steps} steps, variants taking turns; MiniLM-L6 teacher, 2-block student cut from it, "
        "batch 32 x 64 tokens, one torch thread, CPU. Compare the rows, not absolute times across machines.",
    )
    return step_cost_main(argv, __doc__, "compact_step_cost", measure, {"rounds": 5, "steps": 4}, **spec)


if __name__ == "__main__":
    main()
