#!/usr/bin/env bash
# The MedGemma-shaped bench of issue 23 on one GPU, bfloat16 then float32, in one prepared run:
# seconds per answer token, seconds per explained target and peak CUDA memory at 1, 8 and 85 images
# (≈ 300, 2,100 and 22,100 tokens), then one-image items through Explainer.explain_batch at batch
# 1, 4, 8 and 16. Random weights of MedGemma 1.5 4B's shapes, built on the GPU: nothing downloads.
#
#   bench/medgemma_gpu.sh [OUT]        # JSON and logs into OUT (default: $OUT, else docs/)
#
# An image count whose relevance the explainer's own estimate says cannot fit in the card's memory
# is reported "not run" with the estimate (85 images: ≈ 106 GiB in bfloat16, so an 80 GB H100 does
# not run it and an H200 tries). Each dtype is cut off after LIMIT seconds (default 240).
set -uo pipefail
out=${1:-${OUT:-docs}}
python=${PYTHON:-python}
limit=${LIMIT:-240}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/medgemma_gpu_device.txt"
for dtype in bfloat16 float32; do
    timeout "$limit" "$python" bench/batch_throughput.py --medgemma-shapes --device cuda --dtype "$dtype" \
        --images 1,8,85 --new-tokens 16 --targets 8 --medgemma-batch-sizes 1 4 8 16 \
        --json "$out/batch_throughput_medgemma_cuda_$dtype.json" 2>&1 | tee "$out/medgemma_cuda_$dtype.log"
    echo "$dtype: exit ${PIPESTATUS[0]}" | tee -a "$out/medgemma_cuda_$dtype.log"
done
