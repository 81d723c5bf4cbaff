#!/usr/bin/env bash
# The colour run of docs/results.md ("Your own pictures: Twemoji"), end to end on this CPU:
# a class-conditional ddpm_mnist-layout U-Net on the 3,786 Twemoji PNGs at 32x32 RGB on
# white (labels: the `category` column of labels.csv), MINUTES of training (55), then the
# grid (10 per category), 50 samples per category scored by `eval images`, and the loader's
# rates. Twemoji (c) Twitter, Inc. and other contributors, CC BY 4.0.
#
#   bash benches/twemoji.sh            # OUT=runs/twemoji
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DDPM_DATA_DIR:-$(cd .. && pwd)/shared/data}/twemoji"
OUT="${OUT:-runs/twemoji}"
MINUTES="${MINUTES:-55}"
cargo build --release --quiet --example mnist --example loader
B=target/release/examples/mnist
$B train --data "$DATA" --labels "$DATA/labels.csv" --label-column category --conditional \
  --model unet --batch-size 32 --lr 1e-3 --warmup-steps 200 --ema-decay 0.999 --ema-warmup \
  --dropout 0 --min-snr-gamma 5 --steps 100000 --checkpoint-every 500 --keep 2 \
  --max-minutes "$MINUTES" --out "$OUT"
$B sample --checkpoint "$OUT" --classes all --num 10 --batch 100 --sampler dpm++2m-sde \
  --steps 50 --guidance 1.5 --seed 0 --out "$OUT/grid-w1.5"
$B sample --checkpoint "$OUT" --classes all --num 50 --batch 100 --sampler dpm++2m-sde \
  --steps 50 --guidance 1.5 --seed 1 --gif-frames 0 --out "$OUT/eval-500"
$B eval images --checkpoint "$OUT" --samples "$OUT/eval-500" --per-class 50
target/release/examples/loader --data "$DATA" --size 32 --batch 32 --batches 2000
