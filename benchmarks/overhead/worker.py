"""One process of the overhead benchmark: one module at one model size, kdlight and its hand-written
twin alternating round after round (the order flips every round), each run on the same batches from
the same starting weights. Writes a JSON list of runs (step end times) and, with ``--profile``, one
cProfile of each system over the timed steps.

Not meant to be run by hand: ``python -m benchmarks.overhead.run`` starts it.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import random
import time
from pathlib import Path

SEED = 0
LR, WARMUP_RATIO, TEMPERATURE, ALPHA = 1e-4, 0.1, 2.0, 0.5

# Model sizes: tiny random BERTs whose VanillaKD step takes about 10, 25 and 100 ms on one thread
# of the 2-core CI machine (measured by the hand-written loop; the achieved figure is reported).
SIZES = {
    "10ms": {"hidden": 48, "teacher_layers": 2, "student_layers": 1, "batch": 8, "length": 32},
    "25ms": {"hidden": 48, "teacher_layers": 2, "student_layers": 1, "batch": 16, "length": 48},
    "100ms": {"hidden": 128, "teacher_layers": 2, "student_layers": 1, "batch": 32, "length": 64},
}
# GPU sizes (benchmarks/gpu/run.sh): all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads, vocabulary
# 30,522) with random weights (the step time depends on the shape only), a 2-layer student, bf16-mixed
SIZES.update(
    {
        f"gpu-b{batch}": {
            "hidden": 384,
            "teacher_layers": 6,
            "student_layers": 2,
            "batch": batch,
            "length": 64,
            "heads": 12,
            "vocab_words": 30517,
        }
        for batch in (64, 256)
    }
)
VOCAB_WORDS = 2000
DEVICE = "cpu"  # --device
ZS_CYCLE = (2, 6)  # generator steps, student steps: both kinds fall in every timed window


# ------------------------------------------------------------------------------------------ assets
def make_assets(root: Path, size: str) -> dict[str, Path]:
    """A word-level tokenizer, a random teacher, an MLM generator and text files, made once per size."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertTokenizerFast

    spec = SIZES[size]
    out = root / size
    paths = {
        "root": out,
        "tokenizer": out / "tokenizer",
        "teacher": out / "teacher",
        "generator": out / "generator",
        "data": out / "data",
    }
    if (out / "done").is_file():
        return paths
    words = [f"w{i}" for i in range(spec.get("vocab_words", VOCAB_WORDS))]
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate([*special, *words])})
    tokenizer.save_pretrained(paths["tokenizer"])
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden"],
        num_hidden_layers=spec["teacher_layers"],
        num_attention_heads=spec.get("heads", 4 if spec["hidden"] % 4 == 0 else 2),
        intermediate_size=4 * spec["hidden"],
        max_position_embeddings=128,
        num_labels=2,
    )
    torch.manual_seed(SEED)
    for key, model in (("teacher", BertForSequenceClassification(config)), ("generator", BertForMaskedLM(config))):
        model.save_pretrained(paths[key])
        tokenizer.save_pretrained(paths[key])
    rng = random.Random(SEED)
    paths["data"].mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 2048), ("validation", 64), ("test", 64)):
        rows = ["text,label"] + [
            " ".join(rng.choice(words) for _ in range(spec["length"])) + f",{'pos' if i % 2 else 'neg'}"
            for i in range(n)
        ]
        (paths["data"] / f"{split}.csv").write_text("\n".join(rows) + "\n")
    (paths["data"] / "corpus.txt").write_text(
        "\n".join(" ".join(rng.choice(words) for _ in range(spec["length"])) for _ in range(2048)) + "\n"
    )
    (out / "done").write_text("")
    return paths


def task_data(paths, spec, **kwargs):
    from kdlight.data import TextClassificationDataModule

    d = paths["data"]
    return TextClassificationDataModule(
        train_file=str(d / "train.csv"),
        val_file=str(d / "validation.csv"),
        test_file=str(d / "test.csv"),
        label_names=["neg", "pos"],
        tokenizer=str(paths["tokenizer"]),
        max_length=spec["length"],
        batch_size=spec["batch"],
        **kwargs,
    )


