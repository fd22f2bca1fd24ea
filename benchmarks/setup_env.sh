#!/usr/bin/env bash
# The benchmark environment: Ultralytics and PyTorch for benchmarks/ultra.py (the YOLOv8n-seg export, the demo
# network's stand-in export, and Ultralytics' predict). Never a dependency of the agent; kept apart in
# .venv-bench (or the path given as $1). benchmarks/run.py finds it there, or via --bench-python / SEG_BENCH_PYTHON.
#
#   bash benchmarks/setup_env.sh [VENV_DIR]
#
# torch is installed first, on its own and CPU-only: Ultralytics' requirements would otherwise pull the default
# (CUDA) build, several GB. TORCH_VERSION and TORCH_INDEX may be overridden (TORCH_INDEX='' uses pip's
# configured index, e.g. a local wheel directory).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-bench}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"

python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install --upgrade pip >/dev/null
if [ -n "$TORCH_INDEX" ]; then
    "$PIP" install "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple
else
    "$PIP" install "torch==$TORCH_VERSION"
fi
# Keep that torch: a constraint stops pip from "upgrading" it to whatever a newer torchvision wants.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"
"$PIP" install -c "$CONSTRAINTS" ultralytics onnx onnxruntime onnxslim
"$VENV/bin/python" - <<'PY'
import torch, ultralytics
print(f"benchmark environment ready: torch {torch.__version__}, ultralytics {ultralytics.__version__}")
try:
    import torchvision  # noqa: F401
    torchvision.ops.nms(torch.zeros((1, 4)), torch.ones(1), 0.5)
except Exception as exc:  # a torchvision built for another torch (CUDA): benchmarks/ultra.py stands in for it
    print(f"note: torchvision is unusable here ({type(exc).__name__}); benchmarks/ultra.py uses Ultralytics' TorchNMS")
PY
