#!/usr/bin/env bash
# GPU checks, one short script for a CUDA machine (under 8 minutes on one modern GPU). From the repository root,
# in an environment where `pip install -e ".[crf,test,fast]"` was run:
#
#     bash benchmarks/gpu_check.sh
#
# 1. MaskCut on CUDA equals CutLER's computation round by round (W, Fiedler vector, masks; tests/cuts).
# 2. The CUDA-only training paths of the test suite (AMP, SyncBN selection, max_mem logging).
# 3. Extraction of 32 COCO images with --device cuda: per-stage seconds per image, peak GPU memory; then the
#    same with cut workers on the CPU cores (wall seconds per image of the streaming pipeline); then the
#    dataset-time table (ImageNet on 1-8 nodes) with the model stage's seconds per image measured on this GPU.
# 4. 50 AMP training iterations of the R50-FPN at 800 px, batch 8 (iterations/s), next to the CPU rows.
# 5. A 2-process NCCL DDP run of the tiny recipe, when two GPUs exist.
# Tables 3, 3c and 4 are appended to benchmarks/RESULTS.md with date, machine and command.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

python - <<'PY'
import torch
assert torch.cuda.is_available(), "gpu_check.sh needs a CUDA GPU"
print("torch", torch.__version__, "CUDA", torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
PY

echo "== 1. MaskCut on CUDA vs CutLER's algorithm"
python -m pytest -q tests/cuts/test_cuts_maskcut_cutler.py -k cuda

echo "== 2. CUDA paths of the engine tests"
python -m pytest -q tests/engine -k "cuda or sync or amp" -m "not slow"

echo "== 3. extraction on cuda, 32 images"
python benchmarks/extract_speed.py --images 32 --backbones dino_vitb8 --device cuda
echo "== 3b. the same with the cut stage on CPU workers beside the GPU (streaming, issue 12)"
python benchmarks/extract_speed.py --images 32 --backbones dino_vitb8 --device cuda --cut-workers "$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))"

echo "== 3c. dataset time: ImageNet hours from this GPU's model stage and this CPU's cut stage"
python benchmarks/dataset_time.py --photos 16 --merge-records 5000

echo "== 4. training speed (AMP on the GPU)"
python benchmarks/train_speed.py --iters 50 --loader-samples 16

if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  echo "== 5. 2-process NCCL DDP, tiny recipe"
  tmp=$(mktemp -d)
  python - "$tmp" <<'PY'
import sys
from pathlib import Path
from cuts3d.synthetic.detection import write_detection_set
write_detection_set(Path(sys.argv[1]) / "data", range(8))
PY
  torchrun --standalone --nproc_per_node 2 -m cuts3d train --config tiny_cpu --data "$tmp/data/pseudo.json" \
    --images "$tmp/data/images" --output "$tmp/run" device=cuda max_iter=20 batch_size=4 precise_bn_iters=5
  test -s "$tmp/run/model_final.pth" && echo "DDP (nccl) run wrote model_final.pth"
  rm -rf "$tmp"
else
  echo "== 5. skipped: one GPU"
fi
echo "gpu_check.sh: done"
