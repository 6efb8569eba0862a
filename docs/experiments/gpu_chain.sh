#!/usr/bin/env bash
# The CUDA run behind docs/results-gpu.md, on a machine with an NVIDIA GPU:
#   1. the whole chain under `dvc repro` with train.device: auto (-> CUDA, AMP on) and bench.device: cuda
#      (FP32 / torch.compile / FP16 timed with CUDA events; the CPU-only INT8 artifacts listed as skipped);
#   2. the test files whose CUDA branches only run on a GPU (test_bench.py, test_train.py);
#   3. the teacher stage once more under torchrun, so DDP joins with the nccl backend (one rank per GPU).
# Usage, from the repository root, with the pinned requirements installed:
#   OUT=/tmp/gpu-run bash docs/experiments/gpu_chain.sh
# QUICK=1 shrinks epochs and sample counts (a dry run of this script); BENCH_DEVICE=cpu keeps timings on the CPU.
set -u
OUT=${OUT:-/tmp/gpu-run}
QUICK=${QUICK:-0}
BENCH_DEVICE=${BENCH_DEVICE:-cuda}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
: > "$OUT/steps.txt"

step() {  # step NAME CMD...: run, log to $OUT/NAME.log, record exit status and seconds
    local name=$1 start rc
    shift
    start=$(date +%s)
    "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $(( $(date +%s) - start )) s" | tee -a "$OUT/steps.txt"
    tail -n 4 "$OUT/$name.log"
    return 0
}

step environment bash -c "nvidia-smi; $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'; nproc"

# this run's settings, written into params.yaml (the single source of configuration)
$PY - "$QUICK" "$BENCH_DEVICE" <<'EOF'
import sys, yaml
quick, device = sys.argv[1] == "1", sys.argv[2]
params = yaml.safe_load(open("params.yaml"))
params["bench"]["device"] = device
if quick:
    params["data"]["max_samples"] = 300
    params["teacher"]["epochs"] = params["student"]["epochs"] = 1
    params["prune"]["finetune_epochs"] = params["quantize"]["qat_epochs"] = 1
    params["quantize"]["calibration_samples"] = 64
    params["bench"].update(batch_sizes=[1, 8], warmup=1, repeats=3, min_time_s=0.0)
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
EOF

[ -d .git ] || dvc config --local core.no_scm true  # a copy without git history
step chain dvc repro
tar czf "$OUT/chain.tar.gz" REPORT.md metrics plots dvclive dvc.lock params.yaml 2>/dev/null

step cuda_tests $PY -m pytest -q -p no:cacheprovider tests/test_bench.py tests/test_train.py

# DDP with nccl: torchrun with one rank per GPU (read_training_params sees torchrun's environment)
NGPU=$($PY -c 'import torch; print(max(torch.cuda.device_count(), 1))')
step teacher_nccl $PY -m torch.distributed.run --nproc_per_node="$NGPU" stages/teacher.py --data data/prepared \
    --out "$OUT/teacher_ddp.pt" --metrics "$OUT/teacher_ddp.json" --plots "$OUT/teacher_ddp_plots" \
    --live "$OUT/teacher_ddp_live"
rm -rf "$OUT/teacher_ddp.pt" "$OUT/teacher_ddp_plots" "$OUT/teacher_ddp_live"
tar czf "$OUT/logs.tar.gz" -C "$OUT" $(cd "$OUT" && ls *.log *.json 2>/dev/null) && rm -f "$OUT"/*.log
cat "$OUT/steps.txt"
