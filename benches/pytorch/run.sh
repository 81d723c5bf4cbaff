#!/usr/bin/env bash
# Side by side, on this machine: ddpm (burn) and PyTorch, the same U-Net, T = 1000.
#   MODEL=mnist   (default) the ddpm_mnist preset, 1x28x28, batch 64
#   MODEL=cifar10 the paper's CIFAR-10 model, 3x32x32, 35.7M parameters, batch 16
# ITERS=N timed steps per phase after WARMUP=N untimed ones (default 5 and 3, the same on both
# sides: our Winograd sampling settles at its fourth step, on the kept kernels).
# FEATURES=wgpu builds speed with those features (no second build of burn when the target
# directory holds a wgpu build). ROUNDS=N interleaves N rounds (ours, theirs, ours, theirs,
# ...). Prints each JSON line, then the ratios (ours / PyTorch: below 1 is faster); after
# more than one round, a summary of every round's ratio with their median and worst (the
# host's speed drifts between rounds: the median is the figure to compare). The parameter
# counts must be equal.
# Both sides run with the same malloc settings: ours calls ddpm::allocator::keep_freed_memory
# (speed's default `--malloc keep`), PyTorch gets the same two settings through GLIBC_TUNABLES
# (its sampling step runs up to 2x faster with them on this machine; MALLOC=default runs
# both with glibc's defaults instead).
# Needs: `pip install torch` (any recent CPU build).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL="${MODEL:-mnist}"
if [ "$MODEL" = cifar10 ]; then BATCH="${BATCH:-16}"; else BATCH="${BATCH:-64}"; fi
cargo build --release --quiet ${FEATURES:+--features "$FEATURES"} --example speed
if [ "${MALLOC:-keep}" = keep ]; then
  TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483647
else
  TUNABLES=
fi
rounds_log=$(mktemp)
trap 'rm -f "$rounds_log"' EXIT
for round in $(seq 1 "${ROUNDS:-1}"); do
ours=$(target/release/examples/speed --model "$MODEL" --batch "$BATCH" --iters "${ITERS:-5}" --warmup "${WARMUP:-3}" --malloc "${MALLOC:-keep}")
theirs=$(GLIBC_TUNABLES="$TUNABLES" python3 benches/pytorch/ddpm_torch.py --model "$MODEL" --batch "$BATCH" --iters "${ITERS:-5}" --warmup "${WARMUP:-3}")
echo "$ours"
echo "$theirs"
printf '%s\t%s\n' "$ours" "$theirs" >>"$rounds_log"
python3 - "$ours" "$theirs" "$round" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert o["params"] == t["params"], f"parameter counts differ: ours {o['params']}, PyTorch {t['params']}"
print(f"round {sys.argv[3]}: {o['model']}, batch {o['batch']}, {o['params']:,} parameters in both")
print(f"| step | {o['impl']} ms | {t['impl']} ms | ratio |")
print("| --- | ---: | ---: | ---: |")
for k, name in (("train_ms", "training step"), ("sample_ms", "sampling step"), ("sample1_ms", "sampling step, batch 1")):
    print(f"| {name} | {o[k]} | {t[k]} | {o[k] / t[k]:.2f} |")
print(f"| peak RSS (MiB) | {o['peak_rss_mib']} | {t['peak_rss_mib']} | {o['peak_rss_mib'] / t['peak_rss_mib']:.2f} |")
print(f"achieved: {o['train_gflops']} GFLOP/s training, {o['sample_gflops']} GFLOP/s sampling ({o['fwd_gflop']} GFLOP per forward of the batch); this machine's sgemm (2048^3, flex): {o['sgemm_gflops']} GFLOP/s")
PY
done
if [ "${ROUNDS:-1}" -gt 1 ]; then
python3 - "$rounds_log" <<'PY'
import json, statistics, sys
rounds = [[json.loads(part) for part in line.rstrip("\n").split("\t")] for line in open(sys.argv[1])]
o0 = rounds[0][0]
print(f"summary: {o0['model']}, batch {o0['batch']}, {len(rounds)} interleaved rounds (ours / PyTorch)")
print("| step | ratio by round | median | worst |")
print("| --- | --- | ---: | ---: |")
for k, name in (("train_ms", "training step"), ("sample_ms", "sampling step"), ("sample1_ms", "sampling step, batch 1"), ("peak_rss_mib", "peak RSS")):
    ratios = [o[k] / t[k] for o, t in rounds]
    print(f"| {name} | {' / '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} | {max(ratios):.2f} |")
PY
fi
