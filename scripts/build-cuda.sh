#!/usr/bin/env bash
# Build rllr's release binaries with the `cuda` feature on a machine with no GPU and no CUDA
# toolkit: the toolkit comes from PyPI's NVIDIA wheels, installed into a local prefix.
#
# candle 0.11.1 (through cudarc 0.19, `dynamic-linking`) needs, at build time:
#   - nvcc, the CUDA headers and libdevice: it compiles candle's kernels to PTX and its MoE/GGUF
#     kernels to sm_XX machine code (nvidia-cuda-nvcc, -runtime, -cccl, -crt, nvidia-nvvm);
#   - the shared objects it links against: libcudart, libcublas, libcublasLt, libcurand, libnvrtc
#     (their wheels) and the driver's libcuda, which no wheel carries: a stub with the driver API's
#     symbols is generated from cudarc's own bindings (the real libcuda.so.1 of the GPU machine's
#     driver is what the binaries load at run time).
# The toolkit is pinned to CUDA 13.0, the version the GPU machines' driver (580) supports: PTX from
# a newer nvcc would not load there (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
#
# At run time the binaries need libcudart/libcublas/libcublasLt/libcurand/libnvrtc of CUDA 13 on
# the loader path: PyTorch's cu130 wheels carry them (scripts/gpu-check.sh finds them), or use
# this prefix's lib/ (`RLLR_CUDA_PREFIX/nvidia/cu13/lib`).
#
# Usage: scripts/build-cuda.sh [--check]
#   --check                  `cargo check --features cuda` of core, server, trainer and benches
#                            (what CI runs: compiles every crate and the kernels, links nothing)
#   RLLR_CUDA_PREFIX         where the toolkit goes (default ~/.cache/rllr/cuda-13.0)
#   CUDA_COMPUTE_CAP         target compute capability (default 90: H100/H200)
#   RLLR_CUDA_TARGET_DIR     cargo target dir (default target/cuda, apart from the CPU build's)
#   RLLR_CUDA_OUT            where the stripped binaries go (default target/cuda/dist), with
#                            rllr-cuda-bundle.tar.xz: what scripts/gpu-check.sh runs, to carry
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
mode="${1:-build}"
prefix="${RLLR_CUDA_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/rllr/cuda-13.0}"
python="${PYTHON:-python3}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${RLLR_CUDA_TARGET_DIR:-$repo_root/target/cuda}"
out="${RLLR_CUDA_OUT:-$CARGO_TARGET_DIR/dist}"

# One pinned set: CUDA 13.0 (nvcc 13.0.88), matching the driver of the GPU machines. `compile`
# is what nvcc needs (enough for --check, which links nothing); `link` adds the libraries the
# binaries link against (cuBLAS alone is a 420 MB wheel).
compile_wheels=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)
link_wheels=(
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)
# One pip call per set, each in its own folder (pip --target replaces a top-level folder it
# installs into, so two calls into one prefix would drop the first set's files).
if [[ "$mode" == "--check" ]]; then
    set_name=compile
    wheels=("${compile_wheels[@]}")
else
    set_name=full
    wheels=("${compile_wheels[@]}" "${link_wheels[@]}")
fi
home="$prefix/$set_name"
cuda_home="$home/nvidia/cu13"
lib="$cuda_home/lib"
stamp="$home/.installed"
want="$(printf '%s\n' "${wheels[@]}")"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "build-cuda: installing CUDA 13.0 ($set_name set) from PyPI into $home"
    rm -rf "$home"
    mkdir -p "$home"
    "$python" -m pip install --quiet --no-deps --no-compile --target "$home" "${wheels[@]}"
    echo "$want" > "$stamp"
fi