def datamodule(module: str, paths, spec):
    from kdlight.data import NoisyLabelDataModule, OutOfDomainCorpus, TextClassificationDataModule, ZeroShotDataModule

    if module == "vanilla":
        dm = task_data(paths, spec)
    elif module == "zeroshot":
        d = paths["data"]
        task = TextClassificationDataModule(
            val_file=str(d / "validation.csv"), test_file=str(d / "test.csv"), label_names=["neg", "pos"]
        )
        corpus = OutOfDomainCorpus(
            source=str(d / "corpus.txt"), cache_dir=str(paths["root"] / "corpus_cache"), min_words=1
        )
        dm = ZeroShotDataModule(
            task=task,
            corpus=corpus,
            tokenizer=str(paths["tokenizer"]),
            max_length=spec["length"],
            batch_size=spec["batch"],
        )
    else:
        d = paths["data"]
        base = TextClassificationDataModule(
            train_file=str(d / "train.csv"),
            val_file=str(d / "validation.csv"),
            test_file=str(d / "test.csv"),
            label_names=["neg", "pos"],
        )
        dm = NoisyLabelDataModule(
            base,
            noise_rate=0.4,
            clean_val_size=0.1,
            tokenizer=str(paths["tokenizer"]),
            max_length=spec["length"],
            batch_size=spec["batch"],
        )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def kdlight_module(module: str, paths, dm, spec):
    from kdlight.models.students import TruncatedTeacher
    from kdlight.modules import AdaptiveLossMixingKD, VanillaKD, ZeroShotAdversarialKD

    common = {
        "teacher": str(paths["teacher"]),
        "student": TruncatedTeacher(spec["student_layers"]),
        "task": dm.task,
        "learning_rate": LR,
        "weight_decay": 0.0,
        "warmup_ratio": WARMUP_RATIO,
    }
    if module == "vanilla":
        return VanillaKD(alpha=ALPHA, temperature=TEMPERATURE, **common)
    if module == "zeroshot":
        return ZeroShotAdversarialKD(
            generator=str(paths["generator"]),
            generator_steps=ZS_CYCLE[0],
            student_steps=ZS_CYCLE[1],
            generator_learning_rate=1e-5,
            temperature=TEMPERATURE,
            **common,
        )
    return AdaptiveLossMixingKD(
        mixer="table", lookahead="last_layer", meta_every=1, init_lambda=0.9, meta_learning_rate=1.0, **common
    )


# ------------------------------------------------------------------------------------------ timing
class Clock:
    """Step end times; profiles steps [first, last) when asked. On a GPU it waits for the device only at
    the ends of the timed window (``sync_at``, step numbers counted from 1), so that the host can run
    ahead inside it as it does in real training."""

    def __init__(self, profile_window: tuple[int, int] | None = None, sync_at: tuple[int, ...] = ()) -> None:
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []  # process CPU time: what a step costs, whatever else runs on the machine
        self.window = profile_window
        self.sync_at = set(sync_at)
        self.profiler = cProfile.Profile(time.process_time) if profile_window else None  # CPU time, as the clock

    def tick(self) -> None:
        if DEVICE != "cpu" and len(self.stamps) + 1 in self.sync_at:
            import torch

            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())
        n = len(self.stamps)
        if self.profiler is not None:
            if n == self.window[0]:
                self.profiler.enable()
            elif n == self.window[1]:
                self.profiler.disable()


def run_kdlight(module: str, paths, spec, steps: int, clock: Clock, work: Path) -> None:
    """The user's way: a Trainer, the module and the datamodule. CSVLogger at Lightning's default
    ``log_every_n_steps`` (50); progress bar, checkpointing, model summary and validation off for both
    systems (they cost the same per epoch, not per step, or nothing in a script)."""
    from lightning import Callback, Trainer, seed_everything
    from lightning.pytorch.loggers import CSVLogger

    class Ticks(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.tick()

    seed_everything(SEED, verbose=False)
    dm = datamodule(module, paths, spec)
    model = kdlight_module(module, paths, dm, spec)
    gpu = {"accelerator": "cuda", "precision": "bf16-mixed"} if DEVICE != "cpu" else {"accelerator": "cpu"}
    trainer = Trainer(
        **gpu,
        devices=1,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=CSVLogger(str(work), name="overhead"),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[Ticks()],
        default_root_dir=str(work),
    )
    trainer.fit(model, datamodule=dm)


def lr_lambda(total: int):
    warmup = int(total * WARMUP_RATIO)

    def factor(step: int) -> float:
        return (step + 1) / (warmup + 1) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))

    return factor


def adamw(params, lr=LR):
    import torch

    fused = {"fused": True} if DEVICE != "cpu" else {}  # as kdlight's default on CUDA
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.0},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=lr,
        **fused,
    )


