"""The zero-shot generator, trained vs untrained: held-out masked-token accuracy, perplexity and rewrites.

    python -m benchmarks.zeroshot.generator          # trains it first (configs/zeroshot/generator.yaml) if absent
    python -m benchmarks.zeroshot.generator --retrain

Scores the packaged MiniLM with a fresh MLM head and the recipe's trained export on the recipe's held-out split
with the same fixed BERT masking (top-1 on masked tokens, perplexity), then rewrites the held-out inputs as
zero-shot KD does (30 %, one Gumbel sample) and counts the new tokens that are common text (among the most
frequent tokens making up 90 % of the corpus's occurrences: nearly every id occurs *somewhere*).
Results: benchmarks/results/generator.{md,json,png}; the export stays in the kdlight cache (never committed).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from benchmarks.common import CONFIGS, run_cli
from benchmarks.harness import figure, logged_rows, quiet_trainer
from benchmarks.study import Study, markdown_table, study_parser
from kdlight.components import AdversarialGenerator
from kdlight.components.rewriting import known_token_share
from kdlight.data import MaskedLMCorpusDataModule
from kdlight.data.base import Collator, load_tokenizer
from kdlight.modules import MaskedLMPretraining

RECIPE = CONFIGS / "zeroshot" / "generator.yaml"
FRESH = "packaged/all-MiniLM-L6-v2"
EARLIER_NAME = "top block, 150 steps (the recipe before 2026-12-07)"
# the recipe before it trained every block: its overrides of today's recipe, and its own export and run folder
EARLIER = {
    "model.init_args.train_layers": 1,
    "model.init_args.learning_rate": 1e-4,
    "trainer.max_steps": 150,
    "trainer.val_check_interval": 50,
    "model.init_args.export_dir": "~/.cache/kdlight/generators/minilm-mlm-top-block-150",
    "trainer.default_root_dir": "runs/zeroshot/generator_top_block",
}
REWRITE_RATE = 0.3  # zero-shot KD's mask_rate (MATE-KD)
SHOWN = 8
COMMON_MASS = 0.9  # "known" tokens: the most frequent ones that cover 90 % of the corpus's token occurrences


def recipe() -> dict:
    return yaml.safe_load(RECIPE.read_text())


def export_dir(overrides: dict | None = None) -> Path:
    folder = (overrides or {}).get("model.init_args.export_dir", recipe()["model"]["init_args"]["export_dir"])
    return Path(os.path.expanduser(folder))


def train(retrain: bool, overrides: dict | None = None) -> dict:
    """Fit the recipe (as ``kdlight fit --config configs/zeroshot/generator.yaml`` with ``overrides``, e.g.
    :data:`EARLIER`) unless its export exists."""
    if (export_dir(overrides) / "config.json").is_file() and not retrain:
        return {"trained_now": False}
    start = time.perf_counter()
    extra = [f"--{key}={value}" for key, value in (overrides or {}).items()]
    args = ["--config", str(RECIPE), "--trainer.logger=CSVLogger", "--trainer.enable_progress_bar=false", *extra]
    runner = run_cli(args)
    runner.trainer.fit(runner.model, datamodule=runner.datamodule)
    return {"trained_now": True, "fit_seconds": time.perf_counter() - start}


def earlier_generator() -> str:
    """The earlier recipe's export (:data:`EARLIER`; fitted here first when absent)."""
    train(retrain=False, overrides=EARLIER)
    return str(export_dir(EARLIER))


def held_out_data():
    data = MaskedLMCorpusDataModule(**recipe()["data"]["init_args"], tokenizer=FRESH)
    data.setup()
    return data


def masked_lm_scores(source: str, data) -> dict:
    """Held-out top-1 accuracy, cross-entropy and perplexity on the recipe's fixed masking."""
    model_args = {k: v for k, v in recipe()["model"]["init_args"].items() if k in ("mask_rate", "mask_share")}
    module = MaskedLMPretraining(model=source, tokenizer=FRESH, **model_args)
    trainer = quiet_trainer(Path.cwd(), limit_val_batches=1.0)  # validation on, nothing written
    metrics = trainer.validate(module, dataloaders=data.val_dataloader(), verbose=False)[0]
    return {key: float(metrics[f"val/{key}"]) for key in ("accuracy", "perplexity", "loss")}


