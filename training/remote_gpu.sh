#!/usr/bin/env bash
# Train the product model on a remote GPU machine that has python3.12, torch (CUDA), torchvision,
# opencv-headless and onnxruntime but no ultralytics, no albumentations and no network. Three steps:
#
#   1. here, with network access (repository root):
#        training/remote_gpu.sh prepare BUILT_DATASET_DIR
#      -> .whl/       cp312 wheels of what the GPU machine lacks (~26 MB; pinned to this venv's versions)
#      -> data/pack/  a size-bounded copy of the dataset (`streetwatch data pack`, PACK_BUDGET_MB, default 30)
#      Both are git-ignored; carry them to the GPU machine with the working tree (64 MiB in all).
#
#   2. there, from the repository root, with $OUT set to a folder that comes back (at most 8 files of 16 MB):
#        training/remote_gpu.sh train [--set key=value ...]
#      installs the wheels into .gpu-site/ (pip --no-index --no-deps --target, PYTHONPATH), trains with
#      training/configs/product-gpu.yaml on the packed data and writes $OUT/best.pt, $OUT/run.tar.gz
#      (the run folder: config used, run record, results.csv, plots, augmentation preview) and $OUT/train.log.
#
#   3. here again:
#        training/remote_gpu.sh unpack RESULTS_DIR      # -> runs/train/<run>/ with weights/best.pt
#      then evaluate and export as usual (README, "Training and evaluation").
#
# With this session's device tool, step 2 is one call:
#   run(command="training/remote_gpu.sh train", carry=[".whl", "data/pack"], timeout_s=600)
# The base weights default to the registry's yolo11n-coco-interim model.pt (the COCO YOLO11n, tracked in
# git, so nothing extra to carry); set BASE=... to use another .pt or registry model.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
WHEELS=.whl
PACK=data/pack
SITE=.gpu-site
CONFIG=${CONFIG:-training/configs/product-gpu.yaml}
BASE=${BASE:-yolo11n-coco-interim}

# What the GPU machine lacks, as distributions of this venv (versions pinned from it). scipy is left out on
# purpose (35 MB): albumentations imports scipy.special at import time but none of our transforms uses it,
# so `train` puts a stub in its place when the machine has no scipy.
WHEEL_DISTS=(
  ultralytics-opencv-headless ultralytics-thop albumentations albucore simsimd stringzilla
  matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil
  pydantic pydantic-core annotated-types typing-inspection pyyaml tqdm psutil
)

prepare() {
  local dataset=${1:?usage: remote_gpu.sh prepare BUILT_DATASET_DIR}
  local venv_py=${VENV_PY:-.venv/bin/python}
  mkdir -p "$WHEELS"
  local pins=()
  for dist in "${WHEEL_DISTS[@]}"; do
    pins+=("$dist==$("$venv_py" -c "import importlib.metadata as m; print(m.version('$dist'))")")
  done
  "$venv_py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" "${pins[@]}"
  rm -rf "$PACK"
  "$venv_py" -m pipeline.cli data pack "$dataset" --out "$PACK" --max-side 640 --budget-mb "${PACK_BUDGET_MB:-30}"
  du -sh "$WHEELS" "$PACK"
  echo "carry: .whl data/pack (64 MiB at most in all)"
}

train() {
  : "${OUT:?set OUT to the folder whose files come back}"
  mkdir -p "$SITE" "$OUT"
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$PWD/$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -c "import scipy.special" 2>/dev/null; then
    mkdir -p "$SITE/scipy"
    echo '"""Stub: scipy is absent here; albumentations imports scipy.special but our transforms never call it."""' \
      >"$SITE/scipy/__init__.py"
    printf 'def __getattr__(name):\n    raise ImportError(f"scipy.special.{name}: scipy is not installed here")\n' \
      >"$SITE/scipy/special.py"
  fi
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  local data
  data=$(ls "$PACK"/data.yaml)
  "$PY" -m pipeline.cli train --config "$CONFIG" --set "data=$data" --set "base=$BASE" --set out=runs/train \
    --set workers="${WORKERS:-8}" "$@" 2>&1 | tr '\r' '\n' | grep -v '^train: *[0-9]*%' | tee "$OUT/train.log"
  local run
  run=$(ls -td runs/train/*/ | head -1)
  cp "$run/weights/best.pt" "$OUT/best.pt"
  tar -czf "$OUT/run.tar.gz" --exclude=weights -C "$(dirname "$run")" "$(basename "$run")"
  ls -la "$OUT"
}

unpack() {
  local results=${1:?usage: remote_gpu.sh unpack RESULTS_DIR}
  mkdir -p runs/train
  local name
  name=$(tar -tzf "$results/run.tar.gz" | head -1 | cut -d/ -f1)
  tar -xzf "$results/run.tar.gz" -C runs/train
  mkdir -p "runs/train/$name/weights"
  cp "$results/best.pt" "runs/train/$name/weights/best.pt"
  echo "runs/train/$name/weights/best.pt"
}

cmd=${1:-}
shift || true
case "$cmd" in
  prepare) prepare "$@" ;;
  train) train "$@" ;;
  unpack) unpack "$@" ;;
  *) sed -n '2,27p' "$0"; exit 2 ;;
esac
