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
# 4. a short training run of ddpm_mnist on wgpu (MINUTES, default 2), then 64 DDIM-50 samples;
# 5. PyTorch on CUDA, the same models and batches, eager and torch.compile (each bounded);
# every figure into $OUT/summary.txt (and the JSON lines into $OUT/speed.jsonl).
# Without a GPU (lavapipe) the same steps run at a size a CPU finishes: batch 4, one
# iteration, 0.3 minutes of training, no PyTorch CUDA.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$here/report}"
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary" && : >"$OUT/speed.jsonl"
say() { echo "$*" | tee -a "$summary"; }
step() { say "== [$(date +%T)] $*"; }
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
  BATCHES="${BATCHES:-64 128}"; ITERS="${ITERS:-5}"; WARMUP="${WARMUP:-3}"; MINUTES="${MINUTES:-2}"; NUM=64; TB=128
else
  say "no NVIDIA GPU: the CPU-sized run (lavapipe)"
  BATCHES="${BATCHES:-4}"; ITERS="${ITERS:-1}"; WARMUP="${WARMUP:-1}"; MINUTES="${MINUTES:-0.3}"; NUM=4; TB=4
fi
B="$here/bin"

step "wgpu tests"
DDPM_REQUIRE_WGPU=1 "$B/wgpu-tests" --test-threads 1 >"$OUT/tests.log" 2>&1
say "tests (exit $?): $(grep -E '^test result' "$OUT/tests.log" | tail -1)"

step "speed --device wgpu"
for model in mnist cifar10; do
  for b in $BATCHES; do
    if "$B/speed" --device wgpu --model "$model" --batch "$b" --iters "$ITERS" \
        --warmup "$WARMUP" >>"$OUT/speed.jsonl" 2>>"$OUT/speed.err"; then
      tail -1 "$OUT/speed.jsonl" | tee -a "$summary"
    else
      say "speed $model batch $b failed: $(tail -2 "$OUT/speed.err")"
    fi
  done
done

step "training ddpm_mnist on wgpu for $MINUTES min (batch $TB), then $NUM DDIM-50 samples"
run="$OUT/run"
rm -rf "$run"
"$B/mnist" train --device wgpu --model unet --batch-size "$TB" --lr 1e-3 --warmup-steps 200 \
  --ema-decay 0.999 --max-minutes "$MINUTES" --checkpoint-every 500 --out "$run" >"$OUT/train.log" 2>&1
say "train (exit $?, batch $TB): $(tr '\r' '\n' <"$OUT/train.log" | grep -E 'finished|time limit|stopped|^error' | tail -1)"
start=$(date +%s%N)
"$B/mnist" sample --device wgpu --checkpoint "$run" --num "$NUM" --sampler ddim --steps 50 \
  --out "$run/samples" >"$OUT/sample.log" 2>&1
say "sample (exit $?): $(( ($(date +%s%N) - start) / 1000000 )) ms for $NUM images"
cp "$run/samples/grid.png" "$OUT/grid.png" 2>/dev/null

step "PyTorch"
if [ "$gpu" = 1 ] && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  for model in mnist cifar10; do
    for b in $BATCHES; do
      timeout 120 python3 "$here/ddpm_torch.py" --device cuda --model "$model" --batch "$b" \
        --iters "$ITERS" --warmup "$WARMUP" >>"$OUT/speed.jsonl" 2>>"$OUT/torch.err" && tail -1 "$OUT/speed.jsonl" | tee -a "$summary"
    done
    timeout 240 python3 "$here/ddpm_torch.py" --device cuda --compile --model "$model" \
      --batch 128 --iters "$ITERS" --warmup "$WARMUP" >>"$OUT/speed.jsonl" 2>>"$OUT/torch.err" \
      && tail -1 "$OUT/speed.jsonl" | tee -a "$summary" || say "torch.compile $model: did not finish in 240 s"
  done
else
  say "no CUDA PyTorch here: skipped"
fi
step "done: $summary"
