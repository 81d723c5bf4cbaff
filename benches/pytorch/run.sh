#!/usr/bin/env bash
# Side by side, on this machine: ddpm (burn) and PyTorch, the same U-Net (ddpm_mnist preset),
# batch 64, T = 1000. Prints each JSON line, then the ratios (ours / PyTorch: below 1 is faster).
# Needs: `pip install torch` (any recent CPU build).
set -euo pipefail
cd "$(dirname "$0")/../.."
ours=$(cargo run --release --quiet --example speed -- --batch "${BATCH:-64}" --iters "${ITERS:-5}")
theirs=$(python3 benches/pytorch/ddpm_torch.py --batch "${BATCH:-64}" --iters "${ITERS:-5}")
echo "$ours"
echo "$theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"| step | {o['impl']} ms | {t['impl']} ms | ratio |")
print("| --- | ---: | ---: | ---: |")
for k, name in (("train_ms", "training step"), ("sample_ms", "sampling step")):
    print(f"| {name} | {o[k]} | {t[k]} | {o[k] / t[k]:.2f} |")
print(f"| peak RSS (MiB) | {o['peak_rss_mib']} | {t['peak_rss_mib']} | {o['peak_rss_mib'] / t['peak_rss_mib']:.2f} |")
print(f"achieved: {o['train_gflops']} GFLOP/s training, {o['sample_gflops']} GFLOP/s sampling ({o['fwd_gflop']} GFLOP per forward of the batch); this machine's sgemm (2048^3, flex): {o['sgemm_gflops']} GFLOP/s")
PY
