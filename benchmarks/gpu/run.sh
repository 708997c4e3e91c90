#!/usr/bin/env bash
# Run ON the GPU machine through the device tool, after benchmarks/gpu/prepare.sh here:
#   run(command="bash benchmarks/gpu/run.sh", carry=[".whl", ".gpu_assets"], timeout_s=600)
# or a subset of the stages, e.g. "bash benchmarks/gpu/run.sh tests quickstart" then "... overhead".
# Stages: env, tests (pytest -m gpu: every module's fit -> test in bf16-mixed and 32-true, caches and side
# modules on the GPU, resume, export loaded on CPU, set_sync_debug_mode("error") around training steps),
# quickstart (the offline quickstart, accelerator auto = cuda, fp32, plus the KD stage again in bf16-mixed),
# overhead (benchmarks/speed.py --gpu: VanillaKD vs a hand-written loop at MiniLM shape, batch 64 and 256, bf16-mixed).
# Everything lands in $OUT (gpu.md, logs, speed_gpu.{md,json,png}); copy gpu.md to benchmarks/results/gpu.md and commit it.
# studies-start / studies-wait: the compact and zero-shot compact studies at their committed setting, 3 seeds,
# in worker processes sharing the GPU (STUDY_SECONDS each, default 400; STUDY_ARGS adds flags, e.g. --quick),
# results as benchmarks/results/{compact,zeroshot_compact}_gpu*, packed into $OUT/studies.tgz every 20 s so a
# run cut short still returns its finished runs (rebuild the tables here with --label gpu --report-only).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/kdlight_gpu_out}
mkdir -p "$OUT"
stages=${*:-env tests quickstart overhead}
PY=${PY:-python3}  # a local dry run: PY=/path/to/python SKIP_WHEELS=1 OUT=/tmp/x bash benchmarks/gpu/run.sh ...
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD:$PWD/.gpu_assets/site PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false KDLIGHT_CACHE=/tmp/kdlight_cache
mkdir -p "$KDLIGHT_CACHE" && cp -r .gpu_assets/kdlight_cache/. "$KDLIGHT_CACHE"/
REPORT=$OUT/gpu.md
[ -f "$REPORT" ] || echo "# kdlight on a GPU (benchmarks/gpu/run.sh)" > "$REPORT"
block() { { echo; echo "## $1"; echo; echo '```'; cat; echo '```'; } >> "$REPORT"; }
elapsed() { echo "wall time: $(( $(date +%s) - $1 ))s"; }

