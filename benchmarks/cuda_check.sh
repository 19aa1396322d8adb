#!/usr/bin/env bash
# The CUDA path in one go, on a machine with a GPU: the CUDA tests, then the speed figures, with the GPU named.
#
#   bash benchmarks/cuda_check.sh [DATA_DIR]        # DATA_DIR holds MNIST/raw (default: $PPL_VAE_DATA)
#
# Needs ppl_vae installed (pip install -e ".[dev]") and a CUDA build of torch. Prints, in order:
#   1. the GPU, the driver and the torch/CUDA versions;
#   2. python -m pytest -m cuda (tests/test_cuda.py and the other cuda-marked tests);
#   3. benchmarks/bench_fit_vs_torch.py on the GPU: ppl_vae's fit against the hand-written loop at batch
#      16, 100, 128 and 1024 (trace and jit_trace), the s/epoch column being an epoch's wall time on 60,000 points;
#   4. one epoch of configs/vae_mnist.yaml on the GPU, then `ppl-vae evaluate` of the full test set at K = 5000
#      (Burda et al.'s estimate of log p(x)), timed;
#   5. benchmarks/bench_ddp.py with one process per GPU (nccl) when there are two GPUs or more.
# Everything is also written under ${CUDA_CHECK_OUT:-cuda_check_out}/.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${1:-${PPL_VAE_DATA:-}}"
OUT="${CUDA_CHECK_OUT:-cuda_check_out}"
mkdir -p "$OUT"
status=0

echo "== 1. hardware"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no GPU: nvidia-smi failed"; exit 2; }
python - <<'PY' || exit 2
import torch, pyro
assert torch.cuda.is_available(), "torch does not see a GPU (a CPU build of torch?)"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), pyro {pyro.__version__}, GPU 0: {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s)")
PY

echo "== 2. CUDA tests"
PPL_VAE_DATA="$DATA_DIR" python -m pytest -m cuda -q -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml" || status=1

echo "== 3. fit against the hand-written loop, on the GPU"
python benchmarks/bench_fit_vs_torch.py --data-dir "$DATA_DIR" --device cuda --no-cpu --batch-size 16 100 128 1024 \
    --estimator trace jit_trace --epochs 3 --out "$OUT/fit_vs_torch_cuda.json" || status=1

echo "== 4. one training epoch, then the test set's log p(x) at K = 5000"
rm -rf "$OUT/vae_mnist_1epoch"
ppl-vae fit configs/vae_mnist.yaml --data-dir "$DATA_DIR" --out-dir "$OUT" --name vae_mnist_1epoch \
    --set train.epochs=1 --set train.device=cuda --set train.progress=false --no-figures || status=1
start=$(date +%s.%N)
ppl-vae evaluate "$OUT/vae_mnist_1epoch" --num-samples 5000 --device cuda --data-dir "$DATA_DIR" || status=1
end=$(date +%s.%N)
python -c "print(f'evaluate, 10,000 test images at K = 5000: {float($end) - float($start):.1f} s wall (process start and data loading included)')"

if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    echo "== 5. data-parallel scaling, one process per GPU (nccl)"
    python benchmarks/bench_ddp.py --device cuda --procs 1 2 --data-dir "$DATA_DIR" --out "$OUT/ddp_cuda.json" || status=1
else
    echo "== 5. skipped: data-parallel scaling needs two GPUs or more"
fi
echo "cuda_check: $([ $status -eq 0 ] && echo 'every step passed' || echo 'a step FAILED (see above)')"
exit $status
