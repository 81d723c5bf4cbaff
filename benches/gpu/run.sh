#!/usr/bin/env bash
# The GPU figures in one command, on the machine itself, from the archive of
# benches/gpu/pack.sh (nothing is built there):
#
#   tar -xJf gpu-pack.tar.xz && bash gpu-pack/run.sh          # OUT=gpu-pack/report
#
# 1. the machine: GPU, driver, the Vulkan driver (ICD) found (NVIDIA's may live under the
#    driver's own folder, not /usr/share/vulkan; lavapipe when there is no GPU);
# 2. the wgpu tests (an adapter must answer);
# 3. `speed --device wgpu` for ddpm_mnist and ddpm_cifar10 at batch 64 and 128;
# 4. PyTorch on CUDA, the same models and batches, eager;
# 5. a short training run of ddpm_mnist on wgpu (MINUTES, default 1.5), then 64 DDIM-50 samples;
# 6. torch.compile on both models at batch 128, and the criterion benches, while time is left;
# every figure into $OUT/summary.txt (the JSON lines into $OUT/speed.jsonl), each step bounded
# so that the whole run ends inside BUDGET seconds (default 500: the lent machine's command
# limit is 10 minutes); a step that would not fit is skipped and says so. GPU memory: the peak
# of `nvidia-smi`'s memory.used (the whole GPU, sampled every 100 ms) during each step.
# Without a GPU (lavapipe) the same steps run at a size a CPU finishes: batch 4, one
# iteration, 0.3 minutes of training, no PyTorch CUDA.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$here/report}"
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary" && : >"$OUT/speed.jsonl"
say() { echo "$*" | tee -a "$summary"; }
step() { say "== [$(date +%T), $(( $(date +%s) - t0 )) s] $*"; }
t0=$(date +%s)
BUDGET="${BUDGET:-500}"
left() { echo $(( BUDGET - ($(date +%s) - t0) )); }
# bounded SECONDS CMD...: runs CMD under `timeout`, at most SECONDS and never past the budget
# (less 10 s for the summary); refuses (exit 99) when fewer than MIN (default 20) seconds are left.
bounded() {
  local s=$1; shift
  local l=$(( $(left) - 10 ))
  [ "$l" -lt "${MIN:-20}" ] && { say "skipped (budget): $*" >&2; return 99; }
  [ "$s" -gt "$l" ] && s=$l
  timeout "$s" "$@"
}
# The GPU's memory in use, sampled while a step runs: mem_on, then mem_off prints the peak.
mem_on() {
  mem_log="$OUT/mem.tmp"; : >"$mem_log"; mem_pid=""
  [ "$gpu" = 1 ] || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$mem_log" 2>/dev/null &
  mem_pid=$!
}
mem_off() {
  [ -n "$mem_pid" ] && { kill "$mem_pid" 2>/dev/null; wait "$mem_pid" 2>/dev/null; }
  [ "$gpu" = 1 ] || return 0
  local peak; peak=$(sort -n "$mem_log" | tail -1)
  echo "gpu_mem_peak_mib=${peak:-unread} (idle ${mem_idle:-?})"
}
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
export DDPM_DATA_DIR="$here/data"
# Mesa and the NVIDIA driver complain on every start without one on a headless machine.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/ddpm-xdg-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

step "machine (commit $(cat "$here/COMMIT" 2>/dev/null))"
say "$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
gpu=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$summary"
  mem_idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
fi
if [ -z "${VK_DRIVER_FILES:-}" ]; then
  icd=""
  for f in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
           /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$f" ] && { icd="$f"; break; }
  done
  [ -z "$icd" ] && [ "$gpu" = 1 ] && icd=$(find /usr /etc /opt -maxdepth 7 -name 'nvidia_icd*.json' 2>/dev/null | head -1)
  [ -z "$icd" ] && icd=$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -1)
  [ -n "$icd" ] && export VK_DRIVER_FILES="$icd"
fi
say "Vulkan driver: ${VK_DRIVER_FILES:-none found}"
if [ "$gpu" = 1 ]; then
  BATCHES="${BATCHES:-64 128}"; ITERS="${ITERS:-5}"; WARMUP="${WARMUP:-3}"; MINUTES="${MINUTES:-1.5}"; NUM=64; TB=128
else
  say "no NVIDIA GPU: the CPU-sized run (lavapipe)"
  BATCHES="${BATCHES:-4}"; ITERS="${ITERS:-1}"; WARMUP="${WARMUP:-1}"; MINUTES="${MINUTES:-0.3}"; NUM=4; TB=4
fi
B="$here/bin"