for stage in $stages; do
  start=$(date +%s)
  case $stage in
    env)
      { date -u; git log -1 --oneline 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        $PY -c "import torch, lightning, transformers, datasets, jsonargparse; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| lightning', lightning.__version__, '| transformers', transformers.__version__, '| datasets', datasets.__version__, '| jsonargparse', jsonargparse.__version__)"
        $PY -c "from kdlight.assets import minilm_path; from transformers import AutoModel; m = AutoModel.from_pretrained(minilm_path()); print('packaged MiniLM loads as', next(m.parameters()).dtype)"
      } 2>&1 | block "environment" ;;
    tests)
      { timeout ${TEST_SECONDS:-420} $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_host_sync.py 2>&1 \
          | tee "$OUT/gpu_tests.log" | tail -40; elapsed "$start"; } | block "gpu tests: pytest -m gpu tests/test_gpu.py tests/test_host_sync.py" ;;
    quickstart)
      { timeout 360 python3 -m kdlight.quickstart --output /tmp/quickstart 2>&1 | tail -14
        echo "--- KD stage again in bf16-mixed ---"
        timeout 200 python3 -m kdlight.cli fit --config configs/quickstart/kd.yaml --trainer.precision=bf16-mixed \
          --model.init_args.teacher=/tmp/quickstart/teacher/export --trainer.default_root_dir=/tmp/quickstart_bf16 \
          --model.init_args.export_dir=/tmp/quickstart_bf16/export --trainer.enable_progress_bar=false 2>&1 | tail -4
        timeout 120 python3 -m kdlight.cli test --config configs/quickstart/kd.yaml --trainer.precision=bf16-mixed \
          --model.init_args.teacher=/tmp/quickstart/teacher/export --trainer.default_root_dir=/tmp/quickstart_bf16 \
          --trainer.enable_progress_bar=false --ckpt_path=best 2>&1 | grep -E "test/|Error|error" | tail -12
        elapsed "$start"; } | tee "$OUT/quickstart.log" | block "quickstart on the GPU (fp32), then its KD stage in bf16-mixed" ;;
    overhead)
      { timeout 540 python3 -m benchmarks.speed --gpu --label gpu --results "$OUT" 2>&1 \
          | tee "$OUT/overhead.log" | tail -12; elapsed "$start"; } | block "overhead benchmark at GPU sizes (table below)"
      [ -f "$OUT/speed_gpu.md" ] && cat "$OUT/speed_gpu.md" >> "$REPORT" ;;
    teacher)
      { timeout 240 $PY -c "from benchmarks.common import fine_tuned_rt_teacher; print(fine_tuned_rt_teacher())" 2>&1 \
          | tail -3; elapsed "$start"; } | block "the quickstart teacher, fine-tuned on the GPU (cached for the studies)" ;;
    studies-start)
      seconds=${STUDY_SECONDS:-400}
      deadline=$(( start + seconds ))
      left() { echo $(( deadline - $(date +%s) )); }
      # Each study at its committed setting; with time left, a longer setting of its key rows (label gpu_long).
      ( timeout "$seconds" $PY -m benchmarks.zeroshot.compact --label gpu --workers "${ZS_WORKERS:-8}" ${STUDY_ARGS:-}
        echo "exit $? after $(( $(date +%s) - start ))s"
        if [ "$(left)" -gt 120 ]; then
          timeout "$(left)" $PY -m benchmarks.zeroshot.compact --label gpu_long --students general scratch \
            --methods 1 3 4 --student-steps "${LONG_STUDENT_STEPS:-4000}" --workers "${ZS_WORKERS:-8}" ${STUDY_ARGS:-}
          echo "long: exit $? after $(( $(date +%s) - start ))s"
        fi ) > "$OUT/zeroshot_compact.log" 2>&1 &
      ( timeout "$seconds" $PY -m benchmarks.compact.run --label gpu --workers "${CP_WORKERS:-4}" ${STUDY_ARGS:-}
        echo "exit $? after $(( $(date +%s) - start ))s"
        if [ "$(left)" -gt 120 ]; then
          timeout "$(left)" $PY -m benchmarks.compact.run --label gpu_long --sizes 10x 20x --methods a c \
            --general-steps "${LONG_GENERAL_STEPS:-4000}" --workers "${CP_WORKERS:-4}" ${STUDY_ARGS:-}
          echo "long: exit $? after $(( $(date +%s) - start ))s"
        fi ) > "$OUT/compact.log" 2>&1 &
      (while sleep 20; do tar czf "$OUT/studies.tgz.tmp" benchmarks/results/*_gpu* 2>/dev/null \
         && mv "$OUT/studies.tgz.tmp" "$OUT/studies.tgz"; done) &
      snapshots=$! ;;
    extras-start)  # other settings: ZS_EXTRA / CP_EXTRA are each study's flags (with a --label of their own)
      seconds=${STUDY_SECONDS:-400}
      [ -n "${ZS_EXTRA:-}" ] && (timeout "$seconds" $PY -m benchmarks.zeroshot.compact $ZS_EXTRA; echo "exit $?") \
        > "$OUT/zeroshot_compact.log" 2>&1 &
      [ -n "${CP_EXTRA:-}" ] && (timeout "$seconds" $PY -m benchmarks.compact.run $CP_EXTRA; echo "exit $?") \
        > "$OUT/compact.log" 2>&1 &
      (while sleep 20; do tar czf "$OUT/studies.tgz.tmp" benchmarks/results/*_gpu* 2>/dev/null \
         && mv "$OUT/studies.tgz.tmp" "$OUT/studies.tgz"; done) &
      snapshots=$! ;;
    studies-wait)
      wait $(jobs -p | grep -vx "${snapshots:-0}") 2>/dev/null
      kill "${snapshots:-0}" 2>/dev/null
      tar czf "$OUT/studies.tgz" benchmarks/results/*_gpu* 2>/dev/null
      { tail -4 "$OUT/zeroshot_compact.log"; tail -4 "$OUT/compact.log"; ls benchmarks/results/*_gpu*; } 2>&1 \
        | block "studies (logs: zeroshot_compact.log, compact.log; results: studies.tgz)" ;;
    *) echo "unknown stage $stage" >&2 ;;
  esac
done
echo "report: $REPORT"
