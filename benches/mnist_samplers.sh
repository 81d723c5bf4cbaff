#!/usr/bin/env bash
# The MNIST sampler table of docs/results.md ("Samplers against the exact ODE", "On MNIST"):
# one checkpoint, NUM (1000) samples per sampler, seed 0, each scored by the project's
# classifier (`eval quality`). Wall times go to $OUT/times.txt; run it on an idle machine.
#
#   bash benches/mnist_samplers.sh RUN_DIR [OUT]     # OUT defaults to RUN_DIR/samplers
#
# DDPM-1000 comes last: it costs as much as all the others together ~3x. A folder holding
# `done` is not redrawn, so an interrupted table resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
CK=${1:?usage: benches/mnist_samplers.sh RUN_DIR [OUT]}
E=${2:-$CK/samplers}
NUM=${NUM:-1000}
export DDPM_DATA_DIR=${DDPM_DATA_DIR:-../shared/data}
cargo build --release --quiet --example mnist
B=target/release/examples/mnist
mkdir -p "$E"
run() { # name, sampler args...
  local name=$1; shift
  if [[ ! -f $E/$name/done ]]; then
    /usr/bin/time -f "$name wall %e s" -a -o "$E/times.txt" \
      $B sample --checkpoint "$CK" --num "$NUM" --batch 125 --gif-frames 0 --seed 0 "$@" \
      --out "$E/$name" > "$E/$name.log" 2>&1
    touch "$E/$name/done"
  fi
  $B eval quality --samples "$E/$name" > "$E/$name.quality" 2>&1
  echo "== $name"; tail -8 "$E/$name.quality"
}
for s in "ddim 10" "ddim 20" "ddim 50" "ddim 100" "dpm++2m 10" "dpm++2m 20" "dpm++2m 50" \
         "heun 6" "heun 10" "dpm++2m-sde 20" "ddpm 1000"; do
  set -- $s
  run "$1-$2" --sampler "$1" --steps "$2"
done
