#!/usr/bin/env bash
# The GPU figures of docs/results.md, in one run on a machine with a GPU:
#   1. what the adapter probe says (Vulkan driver, nvidia-smi),
#   2. a release build with `--features wgpu`,
#   3. the wgpu tests (DDPM_REQUIRE_WGPU=1: no adapter is a failure, not a skip),
#   4. the criterion benches (flex and wgpu rows),
#   5. the speed example on wgpu at batch 64 and 256 (ms per step, GFLOP/s),
#   6. a 5-minute training run of ddpm_mnist on wgpu, then 64 DDIM-50 samples.
# Everything is logged to $OUT (default target/gpu-report); the summary is summary.txt.
#
#   bash benches/gpu.sh              # all steps
#   MINUTES=1 bash benches/gpu.sh    # a shorter training run
#
# Offline machines: the build needs the crates in cargo's cache (or a `cargo vendor` tree
# configured in .cargo/config.toml); the script says so instead of hanging on the network.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-target/gpu-report}"
MINUTES="${MINUTES:-5}"
mkdir -p "$OUT"
export CARGO_TERM_COLOR=never
export DDPM_DATA_DIR="${DDPM_DATA_DIR:-$(cd .. && pwd)/shared/data}"
F="--release --features wgpu"
summary="$OUT/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
step() { say "== [$(date +%T)] $*"; }

step "machine"
{ nproc; free -g | sed -n 2p; } | tee -a "$summary"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$summary"
ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>&1 | tee -a "$summary"
command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>&1 | head -40 >"$OUT/vulkaninfo.txt"

step "build ($F)"
if ! cargo build $F --examples --benches --tests >"$OUT/build.log" 2>&1; then
  if ! cargo build $F --offline --examples --benches --tests >>"$OUT/build.log" 2>&1; then
    say "build failed (offline? the crates must be in cargo's cache or vendored): see build.log"
    tail -20 "$OUT/build.log" | tee -a "$summary"
    exit 1
  fi
fi

step "adapter probe (speed example, 1 iteration)"
if ! cargo run $F --quiet --example speed -- --device wgpu --batch 2 --iters 1 \
    >"$OUT/probe.json" 2>"$OUT/probe.err"; then
  say "wgpu found no adapter; what it said:"
  tee -a "$summary" <"$OUT/probe.err"
  exit 1
fi
say "wgpu adapter answers: $(cat "$OUT/probe.json")"

step "wgpu tests"
DDPM_REQUIRE_WGPU=1 cargo test $F --test wgpu >"$OUT/tests.log" 2>&1
say "tests: $(grep -E '^test result' "$OUT/tests.log" | tail -1)"

step "speed example (median of 10 steps)"
for b in 64 256; do
  cargo run $F --quiet --example speed -- --device wgpu --batch "$b" --iters 10 \
    2>>"$OUT/speed.err" | tee -a "$summary"
done

step "criterion benches"
cargo bench --bench unet --features wgpu >"$OUT/bench.log" 2>&1
grep -E "^(flex|wgpu)/|time:" "$OUT/bench.log" | tee -a "$summary"

step "training ddpm_mnist on wgpu for $MINUTES min, then sampling"
run="$OUT/run"
rm -rf "$run"
cargo run $F --quiet --example mnist -- train --device wgpu --model unet --batch-size 128 \
  --lr 1e-3 --warmup-steps 200 --max-minutes "$MINUTES" --checkpoint-every 500 --out "$run" \
  >"$OUT/train.log" 2>&1
tail -3 "$OUT/train.log" | tee -a "$summary"
tail -1 "$run/loss.csv" 2>/dev/null | tee -a "$summary"
( time cargo run $F --quiet --example mnist -- sample --device wgpu --checkpoint "$run" \
    --num 64 --sampler ddim --steps 50 --out "$run/samples" ) >"$OUT/sample.log" 2>&1
tail -4 "$OUT/sample.log" | tee -a "$summary"
cp "$run/samples/grid.png" "$OUT/grid.png" 2>/dev/null
step "done: $summary"