step "wgpu tests"
mem_on
bounded 150 env DDPM_REQUIRE_WGPU=1 "$B/wgpu-tests" --test-threads 1 >"$OUT/tests.log" 2>&1
rc=$?
say "tests (exit $rc): $(grep -E '^test result' "$OUT/tests.log" | tail -1) $(mem_off)"

step "speed --device wgpu"
for model in mnist cifar10; do
  for b in $BATCHES; do
    mem_on
    bounded "$( [ "$model" = mnist ] && echo 100 || echo 150 )" "$B/speed" --device wgpu --model "$model" --batch "$b" --iters "$ITERS" \
      --warmup "$WARMUP" >"$OUT/speed.tmp" 2>>"$OUT/speed.err"
    rc=$?
    cat "$OUT/speed.tmp" >>"$OUT/speed.jsonl"
    if [ "$rc" = 0 ]; then
      say "$(tail -1 "$OUT/speed.tmp") $(mem_off)"
    else
      say "speed $model batch $b failed (exit $rc): $(tail -2 "$OUT/speed.err") $(mem_off)"
      # FAIL_FAST=1: no wgpu at all (the first run failed too) ends the run here, so that a
      # lent machine's minutes go to a second try rather than to PyTorch alone.
      if [ "${FAIL_FAST:-0}" = 1 ] && [ "$model/$b" = "mnist/${BATCHES%% *}" ]; then
        step "stopping: wgpu did not run (FAIL_FAST=1)"; exit 3
      fi
    fi
  done
done

step "PyTorch, eager"
torch_ok=0
if [ "$gpu" = 1 ] && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  torch_ok=1
  for model in mnist cifar10; do
    for b in $BATCHES; do
      mem_on
      bounded 90 python3 "$here/ddpm_torch.py" --device cuda --model "$model" --batch "$b" \
        --iters "$ITERS" --warmup "$WARMUP" >"$OUT/torch.tmp" 2>>"$OUT/torch.err"
      rc=$?
      cat "$OUT/torch.tmp" >>"$OUT/speed.jsonl"
      say "$( [ "$rc" = 0 ] && tail -1 "$OUT/torch.tmp" || echo "torch $model batch $b failed (exit $rc)") $(mem_off)"
    done
  done
else
  say "no CUDA PyTorch here: skipped"
fi

step "training ddpm_mnist on wgpu for $MINUTES min (batch $TB), then $NUM DDIM-50 samples"
run="$OUT/run"
rm -rf "$run"
mem_on
bounded 240 "$B/mnist" train --device wgpu --model unet --batch-size "$TB" --lr 1e-3 --warmup-steps 200 \
  --ema-decay 0.999 --max-minutes "$MINUTES" --checkpoint-every 500 --out "$run" >"$OUT/train.log" 2>&1
rc=$?
say "train (exit $rc, batch $TB): $(tr '\r' '\n' <"$OUT/train.log" | grep -E 'finished|time limit|stopped|^error' | tail -1) $(mem_off)"
start=$(date +%s%N)
bounded 120 "$B/mnist" sample --device wgpu --checkpoint "$run" --num "$NUM" --sampler ddim --steps 50 \
  --out "$run/samples" >"$OUT/sample.log" 2>&1
say "sample (exit $?): $(( ($(date +%s%N) - start) / 1000000 )) ms for $NUM images"
cp "$run/samples/grid.png" "$OUT/grid.png" 2>/dev/null

if [ "$torch_ok" = 1 ]; then
  step "PyTorch, torch.compile (batch 128, while time is left)"
  for model in mnist cifar10; do
    mem_on
    MIN=60 bounded 150 python3 "$here/ddpm_torch.py" --device cuda --compile --model "$model" \
      --batch 128 --iters "$ITERS" --warmup "$WARMUP" >"$OUT/torch.tmp" 2>>"$OUT/torch.err"
    rc=$?
    cat "$OUT/torch.tmp" >>"$OUT/speed.jsonl"
    say "$( [ "$rc" = 0 ] && tail -1 "$OUT/torch.tmp" || echo "torch.compile $model: exit $rc (124: not done in its time)") $(mem_off)"
  done
fi

step "criterion benches, the wgpu rows (short, while time is left)"
MIN=40 bounded 90 "$B/unet-bench" --bench wgpu --warm-up-time 1 --measurement-time 3 >"$OUT/bench.log" 2>&1
say "unet-bench (exit $?): $(grep -E 'time:' "$OUT/bench.log" | wc -l) timings, in bench.log"
rm -f "$OUT"/*.tmp
step "done: $summary"
