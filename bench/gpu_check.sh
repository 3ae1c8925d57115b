#!/usr/bin/env bash
# Every CUDA check and GPU measurement of the project, as one run on a machine with a GPU (a lent device has
# minutes, not hours; this takes about 9): the CUDA tests, bench_speed's GPU rows, and the main job, inference
# and train_sort on the GPU. Run from the repository root:
#
#     bash bench/gpu_check.sh OUT_DIR [SECONDS]
#
# Steps run in order of importance, each cut off at its own limit and at the SECONDS budget (default 560) for
# the whole script, so that a slow step costs the ones after it, never the results before it. Writes into
# OUT_DIR: log.txt (everything printed), bench_gpu.md (bench_speed's table) and runs.tar.gz (the runs' logs,
# results and curves). Python is $PYTHON (default python3).
set -u
if (($# < 1 || $# > 2)) || ! [[ ${2:-560} =~ ^[0-9]+$ ]]; then
    echo "usage: bash bench/gpu_check.sh OUT_DIR [SECONDS]  (SECONDS: a whole number, default 560)" >&2
    exit 2
fi
out=$1
budget=${2:-560}
py=${PYTHON:-python3}
start=$(date +%s)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$out/log.txt") 2>&1

# step CAP NAME COMMAND...: run COMMAND for at most CAP seconds and what is left of the budget
step() {
    local cap=$1 name=$2 left
    shift 2
    left=$((budget - ($(date +%s) - start)))
    if ((left < 20)); then
        echo "=== $(date +%T) SKIPPED $name: ${left} s of the budget left"
        return
    fi
    ((cap > left)) && cap=$left
    echo "=== $(date +%T) $name (at most ${cap} s)"
    local t0=$(date +%s)
    timeout "$cap" "$@"
    echo "=== $(date +%T) $name: exit $?, $(($(date +%s) - t0)) s"
}

echo "=== $(date +%T) environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
nproc

# the demo corpus in the background (the CUDA tests make their own tiny one)
"$py" -m data.synth --out corpora/demo --workers "$(($(nproc) > 4 ? $(nproc) - 4 : 1))" >"$out/synth.log" 2>&1 &
synth=$!

step 200 "CUDA tests" "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
wait "$synth"
echo "=== demo corpus: $(tail -1 "$out/synth.log")"
step 330 "bench_speed GPU rows" "$py" -m bench.bench_speed --cuda-only --passes 1 --gpu-extract-files 600 \
    --gpu-rounds 5 --gpu-workers 8 14 >"$out/bench_gpu.md"
cat "$out/bench_gpu.md"
step 150 "python train.py (the main job, defaults)" "$py" train.py --name gpu-default
step 60 "python inference.py on it" "$py" inference.py --checkpoint exp/gpu-default
step 100 "train_sort.py from it (1 epoch)" "$py" train_sort.py --from exp/gpu-default --keep 5 95 --epochs 1
step 150 "python train.py --compile off" "$py" train.py --name gpu-eager --compile off
tar czf "$out/runs.tar.gz" --exclude='*.pt' --exclude='embeddings' --exclude='scores' exp/gpu-*
echo "=== $(date +%T) done, $(($(date +%s) - start)) s"
