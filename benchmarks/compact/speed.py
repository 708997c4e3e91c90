"""Inference speed of each compact student size against the teacher, on this machine's CPU (one command).

    python -m benchmarks.compact.speed [--texts 640] [--threads 2]

Each size of benchmarks/compact/run.py built as its method (b) student and exported untrained (speed does not
depend on the weights), timed with the quickstart's timer: batch 32, teacher and students taking turns, best of 3
rounds. Writes benchmarks/results/compact_speed.{md,json,png}; kept in compact_speed_runs.json.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.common import fine_tuned_rt_teacher, runner_for
from benchmarks.compact.run import FRESH_SIZES, student_config
from benchmarks.harness import bar_plot
from benchmarks.study import Study, study_parser
from kdlight.models.hf import count_parameters, load_classifier
from kdlight.quickstart import inference_speed, test_texts


def export_untrained(size: str, teacher: str, folder: Path) -> tuple[Path, int]:
    model = {"class_path": "VanillaKD", "init_args": {"teacher": teacher, "student": student_config(size, "b", None)}}
    data = {"class_path": "RottenTomatoesDataModule", "init_args": {"max_length": 64}}
    runner = runner_for({"model": model, "data": data}, folder / size)
    return runner.model.export(folder / size / "export"), count_parameters(runner.model.predictor)


def measure(texts: int, threads: int) -> dict:
    """Samples per second and parameters of the teacher and of each size's export."""
    torch.set_num_threads(threads)
    teacher = str(fine_tuned_rt_teacher())
    params = {"teacher": count_parameters(load_classifier(teacher, 2))}
    with tempfile.TemporaryDirectory() as tmp:
        exports = {"teacher": teacher}
        for size in FRESH_SIZES:
            path, params[size] = export_untrained(size, teacher, Path(tmp))
            exports[size] = str(path)
        speed = inference_speed(exports, test_texts(texts))
    return {"samples_per_s": speed, "params": params}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = study_parser(__doc__)
    parser.add_argument("--texts", type=int, default=640)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    study = Study("compact_speed")
    record = study.once(measure, texts=args.texts, threads=args.threads)
    speed, params = record["samples_per_s"], record["params"]
    rows = []
    for name in ["teacher", *FRESH_SIZES]:
        size = {"student": name, "params": params[name], "compression": params["teacher"] / params[name]}
        rows.append({**size, "samples_per_s": speed[name], "speedup": speed[name] / speed["teacher"]})
    study.write(
        rows,
        "student=model; params; compression; samples_per_s=samples/s; speedup=speed-up",
        title="Compact students: CPU inference speed against the teacher",
        intro=f"Batch 32, up to 64 tokens, {args.texts} Rotten Tomatoes test snippets, {args.threads} torch threads, "
        f"best of 3 interleaved rounds; stock `AutoModelForSequenceClassification` loading of each export. "
        f"Setting: {json.dumps({'texts': args.texts, 'threads': args.threads})}.",
        notes=f"Measurement: {record['note']}." if record.get("note") else "",
        plot=functools.partial(
            bar_plot, rows, "student", "speedup", f"CPU inference speed-up vs teacher ({args.threads} threads)"
        ),
    )
    return rows


if __name__ == "__main__":
    main()
