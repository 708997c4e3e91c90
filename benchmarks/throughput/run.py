"""Training throughput: kdlight's VanillaKD vs a hand-written PyTorch loop vs TextBrewer vs torchdistill,
the teacher-logit cache, and the step cost of ZeroShotAdversarialKD and AdaptiveLossMixingKD.

    python -m benchmarks.throughput.run            # the committed measurement (~20 min on 2 CPU cores)
    python -m benchmarks.throughput.run --quick    # a tiny debug run (results go to a temp folder)

Peers, installed without their dependencies (``pip install textbrewer`` / ``torchdistill`` would
replace torch 2.13 by torch 2.14 + CUDA): ``pip install --no-deps textbrewer==0.2.1.post1
torchdistill==1.1.5``. See ``stubs.py`` for the two imports (torchvision, tensorboardX) they need
but never use here.

Method. Every system trains the same student (the quickstart teacher cut to blocks 0 and 5, deep-copied,
so the same initial weights) on the same batches in the same order (Rotten Tomatoes train split,
max_length 64, batch 32, kdlight's ``Collator``, one seeded epoch permutation), with the same loss
(alpha = 0.5 on Hinton's KL at T = 2 scaled by T^2, 0.5 on CE), the same AdamW (lr 2e-4, no weight decay)
and linear warm-up/decay, and the global RNG re-seeded just before the first step: the test logits after
training agree to float rounding, which shows the maths is the same (``worker.py`` has each system).

Timing. Every run is its own process (``worker.py``): honest peak-memory figures, no state shared between
systems. Time is the wall clock between end-of-step timestamps (data loading and all framework work
between steps included) over a window after some warm-up steps. Runs are interleaved round-robin (the
order rotates every round) so that load from other processes hits every system alike; each figure is the
median over rounds, and each ratio the median of the ratios measured within a round. Memory: the peak RSS
during training minus the RSS when training starts (``worker.Memory``). Runs are not resumed across
invocations: a measurement is one sitting on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import CONFIGS, REPO, fine_tuned_rt_teacher
from benchmarks.study import RESULTS, Study, markdown_table, target
from benchmarks.timing import git_state, machine, own_time, run_module, stderr_tail

BATCH = 32
MAIN = ["handwritten", "kdlight", "textbrewer", "torchdistill"]
CACHE = ["kdlight_uncached_2ep", "kdlight_cached_2ep", "handwritten_cached_2ep"]
VARIANTS = ["alm", "zeroshot"]
LABELS = {
    "handwritten": "hand-written PyTorch loop",
    "kdlight": "kdlight VanillaKD",
    "textbrewer": "TextBrewer 0.2.1.post1 BasicDistiller",
    "torchdistill": "torchdistill 1.1.5 DistillationBox + KDLoss",
    "kdlight_uncached_2ep": "kdlight VanillaKD, teacher run every step",
    "kdlight_cached_2ep": "kdlight VanillaKD, cache_teacher_logits: true",
    "handwritten_cached_2ep": "hand-written loop, teacher logits looked up (lower bound)",
    "alm": "kdlight AdaptiveLossMixingKD",
    "zeroshot": "kdlight ZeroShotAdversarialKD",
}
ZEROSHOT_RECIPE = (10, 100)  # configs/zeroshot/offline.yaml: generator steps, student steps per cycle


# ------------------------------------------------------------------------------------ configuration
def settings(quick: bool) -> argparse.Namespace:
    if quick:
        return argparse.Namespace(
            rounds=1,
            warmup=1,
            steps=2,
            epoch_steps=3,
            variant_warmup=1,
            variant_steps=2,
            zs_generator_steps=1,
            zs_student_steps=2,
            zs_total=4,
            profile_steps=2,
        )
    return argparse.Namespace(
        rounds=3,
        warmup=4,
        steps=12,
        epoch_steps=7,
        variant_warmup=3,
        variant_steps=9,
        zs_generator_steps=2,
        zs_student_steps=6,
        zs_total=10,
        profile_steps=6,
    )


def zeroshot_available() -> bool:
    return all(
        path.is_file() for path in (REPO / "kdlight" / "modules" / "zeroshot.py", CONFIGS / "zeroshot" / "offline.yaml")
    )


# ----------------------------------------------------------------------------------------- running
def worker(
    system: str, cfg, out: Path, threads: int, cache_dir: Path, extra: list[str] = (), timeout: int = 900
) -> dict:
    """One run of ``system`` in its own process (``worker.py``): its JSON record, or ``{"error": ...}``."""
    total = {"alm": cfg.variant_warmup + cfg.variant_steps, "zeroshot": cfg.zs_total}.get(
        system, cfg.warmup + cfg.steps
    )
    args = [
        "--system",
        system,
        "--total-steps",
        str(total),
        "--epoch-steps",
        str(cfg.epoch_steps),
        "--zs-generator-steps",
        str(cfg.zs_generator_steps),
        "--zs-student-steps",
        str(cfg.zs_student_steps),
        "--threads",
        str(threads),
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(out),
        *extra,
    ]
    start = time.perf_counter()
    proc = run_module("benchmarks.throughput.worker", args, timeout)
    if proc.returncode != 0 or not out.is_file():
        tail = stderr_tail(proc, 15)
        print(f"[throughput] {system} FAILED (exit {proc.returncode}):\n{tail}", flush=True)
        return {"system": system, "error": tail.splitlines()[-1] if tail else f"exit {proc.returncode}"}
    result = json.loads(out.read_text())
    result["process_s"] = time.perf_counter() - start
    return result


def window(result: dict, cfg) -> tuple[float, int] | None:
    """(seconds, steps) of the timed window of one run."""
    stamps = result.get("stamps") or []
    system = result["system"]
    if system in CACHE:  # the second epoch, from the end of its first step to its end
        first, last = cfg.epoch_steps, 2 * cfg.epoch_steps - 1
    elif system == "alm":
        first, last = cfg.variant_warmup - 1, cfg.variant_warmup + cfg.variant_steps - 1
    else:
        first, last = cfg.warmup - 1, cfg.warmup + cfg.steps - 1
    if len(stamps) <= last or last <= first:
        return None
    return stamps[last] - stamps[first], last - first


def zeroshot_kinds(result: dict) -> dict[str, float]:
    """Median seconds per generator step and per student step (each step timed from the previous
    step's end; the first step is not timed)."""
    stamps, kinds = result.get("stamps") or [], result.get("extra", {}).get("step_kinds") or []
    times: dict[str, list[float]] = {"generator": [], "student": []}
    for i in range(1, min(len(stamps), len(kinds))):
        times[kinds[i]].append(stamps[i] - stamps[i - 1])
    return {k: statistics.median(v) for k, v in times.items() if v}


def contention() -> list[str]:
    """Other busy processes right now (ps), for the record."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,pcpu,rss,etime,args", "--sort=-pcpu"], capture_output=True, text=True
        ).stdout
    except OSError:
        return []
    busy = []
    for line in out.splitlines()[1:]:
        parts = line.split(None, 4)
        if len(parts) < 5 or int(parts[0]) == os.getpid():
            continue
        if float(parts[1]) >= 10.0 or ("python" in parts[4] and float(parts[1]) >= 2.0):
            busy.append(f"pid {parts[0]} {parts[1]}% CPU, {int(parts[2]) // 1024} MB: {parts[4][:140]}")
    return busy


# --------------------------------------------------------------------------------------- profiling
CATEGORIES = [
    ("torch kernels (model math, autograd, optimiser)", lambda f, n: f == "~" and ("torch" in n or "_EngineBase" in n)),
    ("Lightning", lambda f, n: "/lightning/" in f or "/lightning_utilities/" in f or "/torchmetrics/" in f),
    ("kdlight", lambda f, n: "/kdlight/" in f),
    ("transformers (Python)", lambda f, n: "/transformers/" in f),
    ("torch.optim / lr_scheduler (Python)", lambda f, n: "/torch/optim/" in f),
    (
        "torch.nn / autograd (Python)",
        lambda f, n: "/torch/" in f and "/torch/utils/data/" not in f and "/torch/optim/" not in f,
    ),
    (
        "data loading (sampler, collate, datasets/arrow)",
        lambda f, n: "/torch/utils/data/" in f or "/datasets/" in f or "/pyarrow/" in f,
    ),
    ("other Python", lambda f, n: True),
]


def profile_summary(path: Path, steps: int) -> dict:
    seconds, stats = own_time(path, CATEGORIES)
    top_framework = sorted(
        (
            (cumtime, ncalls, f"{Path(file).parent.name}/{Path(file).name}:{line}({name})")
            for (file, line, name), (_, ncalls, _, cumtime, _) in stats.items()
            if "/lightning/" in file or "/kdlight/" in file
        ),
        reverse=True,
    )
    return {
        "steps": steps,
        "ms_per_step": {k: 1000 * v / steps for k, v in seconds.items()},
        "total_ms_per_step": 1000 * sum(seconds.values()) / steps,
        "top_framework_cumulative_ms_per_step": [
            (f"{1000 * c / steps:.1f}", n, where) for c, n, where in top_framework[:25]
        ],
    }


def run_profiles(cfg, work: Path, threads: int, cache_dir: Path) -> dict:
    out = {}
    for system in ("handwritten", "kdlight"):
        warmup = min(cfg.warmup, 2)
        first, last = warmup, warmup + cfg.profile_steps
        pcfg = argparse.Namespace(**{**vars(cfg), "warmup": warmup, "steps": cfg.profile_steps})
        res = worker(
            system,
            pcfg,
            work / f"profile_{system}.json",
            threads,
            cache_dir,
            ["--profile-window", str(first), str(last), "--no-eval"],
        )
        prof = work / f"profile_{system}.prof"
        if "error" in res or not prof.is_file():
            out[system] = {"error": res.get("error", "no profile written")}
            continue
        out[system] = profile_summary(prof, last - first)
        print(f"[throughput] profile {system}: {out[system]['total_ms_per_step']:.0f} ms/step profiled", flush=True)
    return out


# ---------------------------------------------------------------------------------------- analysis
def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def round_records(round_runs: list[dict], cfg) -> dict[str, dict]:
    """One round's figures per system; every ratio is between runs of the same round."""
    import torch

    def logits(r):
        path = r.get("logits") if r else None
        return torch.load(path, weights_only=True) if path and Path(path).is_file() else None  # tensors only

    def max_diff(a, b):
        return float((a - b).abs().max()) if a is not None and b is not None and a.shape == b.shape else None

    by = {r["system"]: r for r in round_runs}
    recs: dict[str, dict] = {}
    for system, r in by.items():
        rec = {"error": r.get("error")}
        if "error" not in r:
            if system == "zeroshot":
                kinds = zeroshot_kinds(r)
                g, st = kinds.get("generator"), kinds.get("student")
                rec["generator_step_s"], rec["student_step_s"] = g, st
                if g is not None and st is not None:
                    n_g, n_s = ZEROSHOT_RECIPE
                    rec["step_s"] = (n_g * g + n_s * st) / (n_g + n_s)
            elif w := window(r, cfg):
                rec["step_s"] = w[0] / w[1]
            if rec.get("step_s"):
                rec["samples_per_s"] = BATCH / rec["step_s"]
            for key in ("peak_mem_mb", "process_peak_mb", "baseline_rss_mb", "accuracy", "loadavg_end", "process_s"):
                rec[key] = r.get(key)
            rec["extra"] = {k: v for k, v in (r.get("extra") or {}).items() if k != "step_kinds"}
        recs[system] = rec

    def paired(system, reference, key, invert=False):
        a, b = recs.get(system, {}).get("samples_per_s"), recs.get(reference, {}).get("samples_per_s")
        if a and b:
            recs[system][key] = b / a if invert else a / b

    for system in recs:
        paired(system, "handwritten", "ratio_vs_handwritten")
        paired(system, "kdlight", "step_cost_vs_vanillakd", invert=True)
        if system in ("textbrewer", "torchdistill"):
            paired(system, "kdlight", "kdlight_speed_vs_this", invert=True)
        if system in CACHE:
            paired(system, "kdlight_uncached_2ep", "speedup_vs_uncached")
        if system == "kdlight_cached_2ep":
            paired(system, "handwritten_cached_2ep", "ratio_vs_handwritten_cached")
    hand_logits = logits(by.get("handwritten"))
    for system in MAIN:
        if system in recs and system in by:
            recs[system]["max_abs_logit_diff_vs_handwritten"] = max_diff(logits(by[system]), hand_logits)
    unc_logits, kc_logits = logits(by.get("kdlight_uncached_2ep")), logits(by.get("kdlight_cached_2ep"))
    if "kdlight_cached_2ep" in recs:
        recs["kdlight_cached_2ep"]["max_abs_logit_diff_vs_uncached"] = max_diff(kc_logits, unc_logits)
    if "handwritten_cached_2ep" in recs:
        recs["handwritten_cached_2ep"]["max_abs_logit_diff_vs_kdlight_cached"] = max_diff(
            logits(by["handwritten_cached_2ep"]), kc_logits
        )
    return recs


SUMMARY_KEYS = (
    "samples_per_s",
    "ratio_vs_handwritten",
    "step_s",
    "step_cost_vs_vanillakd",
    "speedup_vs_uncached",
    "ratio_vs_handwritten_cached",
    "kdlight_speed_vs_this",
    "peak_mem_mb",
    "process_peak_mb",
    "baseline_rss_mb",
    "accuracy",
    "generator_step_s",
    "student_step_s",
    "max_abs_logit_diff_vs_handwritten",
    "max_abs_logit_diff_vs_uncached",
    "max_abs_logit_diff_vs_kdlight_cached",
)
RANGED = (
    "ratio_vs_handwritten",
    "kdlight_speed_vs_this",
    "speedup_vs_uncached",
    "step_cost_vs_vanillakd",
    "ratio_vs_handwritten_cached",
)


def analyse(runs: list[list[dict]], cfg) -> dict:
    """Per-system medians over rounds (the largest logit difference), with the per-round ratios' range."""
    per_system: dict[str, list[dict]] = {}
    for round_runs in runs:
        for system, rec in round_records(round_runs, cfg).items():
            per_system.setdefault(system, []).append(rec)
    summary = {}
    for system, recs in per_system.items():
        ok = [r for r in recs if not r.get("error")]
        row = {"system": LABELS.get(system, system), "key": system, "rounds_ok": len(ok), "rounds": len(recs)}
        for key in SUMMARY_KEYS:
            values = [r.get(key) for r in ok if r.get(key) is not None]
            if values:
                row[key] = max(values) if key.startswith("max_abs") else median(values)
                if len(values) > 1 and key in RANGED:
                    row[key + "_range"] = [min(values), max(values)]
        row["per_round"] = {
            k: [r.get(k) for r in recs] for k in ("samples_per_s", "ratio_vs_handwritten", "step_s", "loadavg_end")
        }
        errors = [r["error"] for r in recs if r.get("error")]
        if errors:
            row["errors"] = errors
        if ok and ok[0].get("extra"):
            row["extra"] = ok[0]["extra"]
        summary[system] = row
    return summary


# ------------------------------------------------------------------------------------------ output
def fmt(v, pattern="{:.3g}"):
    return None if v is None else pattern.format(v)


def span(values) -> str | None:
    return None if not values else f"{values[0]:.3f}-{values[1]:.3f}"


def result_rows(summary: dict, meta: dict, profiles: dict | None) -> list[dict]:
    rows = []
    for system in MAIN + CACHE + VARIANTS:
        row = summary.get(system)
        if row is None:
            continue
        section = "peers" if system in MAIN else "cache" if system in CACHE else "variants"
        out = {
            "system": row["system"],
            "key": system,
            "section": section,
            "samples_per_s": row.get("samples_per_s"),
            "ratio_vs_handwritten": row.get("ratio_vs_handwritten"),
            "peak_mem_mb": row.get("peak_mem_mb"),
            "accuracy": row.get("accuracy"),
        }
        out.update({k: v for k, v in row.items() if k not in out and k != "system"})
        if system == "kdlight" and profiles:
            out["profile"] = profiles
        rows.append(out)
    if "zeroshot" not in summary:
        rows.append(
            {
                "system": LABELS["zeroshot"],
                "key": "zeroshot",
                "section": "variants",
                "samples_per_s": None,
                "ratio_vs_handwritten": None,
                "peak_mem_mb": None,
                "accuracy": None,
                "todo": meta.get("zeroshot_note", "TODO: not measured"),
            }
        )
    return rows


def ms(x: dict) -> str | None:
    return fmt(1000 * x["step_s"], "{:.0f}") if x.get("step_s") else None


def acc(x: dict) -> str | None:
    return fmt(100 * x["accuracy"], "{:.2f}") if x.get("accuracy") is not None else None


def peer_table(rows: list[dict]) -> list[dict]:
    return [
        {
            "system": x["system"],
            "sps": fmt(x.get("samples_per_s"), "{:.1f}"),
            "ratio": fmt(x.get("ratio_vs_handwritten"), "{:.3f}x"),
            "range": span(x.get("ratio_vs_handwritten_range")),
            "step": ms(x),
            "mem": fmt(x.get("peak_mem_mb"), "{:.0f}"),
            "pmem": fmt(x.get("process_peak_mb"), "{:.0f}"),
            "acc": acc(x),
            "diff": fmt(x.get("max_abs_logit_diff_vs_handwritten"), "{:.1e}"),
            "n": f"{x.get('rounds_ok', 0)}/{x.get('rounds', 0)}",
        }
        for x in rows
        if x["section"] == "peers"
    ]


def cache_table(rows: list[dict], cfg) -> str:
    def diff(x):
        for key, versus in (
            ("max_abs_logit_diff_vs_uncached", "uncached"),
            ("max_abs_logit_diff_vs_kdlight_cached", "kdlight cached"),
        ):
            if x.get(key) is not None:
                return f"{x[key]:.1e} (vs {versus})"
        return None

    return markdown_table(
        [
            {
                "system": x["system"],
                "sps": fmt(x.get("samples_per_s"), "{:.1f}"),
                "step": ms(x),
                "speed": "1x" if x["key"] == "kdlight_uncached_2ep" else fmt(x.get("speedup_vs_uncached"), "{:.2f}x"),
                "range": span(x.get("speedup_vs_uncached_range")),
                "mem": fmt(x.get("peak_mem_mb"), "{:.0f}"),
                "acc": acc(x),
                "diff": diff(x),
            }
            for x in rows
            if x["section"] == "cache"
        ],
        [
            ("system", "system"),
            ("sps", "samples/s, epoch 2 (median)"),
            ("step", "ms/step"),
            ("speed", "vs kdlight uncached (median of per-round ratios)"),
            ("range", "per-round range"),
            ("mem", "peak RSS delta, MB"),
            ("acc", f"test acc. % after 2 x {cfg.epoch_steps} steps"),
            ("diff", "max abs test-logit diff"),
        ],
    )


def variant_table(rows: list[dict]) -> str:
    kd = next((x for x in rows if x["key"] == "kdlight"), {})
    reference = {
        "system": LABELS["kdlight"] + " (reference)",
        "step": ms(kd),
        "cost": "1x",
        "mem": fmt(kd.get("peak_mem_mb"), "{:.0f}"),
        "note": "T=2, alpha=0.5, teacher run every step",
    }
    return markdown_table(
        [reference]
        + [
            {
                "system": x["system"],
                "step": ms(x),
                "cost": fmt(x.get("step_cost_vs_vanillakd"), "{:.2f}x"),
                "mem": fmt(x.get("peak_mem_mb"), "{:.0f}"),
                "note": x.get("todo") or variant_note(x),
            }
            for x in rows
            if x["section"] == "variants"
        ],
        [
            ("system", "system"),
            ("step", "ms per training step (median)"),
            ("cost", "step cost vs VanillaKD (median of per-round ratios)"),
            ("mem", "peak RSS delta, MB"),
            ("note", "what a step is"),
        ],
    )


def variant_note(x: dict) -> str:
    if x["key"] == "alm":
        return (
            "one batch of 32: teacher + student forward, per-example CE/KD mix with the lambda table, last-layer "
            "look-ahead meta step on a clean batch of 32, student update (configs/noisy/alm.yaml settings, teacher "
            "not cached, T=4)"
        )
    if x["key"] == "zeroshot":
        g, s = x.get("generator_step_s"), x.get("student_step_s")
        return (
            f"weighted by the recipe's 10 generator : 100 student steps; generator step "
            f"{fmt(1000 * g, '{:.0f}') if g else '?'} ms (MLM generator + Gumbel rewrite, teacher and student on "
            f"it, backward to the generator), student step {fmt(1000 * s, '{:.0f}') if s else '?'} ms (teacher + "
            "student on 32 Wikipedia snippets and on their rewrites)"
        )
    return ""


def targets(rows: list[dict], meta: dict) -> list[str]:
    r = {x["key"]: x for x in rows}
    kd, lines = r.get("kdlight", {}), []
    if kd.get("ratio_vs_handwritten") is not None:
        rng = kd.get("ratio_vs_handwritten_range")
        lines.append(
            target(
                "kdlight VanillaKD >= 0.95x the hand-written loop",
                kd["ratio_vs_handwritten"] >= 0.95,
                f"{kd['ratio_vs_handwritten']:.3f}x" + (f"; per-round {rng[0]:.3f}x to {rng[1]:.3f}x" if rng else ""),
            )
        )
    for p in (r.get("textbrewer", {}), r.get("torchdistill", {})):
        if p.get("kdlight_speed_vs_this") is not None:
            rng = p.get("kdlight_speed_vs_this_range")
            lines.append(
                target(
                    f"kdlight >= {p['system']}",
                    p["kdlight_speed_vs_this"] >= 1.0,
                    f"kdlight / {p['key']} = {p['kdlight_speed_vs_this']:.3f}x, median of per-round ratios"
                    + (f"; per-round {rng[0]:.3f}x to {rng[1]:.3f}x" if rng else "")
                    + f"; medians {kd.get('samples_per_s', 0):.2f} vs {p['samples_per_s']:.2f} samples/s",
                )
            )
    cached, bound = r.get("kdlight_cached_2ep", {}), r.get("handwritten_cached_2ep", {})
    if cached.get("speedup_vs_uncached") is not None:
        ok = cached["speedup_vs_uncached"] >= 2.0
        detail = f"{cached['speedup_vs_uncached']:.2f}x"
        if bound.get("speedup_vs_uncached") and cached.get("ratio_vs_handwritten_cached"):
            detail += (
                f"; the hand-written loop with the same logits looked up reaches "
                f"{bound['speedup_vs_uncached']:.2f}x, and kdlight cached runs at "
                f"{cached['ratio_vs_handwritten_cached']:.3f}x of it"
            )
        lines.append(
            target("teacher-logit cache >= 2x", ok, detail)
            + ("" if ok or "cache_ceiling" not in meta else " " + meta["cache_ceiling"])
        )
    return lines


def notes(summary: dict, profiles: dict | None, meta: dict) -> list[str]:
    """Failures, the cache's ceiling and the profile's headline, from this run's figures."""
    out = [
        f"{LABELS[key]}: failed in {len(row['errors'])} round(s): {row['errors'][0]}"
        for key, row in summary.items()
        if row.get("errors")
    ]
    if meta.get("zeroshot_note"):
        out.append(f"ZeroShotAdversarialKD: {meta['zeroshot_note']}.")
    unc = summary.get("kdlight_uncached_2ep", {})
    cac = summary.get("handwritten_cached_2ep") or summary.get("kdlight_cached_2ep", {})
    if unc.get("step_s") and cac.get("step_s"):
        share = 1 - cac["step_s"] / unc["step_s"]
        meta["cache_ceiling"] = (
            f"The cache removes only the teacher's forward pass, {100 * share:.0f} % of an uncached step here "
            "(uncached kdlight step vs the hand-written looked-up step); the student's forward + backward and AdamW "
            "remain, so the ceiling is 1 / (1 - teacher share)."
        )
    if profiles and all("ms_per_step" in profiles.get(s, {}) for s in ("handwritten", "kdlight")):
        h, k = profiles["handwritten"], profiles["kdlight"]
        kernels = "torch kernels (model math, autograd, optimiser)"
        fw = k["ms_per_step"]["Lightning"] + k["ms_per_step"]["kdlight"]
        out.append(
            f"Profiler (cProfile, {k['steps']} steps each, own time per library): Lightning + kdlight Python "
            f"code costs {fw:.1f} ms per step of {k['total_ms_per_step']:.0f} ms "
            f"({100 * fw / k['total_ms_per_step']:.1f} %); torch kernels {k['ms_per_step'][kernels]:.0f} ms in "
            f"kdlight vs {h['ms_per_step'][kernels]:.0f} ms in the hand-written loop."
        )
    return out


def profile_text(profiles: dict | None) -> str:
    if not profiles:
        return ""
    lines = []
    for system in ("handwritten", "kdlight"):
        p = profiles.get(system, {})
        if "ms_per_step" not in p:
            lines.append(f"- {system}: profile failed ({p.get('error')})")
            continue
        parts = ", ".join(f"{k} {v:.0f}" for k, v in p["ms_per_step"].items() if v >= 0.5)
        lines.append(
            f"- {LABELS[system]}: {p['total_ms_per_step']:.0f} ms/step under cProfile over {p['steps']} "
            f"steps: {parts} (ms/step, own time)"
        )
    return (
        "## Where a step's time goes (cProfile, own time per function grouped by library)\n\n"
        + "\n".join(lines)
        + "\n\nFull top-25 list of Lightning/kdlight functions by cumulative time in `throughput.json` "
        "(`profile`)."
    )


def write(study: Study, summary: dict, cfg, meta: dict, profiles: dict | None) -> list[dict]:
    rows = result_rows(summary, meta, profiles)
    notes_list = notes(summary, profiles, meta)
    v = meta["versions"]
    intro = (
        f"`python -m benchmarks.throughput.run` ({meta['minutes']:.1f} min, {meta['date']}). Git: `{meta['git']}`. "
        f"{meta['machine']}, no GPU; torch {v['torch']}, lightning {v['lightning']}, transformers "
        f"{v['transformers']}, datasets {v['datasets']}, Python {v['python']}; {meta['threads']} torch thread(s) per "
        f"run. Other busy processes: {len(meta['contention_start'])} at the start, {len(meta['contention_end'])} at "
        f"the end; load average at the end of each run {meta['load_range']}. {cfg.rounds} round(s), medians "
        f"reported; peers and kdlight: {cfg.warmup} warm-up steps, then {cfg.steps} timed steps. Method: see the "
        "docstring of `benchmarks/throughput/run.py`.\n\n"
        "## 1. Framework overhead and peers (teacher run every step)"
    )
    sections = [
        "## 2. Teacher-logit cache",
        "",
        f"2 epochs of {cfg.epoch_steps} batches, timed over the second. The cache is filled once, before the first "
        f"step, and kept on disk: {meta.get('cache_fill', 'n/a')}.",
        "",
        cache_table(rows, cfg),
        "## 3. Step cost of the other distillers",
        "",
        variant_table(rows),
        "## Targets",
        "",
        *targets(rows, meta),
        "",
        "## Notes and failures",
        "",
        *(f"- {n}" for n in notes_list),
        "",
        profile_text(profiles),
    ]
    study.write(
        json.loads(json.dumps(rows, default=str)),
        [
            ("system", "system"),
            ("sps", "samples/s (median)"),
            ("ratio", "vs hand-written (median of per-round ratios)"),
            ("range", "per-round range"),
            ("step", "ms/step"),
            ("mem", "peak RSS delta, MB"),
            ("pmem", "process peak RSS, MB"),
            ("acc", f"test acc. % after {cfg.warmup + cfg.steps} steps"),
            ("diff", "max abs test-logit diff vs hand-written"),
            ("n", "rounds ok"),
        ],
        title="Training throughput: kdlight vs a hand-written loop vs TextBrewer vs torchdistill",
        intro=intro,
        notes="\n".join(sections),
        plot=plot(rows),
        table_rows=peer_table(rows),
    )
    return rows


def plot(rows: list[dict]):
    def draw(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1.4, 1, 1]})
        peers = [r for r in rows if r["section"] == "peers" and r.get("ratio_vs_handwritten")]
        ax = axes[0]
        names = [r["system"].replace(" ", "\n", 1) for r in peers]
        values = [r["ratio_vs_handwritten"] for r in peers]
        colors = [
            "#888888" if r["key"] == "handwritten" else "#2b7bba" if r["key"] == "kdlight" else "#e08a2c" for r in peers
        ]
        bars = ax.bar(names, values, color=colors)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(0.95, color="red", lw=0.8, ls="--", label="0.95x target")
        for b, v, r in zip(bars, values, peers, strict=True):
            ax.text(
                b.get_x() + b.get_width() / 2,
                v + 0.01,
                f"{v:.3f}x\n{r['samples_per_s']:.1f}/s",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylim(0, max(values + [1.0]) * 1.25)
        ax.set_ylabel("training throughput vs hand-written loop")
        ax.set_title("Same KD math, same batches (median ratio)")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=8, loc="lower right")

        ax = axes[1]
        cache = [r for r in rows if r["section"] == "cache" and r.get("samples_per_s")]
        if cache:
            names = {
                "kdlight_uncached_2ep": "kdlight\nteacher every step",
                "kdlight_cached_2ep": "kdlight\ncached logits",
                "handwritten_cached_2ep": "hand-written\nlooked-up logits",
            }
            colors = {"kdlight_uncached_2ep": "#888888", "kdlight_cached_2ep": "#2b7bba"}
            bars = ax.bar(
                [names[r["key"]] for r in cache],
                [r["samples_per_s"] for r in cache],
                color=[colors.get(r["key"], "#bbbbbb") for r in cache],
            )
            for b, r in zip(bars, cache, strict=True):
                label = f"{r['samples_per_s']:.1f}/s" + (
                    f"\n{r['speedup_vs_uncached']:.2f}x" if r.get("speedup_vs_uncached") else ""
                )
                ax.text(b.get_x() + b.get_width() / 2, r["samples_per_s"], label, ha="center", va="bottom", fontsize=8)
            ax.set_ylim(0, max(r["samples_per_s"] for r in cache) * 1.3)
        ax.set_ylabel("samples/s, second epoch")
        ax.set_title("VanillaKD teacher-logit cache")
        ax.tick_params(axis="x", labelsize=7)

        ax = axes[2]
        var = [r for r in rows if r["section"] == "variants"]
        names = ["VanillaKD"] + [r["system"].replace("kdlight ", "") for r in var]
        values = [1.0] + [r.get("step_cost_vs_vanillakd") or 0.0 for r in var]
        bars = ax.bar(names, values, color=["#888888"] + ["#2b7bba" if v else "#dddddd" for v in values[1:]])
        for b, v in zip(bars, values, strict=True):
            ax.text(
                b.get_x() + b.get_width() / 2, v, f"{v:.2f}x" if v else "TODO", ha="center", va="bottom", fontsize=8
            )
        ax.set_ylim(0, max(values) * 1.25)
        ax.set_ylabel("time per training step vs VanillaKD")
        ax.set_title("Step cost of the other distillers")
        ax.tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    return draw


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny debug run (results in a temp folder)")
    parser.add_argument("--rounds", type=int, default=None, help="round-robin rounds (default 3; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--systems", nargs="*", default=None, help="subset of systems to run")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the cProfile breakdown of kdlight vs the hand-written loop"
    )
    parser.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    cfg = settings(args.quick)
    if args.rounds:
        cfg.rounds = args.rounds
    start = time.perf_counter()

    from kdlight.assets import cache_dir

    teacher = fine_tuned_rt_teacher()
    print(f"[throughput] teacher: {teacher}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="kdlight_throughput_runs_"))
    results = args.results or (work / "results" if args.quick else RESULTS)
    logit_cache = cache_dir() / "throughput" / "teacher_logits"
    logit_cache.mkdir(parents=True, exist_ok=True)
    import datasets
    import lightning
    import torch
    import transformers

    meta: dict = {
        "threads": args.threads,
        "machine": machine(),
        "git": git_state(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "contention_start": contention(),
        "versions": {
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "python": platform.python_version(),
        },
    }
    systems = MAIN + CACHE + ["alm"]
    if zeroshot_available():
        systems.append("zeroshot")
    else:
        meta["zeroshot_note"] = "TODO: kdlight/modules/zeroshot.py or configs/zeroshot/offline.yaml not present"
    if args.systems:
        systems = [s for s in systems if s in args.systems]

    # The cache is filled once (one teacher pass over the training split), outside the rounds, and
    # kept on disk for later runs (delete <kdlight cache>/throughput to measure the fill again).
    fill_record = logit_cache / "fill_time.json"
    if any(s in systems for s in CACHE):
        existed = any(p.is_dir() and not p.name.endswith(".tmp") for p in logit_cache.iterdir())
        if not existed:
            prep_cfg = argparse.Namespace(**{**vars(cfg), "epoch_steps": 1})
            res = worker(
                "kdlight_cached_2ep",
                prep_cfg,
                work / "cache_prep.json",
                args.threads,
                logit_cache,
                ["--no-eval"],
                timeout=1800,
            )
            first_step = (res.get("extra") or {}).get("time_to_first_step_s")
            if first_step is not None:
                fill_record.write_text(
                    json.dumps({"time_to_first_step_s": first_step, "date": meta["date"], "threads": args.threads})
                )
        print(f"[throughput] teacher-logit cache {'found' if existed else 'computed'} in {logit_cache}", flush=True)

    runs: list[list[dict]] = []
    for rnd in range(cfg.rounds):
        order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
        round_runs = []
        for system in order:
            # accuracy is deterministic (seeded, same batches): evaluated in the first round only
            res = worker(
                system,
                cfg,
                work / f"r{rnd}_{system}.json",
                args.threads,
                logit_cache,
                [] if rnd == 0 else ["--no-eval"],
            )
            round_runs.append(res)
            w = window(res, cfg) if "error" not in res else None
            print(
                f"[throughput] round {rnd + 1}/{cfg.rounds} {system}: "
                + (
                    f"{w[1] * BATCH / w[0]:.2f} samples/s, acc {res.get('accuracy')}, "
                    f"+{res.get('peak_mem_mb', 0):.0f} MB, load {res.get('loadavg_end', 0):.1f}"
                    if w
                    else res.get("error", "zeroshot (per-kind timing)")
                )
                + f" [{(time.perf_counter() - start) / 60:.1f} min]",
                flush=True,
            )
        runs.append(round_runs)

    profiles = None if args.no_profile else run_profiles(cfg, work, args.threads, logit_cache)
    first_steps = {
        system: [
            r["extra"]["time_to_first_step_s"]
            for rr in runs
            for r in rr
            if r.get("system") == system and (r.get("extra") or {}).get("time_to_first_step_s")
        ]
        for system in ("kdlight_cached_2ep", "kdlight_uncached_2ep")
    }
    if fill_record.is_file():
        fill = json.loads(fill_record.read_text())
        meta["cache_fill"] = (
            f"filling it took {fill['time_to_first_step_s']:.0f} s from `trainer.fit` to the end of "
            f"the first step (measured {fill['date']}, {fill['threads']} thread(s))"
        )
    if all(first_steps.values()):
        cached, uncached = (statistics.median(first_steps[s]) for s in ("kdlight_cached_2ep", "kdlight_uncached_2ep"))
        meta["cache_fill"] = (
            meta.get("cache_fill", "fill time not recorded") + "; with the cache on disk, `fit` to "
            f"the end of the first step takes {cached:.0f} s (uncached: {uncached:.0f} s)"
        )
    meta["contention_end"] = contention()
    summary = analyse(runs, cfg)
    loads = [r.get("loadavg_end") for rr in runs for r in rr if r.get("loadavg_end") is not None]
    meta["load_range"] = (
        f"{min(loads):.1f} to {max(loads):.1f} (median {statistics.median(loads):.1f})" if loads else "n/a"
    )
    meta["minutes"] = (time.perf_counter() - start) / 60
    write(Study("throughput", results=results), summary, cfg, meta, profiles)
    print((results / "throughput.md").read_text())
    if not args.quick:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
