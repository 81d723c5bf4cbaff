#!/usr/bin/env bash
# The quick preset's time-to-quality ablation (docs/results.md, "Time to quality"): each row is
# a fresh run of the quick preset's recipe with one change, trained for the same wall-clock
# budget, sampled (1,000 samples, seed 0) and scored by the project's classifier.
#
#   bash benches/quick_ablation.sh ROW...        # rows by name, e.g. baseline cosine
#   bash benches/quick_ablation.sh --list        # the rows and their flags
#   bash benches/quick_ablation.sh 'lr3=--lr 3e-3' # a row of your own: name=flags
#
# MINUTES (14), NUM (1000), OUT (runs/ablation) and SAMPLERS (the samplers each checkpoint is
# scored with, `name:flags;...`) override the defaults. A row whose run directory holds a
# checkpoint is not retrained; a sample folder holding `done` is not redrawn. Results:
# $OUT/<row>/<sampler>.quality and one summary line per (row, sampler) in $OUT/summary.tsv.
# Run it on an idle machine: the budget is wall clock, so anything else running costs steps.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${MINUTES:-14}
NUM=${NUM:-1000}
OUT=${OUT:-runs/ablation}
SAMPLERS=${SAMPLERS:-"ddpm-100:--sampler ddpm --steps 100;dpm++2m-sde-20:--sampler dpm++2m-sde --steps 20;ddim-50:--sampler ddim --steps 50"}
export DDPM_DATA_DIR=${DDPM_DATA_DIR:-../shared/data}

# The quick preset's recipe before the ablation (row `baseline`); a row replaces some of these
# flags. The preset now trains with the settings of row `cond+lr-2e-3+min-snr-5`
# (`ddpm::recipe::Recipe::quick()`) and samples with `--classes all --guidance 1.5`. `train`'s
# own defaults are the paper's (`Recipe::default()`): the rows name every setting they rely on.
BASE="--model unet-small --batch-size 32 --lr 1e-3 --warmup-steps 100 --ema-decay 0.995 --ema-warmup --dropout 0 --grad-clip 1 --objective eps --schedule linear --checkpoint-every 1000 --keep 3"
declare -A ROWS=(
  [baseline]=""
  [ddpm-mnist]="--model unet"
  [batch-64]="--batch-size 64"
  [batch-16]="--batch-size 16"
  [lr-2e-3]="--lr 2e-3"
  [lr-5e-4]="--lr 5e-4"
  [warmup-500]="--warmup-steps 500"
  [ema-0.999]="--ema-decay 0.999"
  [ema-0.99]="--ema-decay 0.99"
  [min-snr-5]="--min-snr-gamma 5"
  [v]="--objective v"
  [cosine]="--schedule cosine"
  [dropout-0.1]="--dropout 0.1"
  # Combinations of the rows that won alone.
  [lr-2e-3+min-snr-5]="--lr 2e-3 --min-snr-gamma 5"
  [b64+lr-2e-3+min-snr-5]="--batch-size 64 --lr 2e-3 --min-snr-gamma 5"
  [b64+lr-2e-3+min-snr-5+v]="--batch-size 64 --lr 2e-3 --min-snr-gamma 5 --objective v"
  # Class-conditional training (classifier-free guidance, null class 10 % of the time) on top
  # of the preset's recipe. Score it with samplers whose flags hold `--classes all --guidance W`:
  # NUM / 10 samples per class, and the share drawn in the requested class is reported.
  [cond+lr-2e-3+min-snr-5]="--lr 2e-3 --min-snr-gamma 5 --conditional"
)

if [[ ${1:-} == --list || $# -eq 0 ]]; then
  echo "base: $BASE"
  for r in $(printf '%s\n' "${!ROWS[@]}" | sort); do echo "$r: ${ROWS[$r]}"; done
  exit 0
fi

# BASE with the row's flags replacing those of the same name.
flags() {
  declare -A f=()
  local order=() k
  set -- $BASE ${ROWS[$1]}
  while [[ $# -gt 0 ]]; do
    k=$1; shift
    if [[ -z ${f[$k]+x} ]]; then order+=("$k"); fi
    if [[ $# -gt 0 && $1 != --* ]]; then f[$k]=$1; shift; else f[$k]=""; fi
  done
  for k in "${order[@]}"; do printf '%s %s ' "$k" "${f[$k]}"; done
}

cargo build --release --quiet --example mnist
B=target/release/examples/mnist
mkdir -p "$OUT"
for row in "$@"; do
  if [[ $row == *=* ]]; then
    ROWS[${row%%=*}]=${row#*=}
    row=${row%%=*}
  fi
  [[ -n ${ROWS[$row]+x} ]] || { echo "unknown row '$row' (see --list)" >&2; exit 2; }
  run=$OUT/$row
  if [[ ! -d $run/checkpoints ]]; then
    # shellcheck disable=SC2046
    $B train $(flags "$row") --steps 1000000 --checkpoint-every 500 --keep 2 \
      --max-minutes "$MINUTES" --seed 0 --out "$run" | tee "$run.train.log"
  fi
  steps=$(ls "$run/checkpoints" | sort | tail -1 | sed 's/step-0*//')
  IFS=';' read -ra samplers <<< "$SAMPLERS"
  for s in "${samplers[@]}"; do
    name=${s%%:*}; sflags=${s#*:}
    dir=$run/$name
    # `--classes all` draws --num samples per class, in class order.
    num=$NUM per_class=()
    if [[ " $sflags " == *" --classes all "* ]]; then
      num=$(( NUM / 10 )) per_class=(--per-class "$num")
    fi
    if [[ ! -f $dir/done ]]; then
      start=$(date +%s)
      # shellcheck disable=SC2086
      $B sample --checkpoint "$run" --num "$num" --batch 125 --gif-frames 0 --seed 0 $sflags --out "$dir"
      echo $(( $(date +%s) - start )) > "$dir/done"
    fi
    $B eval quality --samples "$dir" "${per_class[@]}" | tee "$run/$name.quality"
    q=$run/$name.quality
    fid=$(grep -m1 'classifier FID (samples' "$q" | awk '{print $NF}')
    floor=$(grep -m1 'floor' "$q" | awk '{print $NF}')
    conf=$(grep -m1 'confidence >= 0.9' "$q" | awk '{print $(NF-1)}')
    kl=$(grep -m1 'KL(' "$q" | awk '{print $(NF-1)}')
    black=$(grep -m1 'near-black' "$q" | awk '{print $5}')
    requested=$(grep -m1 'requested class' "$q" | awk '{print "\trequested class " $(NF-1) " %"}' || true)
    printf '%s\t%s\t%s steps\t%s s\tFID %s (floor %s)\tconf>=0.9 %s %%\tKL %s\tnear-black %s %%%s\n' \
      "$row" "$name" "$steps" "$(cat "$dir/done")" "$fid" "$floor" "$conf" "$kl" "$black" "$requested" | tee -a "$OUT/summary.tsv"
  done
done