def rewrites(source: str, data) -> tuple[dict, list]:
    """Zero-shot KD's rewrites of the held-out inputs: known-token and changed shares, the first few decoded."""
    tokenizer = load_tokenizer(FRESH)
    generator = AdversarialGenerator(source, mask_rate=REWRITE_RATE).load()
    generator.network.eval()
    generator.prepare(tokenizer, generator.network)
    special = torch.tensor(tokenizer.all_special_ids)
    known = common_tokens(data, special)
    collate = Collator(tokenizer.pad_token_id)
    originals, rewritten, changed, chosen = [], [], 0, 0
    for start in range(0, len(data.val_dataset), 32):
        rows = data.val_dataset[start : start + 32]
        keys = ("input_ids", "attention_mask", "idx")
        batch = collate([{k: rows[k][i] for k in keys} for i in range(len(rows["idx"]))])
        out = generator.rewrite_batch(batch, step=0)
        changed += int((out["input_ids"] != batch["input_ids"]).sum())
        chosen += int(out["kdlight_rewrite_mask"].sum())
        originals.append(batch["input_ids"].reshape(-1))
        rewritten.append(out["input_ids"].reshape(-1))
        if start == 0:
            decode = functools.partial(tokenizer.decode, skip_special_tokens=True)
            shown = [(decode(batch["input_ids"][i]), decode_marked(tokenizer, batch, out, i)) for i in range(SHOWN)]
    share = known_token_share(torch.cat(originals), torch.cat(rewritten), known, special)
    return {"known_token_share": share, "changed_share": changed / max(1, chosen)}, shown


def common_tokens(data, special):
    """The most frequent token ids making up ``COMMON_MASS`` of the training split's (non-special) occurrences."""
    counts = Counter(i for ids in data.dataset["input_ids"] for i in ids if i not in set(special.tolist()))
    total, kept, ids = sum(counts.values()), 0, []
    for token, count in counts.most_common():
        if kept >= COMMON_MASS * total:
            break
        ids.append(token)
        kept += count
    return torch.tensor(sorted(ids))


def decode_marked(tokenizer, batch: dict, out: dict, row: int) -> str:
    """The rewrite with each changed token in bold."""
    ids, new = batch["input_ids"][row].tolist(), out["input_ids"][row].tolist()
    length = int(batch["attention_mask"][row].sum())
    words = []
    for before, after in zip(ids[1 : length - 1], new[1 : length - 1], strict=True):
        token = tokenizer.convert_ids_to_tokens(after)
        words.append(f"**{token}**" if after != before else token)
    return " ".join(words).replace(" ##", "").replace("|", "\\|")


def training_curve(overrides: dict | None = None) -> list[dict]:
    """The recipe's validation rows (metrics.csv of its latest CSV-logged run), if it ran here."""
    root = (overrides or {}).get("trainer.default_root_dir", recipe()["trainer"]["default_root_dir"])
    rows = logged_rows(Path(root), "val/accuracy", newest=True)
    return [
        {"step": int(r["step"]) + 1, "accuracy": float(r["val/accuracy"]), "perplexity": float(r["val/perplexity"])}
        for r in rows
    ]


def curve_notes(name: str, curve: list[dict]) -> str:
    """A results-file paragraph: a run's validation points (:func:`training_curve`), one line each."""
    lines = [f"- step {c['step']}: accuracy {c['accuracy']:.4f}, perplexity {c['perplexity']:.1f}" for c in curve]
    return f"{name}:\n\n" + ("\n".join(lines) or "(no CSV-logged run of it under its default_root_dir on this machine)")


def blocks(train_layers: int | None) -> str:
    return "every encoder block" if train_layers is None else f"the top {train_layers} block(s)"


