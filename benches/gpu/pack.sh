#!/usr/bin/env bash
# Packs the GPU procedure for a machine that cannot build the project (no Rust toolchain, no
# crate cache, no network): built here (release, --features wgpu), run there by
# benches/gpu/run.sh. The archive, target/gpu-pack.tar.xz (64 MiB at most, checked; 42 MB), holds
#   bin/speed bin/mnist bin/loader   the examples
#   bin/wgpu-tests                   tests/wgpu.rs (DDPM_REQUIRE_WGPU=1: no adapter fails)
#   bin/unet-bench                   the criterion benches (benches/unet.rs)
#   lib/libvulkan.so.1               the Vulkan loader (the GPU machine may lack it), and
#   lib/libGLdispatch.so.0 ...       glvnd's libraries, which NVIDIA's Vulkan driver needs
#   data/mnist/*.gz                  MNIST, for the training run
#   ddpm_torch.py run.sh             PyTorch's side, and the one command to run there
#
#   bash benches/gpu/pack.sh && ls -l target/gpu-pack.tar.xz
set -euo pipefail
cd "$(dirname "$0")/../.."
F=(--release --features wgpu)
DATA="${DDPM_DATA_DIR:-$(cd .. && pwd)/shared/data}"
stage=target/gpu-pack
rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/lib" "$stage/data/mnist"
cargo build "${F[@]}" --example speed --example mnist --example loader
# The test and bench executables, as cargo names them (from its JSON messages).
exe() {
  python3 -c 'import json, sys
name = sys.argv[1]
for line in sys.stdin:
    j = json.loads(line)
    if j.get("reason") == "compiler-artifact" and j.get("executable") and j["target"]["name"] == name:
        print(j["executable"])' "$1"
}
tests=$(cargo test "${F[@]}" --test wgpu --no-run --message-format=json 2>/dev/null | exe wgpu)
bench=$(cargo bench --features wgpu --bench unet --no-run --message-format=json 2>/dev/null | exe unet)
for b in speed mnist loader; do cp "target/release/examples/$b" "$stage/bin/"; done
cp "$tests" "$stage/bin/wgpu-tests"
cp "$bench" "$stage/bin/unet-bench"
strip "$stage"/bin/* 2>/dev/null || true
loader=$(ldconfig -p | awk '/libvulkan\.so\.1 .*x86-64/ {print $NF; exit}')
if [ -z "$loader" ]; then
  echo "no Vulkan loader here: apt-get install libvulkan1 (the CI installs it with lavapipe)" >&2
  exit 1
fi
cp -L "$loader" "$stage/lib/libvulkan.so.1"
# glvnd's dispatch libraries, which the NVIDIA Vulkan driver (libGLX_nvidia) links against and
# a bare CUDA image may lack (run.sh puts them ahead of any installed copy: glvnd's ABI is
# stable).
for l in libGLdispatch.so.0 libGLX.so.0 libEGL.so.1; do
  f=$(ldconfig -p | awk -v l="$l" '$1 == l && /x86-64/ {print $NF; exit}')
  [ -n "$f" ] && cp -L "$f" "$stage/lib/$l"
done
cp "$DATA"/mnist/*.gz "$stage/data/mnist/"
cp benches/pytorch/ddpm_torch.py benches/gpu/run.sh "$stage/"
git describe --always --dirty >"$stage/COMMIT" 2>/dev/null || echo unknown >"$stage/COMMIT"
# One xz stream with a dictionary larger than the five binaries together: they share most of
# their code (burn, wgpu), so this packs them in 42 MB where xz's default (8 MiB) took 61 MiB;
# about 4 minutes on one core here, seconds to unpack (`tar -xJf`).
tar -C target -cf - gpu-pack | xz -T1 --lzma2=preset=9,dict=256MiB >target/gpu-pack.tar.xz
size=$(stat -c %s target/gpu-pack.tar.xz)
echo "target/gpu-pack.tar.xz: $((size / 1048576)) MiB ($(du -sh "$stage" | cut -f1) unpacked)"
if [ "$size" -gt $((64 * 1048576)) ]; then echo "over 64 MiB: it cannot travel" >&2; exit 1; fi
