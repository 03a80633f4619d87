#!/usr/bin/env bash
# One GPU session, prepared: in about 8 minutes on one GPU it records the machine, runs the
# CUDA tests, trains the conv and the WaveNet on their default recipes with --device cuda in
# float32 and in bf16 (each evaluated after), runs a 2-process NCCL torchrun where there are 2
# or more GPUs, then `wavenet bench --device cuda` (quick, then full with the time left).
# It runs the package from this working tree (PYTHONPATH=. python3 -m wavenet), never a venv
# or an install, so it works on a machine that cannot fetch anything.
#
#   benchmarks/gpu.sh [OUTDIR]              on the GPU machine  [OUTDIR: $OUT/gpu, else gpu-results]
#   benchmarks/gpu.sh --rehearse [OUTDIR]   every step on the CPU with small settings (a few minutes)
#
# OUTDIR/summary.md gets one line per step (what ran, its status and seconds, its key figures);
# OUTDIR/logs/ every step's output; OUTDIR/runs/ the run directories; OUTDIR/results.tar.gz all
# of it but the checkpoints (one file to carry back). A step that fails or runs out of its time
# is recorded and the next one runs; the exit status is 1 if any step failed.
# Environment: PYTHON (python3), GPU_BUDGET_S (480: the whole script's seconds).
set -uo pipefail
cd "$(dirname "$0")/.."

rehearse=0
if [[ "${1:-}" == "--rehearse" ]]; then rehearse=1; shift; fi
out="${1:-${OUT:+$OUT/gpu}}"
out="${out:-gpu-results}"
py="${PYTHON:-python3}"
budget="${GPU_BUDGET_S:-480}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out/logs" "$out/runs" || exit 1
start=$(date +%s)
failed=0

if (( rehearse )); then
  device=cpu
  train_limit=120 steps=(--max-steps 300 --eval-interval 100)  # a few seconds each on a CPU
  quick=(--blocks 8 --repeats 1 --kinds conv,wavenet)
  full=(--blocks 8 --repeats 1 --kinds conv)
else
  device=cuda
  train_limit=60 steps=()  # the default recipes; a run cut by its limit saves its checkpoint on SIGTERM
  quick=()
  full=()
fi

elapsed() { echo $(( $(date +%s) - start )); }

# step NAME SECONDS COMMAND...: run it under a time limit, its output in logs/NAME.log
step() {
  local name=$1 limit=$2 t0 rc status
  shift 2
  t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout -s TERM -k 30 "$limit" "$@" >"$out/logs/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124) status="stopped at its ${limit}s limit" ;;
    *) status="FAILED (exit $rc)"; failed=1 ;;
  esac
  local figures
  figures=$(grep -E "^((val|test) +loss|training [0-9.]+ s|[0-9]+ (passed|skipped|failed))" "$out/logs/$name.log" \
            | sed -E 's/ +/ /g; s/ \(([0-9,]+ targets).*//; s/; evaluation and checkpoints.*//' | tr '\n' ';' | sed 's/;$//')
  echo "| $name | $status | $(( $(date +%s) - t0 )) s | ${figures:--} |" >>"$out/summary.md"
  echo "   $status"
}

{
  echo "# GPU session: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  if commit=$(git rev-parse --short HEAD 2>/dev/null); then
    git diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
  else
    commit="? (no git here: a copied working tree)"
  fi
  echo "device $device, commit $commit"
  echo
  echo "| step | status | wall | figures |"
  echo "|---|---|---:|---|"
} >"$out/summary.md"

# the machine
step machine 60 bash -c "date -u; uname -a; nproc; free -g; (nvidia-smi || echo 'no nvidia-smi'); \
  $py -c 'import sys, torch, numpy; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \
\"cuda\", torch.version.cuda, \"numpy\", numpy.__version__); n = torch.cuda.device_count(); print(\"gpus\", n, \
[torch.cuda.get_device_name(i) for i in range(n)], \"bf16\", n and torch.cuda.is_bf16_supported()); \
import wavenet; print(\"wavenet from\", wavenet.__file__)'"
gpus=$($py -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)

# the CUDA tests (they skip without a GPU)
step cuda-tests 120 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py

# the default trainings, float32 and bf16, each evaluated
for kind in conv wavenet; do
  for dtype in float32 bf16; do
    run="$out/runs/$kind-$dtype"
    rm -rf "$run"
    step "train-$kind-$dtype" "$train_limit" "$py" -m wavenet train --model "$kind" --device "$device" \
      --dtype "$dtype" -o "$run" --no-progress -n 5 "${steps[@]}"
    [[ -f "$run/checkpoint.pt" ]] && step "eval-$kind-$dtype" 60 "$py" -m wavenet eval -o "$run" --device "$device"
  done
done

# torchrun: 2 processes (NCCL on 2 GPUs; the rehearsal: gloo on the CPU)
if (( rehearse || gpus >= 2 )); then
  rm -rf "$out/runs/torchrun"
  step torchrun-2 "$train_limit" "$py" -m torch.distributed.run --standalone --nproc_per_node 2 -m wavenet train \
    --device "$device" -o "$out/runs/torchrun" --no-progress -n 0 --max-steps 400 --eval-interval 200
else
  echo "| torchrun-2 | skipped: $gpus GPU(s) | 0 s | - |" >>"$out/summary.md"
fi

# the benchmarks: quick, then full with the time that is left
step bench-quick 150 "$py" -m wavenet bench --device "$device" --out "$out/bench-quick" \
  --log "$out/perf_log_lines.md" "${quick[@]}"
left=$(( budget - $(elapsed) - 20 ))
if (( left >= 60 )); then
  step bench-full "$left" "$py" -m wavenet bench --full --device "$device" --out "$out/bench-full" \
    --log "$out/perf_log_lines.md" "${full[@]}"
else
  echo "| bench-full | skipped: ${left}s left | 0 s | - |" >>"$out/summary.md"
fi

echo >>"$out/summary.md"
echo "total $(elapsed) s" >>"$out/summary.md"
tar czf "$out/results.tar.gz" -C "$out" --exclude='*.pt' summary.md logs runs \
  $(cd "$out" && ls -d bench-quick bench-full perf_log_lines.md 2>/dev/null) || failed=1
cat "$out/summary.md"
exit $failed