def plot(rows: list[dict], curves: dict[str, list[dict]], path: Path) -> None:
    with figure(path, 1, 2, dpi=110, figsize=(11, 3.8)) as (_, axes):
        names = [r["generator"].split(" (")[0] for r in rows]
        axes[0].bar(
            names, [100 * r["accuracy"] for r in rows], color=["C7", "C2", "C0"][: len(rows)], label="masked top-1"
        )
        known = [100 * r["known_token_share"] for r in rows]
        axes[0].bar(names, known, width=0.3, color="C1", label="rewrite tokens known")
        axes[0].set(ylabel="%", title="held-out: masked-token accuracy, known rewrite tokens")
        axes[0].legend(fontsize=8)
        for (name, curve), color in zip(curves.items(), ["C2", "C0"], strict=False):
            if curve:
                steps, accuracy = [c["step"] for c in curve], [100 * c["accuracy"] for c in curve]
                axes[1].plot(steps, accuracy, marker="o", color=color, label=name.split(" (")[0])
        axes[1].axhline(100 * rows[0]["accuracy"], color="C7", ls="--", label="untrained head")
        axes[1].set(xlabel="training step", ylabel="held-out masked top-1 (%)", title="validation curves")
        axes[1].legend(fontsize=8)


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--retrain", action="store_true", help="fit the recipe even if its export exists")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    fit = train(args.retrain)
    earlier = earlier_generator()
    data = held_out_data()
    rows, shown = [], {}
    generators = {"untrained head (packaged MiniLM + fresh head)": FRESH, EARLIER_NAME: earlier}
    for name, source in {**generators, "trained (configs/zeroshot/generator.yaml)": str(export_dir())}.items():
        torch.manual_seed(0)
        scores = masked_lm_scores(source, data)
        rewrite_scores, shown[name] = rewrites(source, data)
        rows.append({"generator": name, **scores, **rewrite_scores, "held_out_examples": len(data.val_dataset)})
    curve = training_curve()
    curves = {EARLIER_NAME: training_curve(EARLIER), "the recipe": curve}
    init = recipe()["model"]["init_args"]
    pairs = zip(*(shown[r["generator"]] for r in rows), strict=True)
    table = [
        {"original": o.replace("|", "\\|"), "fresh": fresh, "earlier": earlier, "trained": trained}
        for (o, fresh), (_, earlier), (_, trained) in pairs
    ]
    columns = (
        "original; fresh=untrained head's rewrite; earlier=top-block generator's rewrite (earlier recipe); "
        "trained=trained generator's rewrite (the recipe)"
    )
    where = (
        f"Generated by `python -m benchmarks.zeroshot.generator` on {platform.machine()} / {os.cpu_count()} CPU "
        f"core(s), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
        + (
            f"; the recipe was fitted in this run in {fit['fit_seconds']:.0f} s."
            if fit.get("trained_now")
            else "; the recipe's export was already in the cache (fitted by `kdlight fit --config "
            "configs/zeroshot/generator.yaml`)."
        )
    )
    notes = [
        "## Rewrites (bold: the tokens the generator wrote)",
        f"The first {SHOWN} held-out inputs, {int(100 * REWRITE_RATE)} % of their tokens rewritten with the same "
        "positions and the same Gumbel noise for every generator (zero-shot KD's rewrite before any adversarial "
        "update).",
        markdown_table(table, columns).rstrip("\n"),
        "## Validation curves",
        *(curve_notes(name, points) for name, points in curves.items()),
        "## Where and how this ran",
        where,
    ]
    Study("generator").write(
        rows,
        "generator; accuracy=held-out masked top-1; perplexity; known_token_share=rewrite tokens known (common "
        "corpus tokens, see above); changed_share=chosen positions changed; held_out_examples=held-out examples",
        title="The zero-shot generator: trained masked LM vs the untrained head",
        intro=(
            "Both generators are the packaged all-MiniLM-L6-v2 encoder with an MLM head (decoder tied to the word "
            "embeddings); the untrained one's head is the fresh identity transform that every zero-shot result "
            "before this study used. The trained one is the recipe's export: "
            f"{recipe()['trainer']['max_steps']} steps, batch {recipe()['data']['init_args']['batch_size']}, max "
            f"length {recipe()['data']['init_args']['max_length']}, head learning rate {init['head_learning_rate']}, "
            f"{blocks(init.get('train_layers'))} at {init['learning_rate']} (embeddings frozen), BERT masking "
            f"{init['mask_rate']} / {init['mask_share']} / {init['random_share']}, on "
            f"{' + '.join(recipe()['data']['init_args']['sources'])}. The earlier recipe, the one every zero-shot "
            f"and MATE-KD result with a trained generator used before 2026-12-07: {EARLIER['trainer.max_steps']} "
            f"steps, {blocks(EARLIER['model.init_args.train_layers'])} at "
            f"{EARLIER['model.init_args.learning_rate']}, the rest the same. Scores: the recipe's held-out split "
            "with a fixed masking (see benchmarks/zeroshot/generator.py)."
        ),
        notes="\n\n".join(notes),
        plot=functools.partial(plot, rows, curves),
    )


if __name__ == "__main__":
    main()