def on_device(batches):
    """Batches moved as Lightning moves them (non-blocking on CUDA)."""
    for batch in batches:
        yield {k: v.to(DEVICE, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}


def run_handwritten(module: str, paths, spec, steps: int, clock: Clock, work: Path) -> None:
    """bf16-mixed on a GPU as Lightning does it: autocast around the whole step (a no-op on CPU)."""
    import torch

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=DEVICE != "cpu"):
        handwritten_loop(module, paths, spec, steps, clock, work)


def handwritten_loop(module: str, paths, spec, steps: int, clock: Clock, work: Path) -> None:
    """The same maths on the same batches in plain PyTorch: kdlight's loss functions and model
    builders (plain torch), no Lightning, no logging, no per-example seeded noise (one global RNG,
    as a hand-written single-process loop would draw)."""
    import torch
    import torch.nn.functional as F
    from lightning import seed_everything

    from kdlight.losses import KLDivergence, distillation_loss
    from kdlight.models.hf import load_classifier
    from kdlight.models.students import TruncatedTeacher

    seed_everything(SEED, verbose=False)
    dm = datamodule(module, paths, spec)
    teacher = load_classifier(str(paths["teacher"]), 2, ["neg", "pos"], require_head=True, role="teacher")
    teacher = teacher.eval().requires_grad_(False)
    student = TruncatedTeacher(spec["student_layers"]).build(teacher, 2, ["neg", "pos"]).train()
    teacher, student = teacher.to(DEVICE), student.to(DEVICE)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = adamw(params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps))

    def inputs_of(b):
        return {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in b}

    loader = on_device(dm.train_dataloader())

    if module == "vanilla":
        kd_loss = distillation_loss(2, TEMPERATURE)
        for step, batch in enumerate(loader):
            if step == steps:
                break
            with torch.no_grad():
                t = teacher(**inputs_of(batch)).logits
            s = student(**inputs_of(batch)).logits
            loss = ALPHA * kd_loss(s, t) + (1 - ALPHA) * F.cross_entropy(s, batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            clock.tick()
        return

    if module == "zeroshot":
        from kdlight.components.rewriting import (
            banned_token_ids,
            choose_mask,
            embed_with_replacements,
            masked_logits,
            sample_replacements,
        )
        from kdlight.data.base import load_tokenizer
        from kdlight.models.hf import load_generator

        kd_loss = distillation_loss(2, TEMPERATURE)
        generator = load_generator(str(paths["generator"])).train().to(DEVICE)
        gen_params = [p for p in generator.parameters() if p.requires_grad]
        gen_opt = torch.optim.AdamW(gen_params, lr=1e-5, **({"fused": True} if DEVICE != "cpu" else {}))
        tokenizer = load_tokenizer(str(paths["tokenizer"]))
        special = torch.tensor(tokenizer.all_special_ids, device=DEVICE)
        banned = torch.tensor(banned_token_ids(tokenizer), device=DEVICE)
        n_gen, n_student = ZS_CYCLE
        student_steps = (steps // (n_gen + n_student)) * n_student + max(0, steps % (n_gen + n_student) - n_gen)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(max(1, student_steps)))

        def one_hot(batch, mask):
            masked = batch["input_ids"].masked_fill(mask, tokenizer.mask_token_id)
            logits = masked_logits(generator, {**inputs_of(batch), "input_ids": masked}, mask)
            return sample_replacements(logits, banned)

        for step, batch in enumerate(loader):
            if step == steps:
                break
            mask = choose_mask(batch["input_ids"], batch["attention_mask"], special, 0.3)
            rest = {k: v for k, v in inputs_of(batch).items() if k != "input_ids"}
            if step % (n_gen + n_student) < n_gen:
                rows = one_hot(batch, mask)
                ids = batch["input_ids"]
                t = teacher(inputs_embeds=embed_with_replacements(teacher, ids, mask, rows), **rest).logits
                s = student(inputs_embeds=embed_with_replacements(student, ids, mask, rows), **rest).logits
                divergence = kd_loss(s, t)
                if torch.isfinite(divergence):
                    grads = torch.autograd.grad(-divergence, gen_params, allow_unused=True)
                    for p, g in zip(gen_params, grads, strict=True):
                        p.grad = torch.zeros_like(p) if g is None else g
                    torch.nn.utils.clip_grad_norm_(gen_params, 1.0)
                    gen_opt.step()
                    gen_opt.zero_grad()
            else:
                loss = kd_loss(student(**inputs_of(batch)).logits, teacher_logits(teacher, inputs_of(batch)))
                with torch.no_grad():
                    rewritten = batch["input_ids"].masked_scatter(mask, one_hot(batch, mask).argmax(-1))
                    t = teacher(**{**inputs_of(batch), "input_ids": rewritten}).logits
                loss = loss + kd_loss(student(**{**inputs_of(batch), "input_ids": rewritten}).logits, t)
                if torch.isfinite(loss):
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
            clock.tick()
        return

    # ALM-KD: table mixer, last-layer look-ahead scored on a clean batch every step
    from kdlight.components.meta import (
        LambdaTable,
        Lookahead,
        last_linear_name,
        lookahead_meta_gradients,
        mixed_loss,
    )

    kd_loss = KLDivergence(TEMPERATURE, reduction="none")
    table = LambdaTable(dm.max_train_idx + 1, 1, 0.9).to(DEVICE)
    meta_opt = torch.optim.SGD(table.parameters(), lr=1.0)
    head_name = last_linear_name(student, 2)
    head = student.get_submodule(head_name)
    clean_batches = on_device(dm.clean_val_batches())
    captured = {}

    def capture(m, inputs, out):
        if inputs:  # the look-ahead's functional calls pass the head's input by keyword
            captured["x"] = inputs[0]

    head.register_forward_hook(capture)
    for step, batch in enumerate(loader):
        if step == steps:
            break
        labels, idx = batch["labels"], batch["idx"]
        t = teacher_logits(teacher, inputs_of(batch))
        s = student(**inputs_of(batch)).logits
        train_x = captured["x"].detach()
        clean = next(clean_batches)
        with torch.no_grad():
            student(**inputs_of(clean))
        weights = table(idx)

        def inner_loss(logits, labels=labels, weights=weights, t=t):
            ce = F.cross_entropy(logits.float(), labels, reduction="none")
            return mixed_loss(weights, ce, [kd_loss(logits, t)])

        lr = optimizer.param_groups[0]["lr"]
        step = Lookahead(
            head, dict(head.named_parameters()), {"input": train_x}, {"input": captured["x"]}, clean["labels"], lr
        )
        _, grads = lookahead_meta_gradients(step, inner_loss, [table.logits])
        rows = grads[0][idx]
        grads[0] = grads[0] / rows.abs().mean().clamp_min(1e-12)
        meta_opt.zero_grad()
        table.logits.grad = grads[0].detach()
        meta_opt.step()
        ce = F.cross_entropy(s.float(), labels, reduction="none")
        with torch.no_grad():
            weights = table(idx)
        loss = mixed_loss(weights, ce, [kd_loss(s, t)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        clock.tick()


def teacher_logits(teacher, inputs):
    import torch

    with torch.no_grad():
        return teacher(**inputs).logits


SYSTEMS = {"kdlight": run_kdlight, "handwritten": run_handwritten}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--module", required=True, choices=["vanilla", "zeroshot", "alm"])
    parser.add_argument("--size", required=True, choices=sorted(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--assets", required=True)
    parser.add_argument("--profile", type=int, nargs=2, default=None, metavar=("FIRST", "LAST"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sync-at", type=int, nargs="*", default=[], help="step numbers at which a GPU run waits")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import tempfile

    import torch

    global DEVICE
    DEVICE = args.device
    if DEVICE == "cpu":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    paths = make_assets(Path(args.assets), args.size)
    runs = []
    with tempfile.TemporaryDirectory(prefix="kdlight_overhead_") as tmp:
        for r in range(args.rounds):
            order = ["handwritten", "kdlight"] if r % 2 == 0 else ["kdlight", "handwritten"]
            for system in order:
                clock = Clock(tuple(args.profile) if args.profile else None, tuple(args.sync_at))
                SYSTEMS[system](args.module, paths, SIZES[args.size], args.steps, clock, Path(tmp) / f"{system}_{r}")
                if clock.profiler is not None:
                    clock.profiler.dump_stats(str(Path(args.out).with_suffix(f".{system}.prof")))
                runs.append({"round": r, "system": system, "stamps": clock.stamps, "cpu_stamps": clock.cpu_stamps})
    Path(args.out).write_text(json.dumps({"module": args.module, "size": args.size, "runs": runs}))


if __name__ == "__main__":
    main()