if [[ "$mode" != "--check" ]]; then
    # Unversioned names for the linker (the wheels ship only the sonames).
    for so in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
        [[ -e "$lib/lib$so" ]] || { echo "build-cuda: $lib/lib$so missing" >&2; exit 1; }
        ln -sf "lib$so" "$lib/lib${so%%.so.*}.so"
    done

    # The driver stub: every cu* entry point cudarc binds, as an empty function, with the
    # driver's soname (libcuda.so.1), so the binaries load the real driver at run time.
    if [[ ! -f "$lib/stubs/libcuda.so" ]]; then
        cudarc_version="$(awk '/^name = "cudarc"$/ {getline; gsub(/"/, "", $3); print $3}' Cargo.lock)"
        cargo fetch --locked >/dev/null
        cudarc_sys="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$cudarc_version" | head -1)/src/driver/sys/mod.rs"
        mkdir -p "$lib/stubs"
        grep -oE 'fn cu[A-Za-z0-9_]+\(' "$cudarc_sys" | sed -E 's/^fn (.*)\($/\1/' | sort -u \
            | awk '{print "void " $1 "(void) {}"}' > "$lib/stubs/libcuda_stub.c"
        n=$(wc -l < "$lib/stubs/libcuda_stub.c")
        [[ "$n" -gt 100 ]] || { echo "build-cuda: found only $n driver symbols in $cudarc_sys" >&2; exit 1; }
        cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/stubs/libcuda.so" "$lib/stubs/libcuda_stub.c"
        echo "build-cuda: driver stub with $n symbols"
    fi
fi

export CUDA_HOME="$cuda_home"
export PATH="$cuda_home/bin:$PATH"
# nvcc from the wheels finds its own include/, nvvm/ and crt/ relative to bin/.
nvcc --version | tail -2

crates=(-p rllr-core -p rllr-server -p rllr-trainer -p rllr-benches)
features=(--features rllr-core/cuda,rllr-server/cuda,rllr-trainer/cuda,rllr-benches/cuda)
start=$(date +%s)
if [[ "$mode" == "--check" ]]; then
    cargo check --release --locked "${features[@]}" "${crates[@]}" --all-targets
    echo "build-cuda: cargo check --features cuda took $(( $(date +%s) - start )) s"
    exit 0
fi

cargo build --release --locked "${features[@]}" "${crates[@]}" --bins
echo "build-cuda: cargo build --features cuda took $(( $(date +%s) - start )) s"

# The transformers parity tests as one executable, run on the GPU by scripts/gpu-check.sh.
# `--profile release`, not `--release` (which is cargo's `bench` profile): the same profile as the
# binaries above, so candle's kernels and every dependency are not compiled a second time.
parity="$(cargo test --profile release --locked -p rllr-tests --features rllr-tests/cuda --test parity \
    --no-run --message-format=json 2>/dev/null \
    | "$python" -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "parity":
        print(m["executable"])')"
[[ -x "$parity" ]] || { echo "build-cuda: the parity test binary did not build" >&2; exit 1; }

mkdir -p "$out"
strip -o "$out/rllr-parity" "$parity"
for bin in rllr-server rllr-train rllr-bench rllr-serve-bench; do
    strip -o "$out/$bin" "$CARGO_TARGET_DIR/release/$bin"
done
# What scripts/gpu-check.sh needs, in one xz archive for the GPU machine (which takes at most
# 64 MiB per run, the working tree included): the CUDA kernels make each binary 55-70 MiB, and one
# archive with a dictionary larger than a binary stores the kernels they share once (~14 MiB).
tar -C "$out" -cf - rllr-bench rllr-serve-bench rllr-parity \
    | xz -T1 --lzma2=preset=6,dict=192MiB -c > "$out/rllr-cuda-bundle.tar.xz"
echo "build-cuda: stripped binaries in $out (CUDA 13.0, sm_$CUDA_COMPUTE_CAP):"
for f in "$out"/rllr-*; do
    printf '  %-40s %6.1f MiB\n' "${f#"$out"/}" "$(du -b "$f" | awk '{print $1/1048576}')"
done
