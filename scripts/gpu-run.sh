#!/usr/bin/env bash
# The real-GPU run of the speed issue, in two halves.
#
#   scripts/gpu-run.sh prepare   on the development machine: release build,
#                                the binary, the Vulkan loader .deb and the
#                                Liger-Kernel wheel into .gpu-run/ (ignored
#                                by git; the device tool carries it).
#   scripts/gpu-run.sh run       on the GPU machine (no registry access):
#                                unpack the loader, then in one go: adapter
#                                info, tune, our bench (JSON; then the
#                                half-precision bar's larger shapes), the PyTorch
#                                eager / torch.compile / Liger-Kernel peers on
#                                the same shapes (scripts/peers.py), and a
#                                table. Results go to $OUT (or .gpu-run/out).
#
# `run` also works on the development machine (lavapipe; the peers are
# skipped without torch), which is how the script is tested before a GPU
# is spent on it. QUICK=1 uses N / 8.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.gpu-run

prepare() {
    cargo build --release --bin logit-adjust
    mkdir -p "$RUN/bin" "$RUN/deb" "$RUN/whl"
    cp target/release/logit-adjust "$RUN/bin/"
    (cd "$RUN/deb" && { ls libvulkan1_*.deb >/dev/null 2>&1 || apt-get download libvulkan1; })
    ls "$RUN"/whl/liger_kernel-*.whl >/dev/null 2>&1 \
        || pip download --no-deps -d "$RUN/whl" liger-kernel
    du -sh "$RUN"
}

run() {
    local out="${OUT:-$RUN/out}"
    mkdir -p "$out"
    # The Vulkan loader, if the machine has none.
    if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1; then
        dpkg -x "$RUN"/deb/libvulkan1_*.deb "$RUN/vk"
        export LD_LIBRARY_PATH="$PWD/$RUN/vk/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
    fi
    local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then
        export VK_DRIVER_FILES="$icd"
    fi
    export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
    export LOGIT_ADJUST_TUNING_DIR="$out/tuning"
    local bin="$RUN/bin/logit-adjust"
    local quick=()
    [ "${QUICK:-0}" = 1 ] && quick=(--quick)

    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia-smi.csv"
    "$bin" info --json > "$out/info.json"
    "$bin" info
    "$bin" tune "${quick[@]}" > "$out/tuning.txt"
    "$bin" bench --json "${quick[@]}" > "$out/bench.json"
    # The half-precision bar's shapes (f16 at most 0.6x the f32 time at
    # 16384 x 8142 and above), as a table with its f16 / f32 summary.
    local large=16384x8142,8192x32768
    [ "${QUICK:-0}" = 1 ] && large=2048x8142
    "$bin" bench --shapes "$large" 2>&1 | tee "$out/bench-large.txt"

    if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
        if ! python3 -c "import liger_kernel" 2>/dev/null; then
            pip install --no-index --no-deps --target "$RUN/py" "$RUN"/whl/liger_kernel-*.whl >/dev/null
            export PYTHONPATH="$PWD/$RUN/py:${PYTHONPATH:-}"
        fi
        python3 scripts/peers.py "${quick[@]}" > "$out/peers.json"
    else
        echo '{"peers": "skipped: no torch with CUDA here"}' > "$out/peers.json"
    fi
    python3 scripts/peers.py --table "$out/bench.json" "$out/peers.json" | tee "$out/table.txt"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
