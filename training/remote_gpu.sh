#!/usr/bin/env bash
# Train the product model on a remote GPU machine that has python3.12, torch (CUDA), torchvision,
# opencv-headless and onnxruntime but no ultralytics, no albumentations and no network. Three steps:
#
#   1. here, with network access (repository root):
#        training/remote_gpu.sh prepare BUILT_DATASET_DIR
#      -> .whl/       cp312 wheels of what the GPU machine lacks (~8 MB; pinned to this venv's versions)
#      -> data/pack/  a size-bounded copy of the dataset (`streetwatch data pack`: PACK_BUDGET_MB, default 30;
#                     PACK_MAX_SIDE, default 512; PACK_SUBSET, default train,val: with train alone,
#                     ultralytics' one validation at the end runs on training images)
#      Both are git-ignored; carry them to the GPU machine with the working tree (64 MiB in all: model
#      folders not needed there can be moved aside for the call).
#
#   2. there, from the repository root, with $OUT set to a folder that comes back (at most 8 files of 16 MB):
#        training/remote_gpu.sh train [--set key=value ...]
#      installs the wheels into .gpu-site/ (pip --no-index --no-deps --target, PYTHONPATH), trains with
#      $CONFIG (default training/configs/product-gpu.yaml) on the packed data and writes $OUT/best.pt,
#      $OUT/run.tar.gz (the run folder: config used, run record, results.csv, plots, augmentation preview)
#      and $OUT/train.log. TRAIN_LIMIT_S stops training that long after it started (SIGINT) and still
#      returns the last epoch's weights: set it below the call's own limit.
#
#   3. here again:
#        training/remote_gpu.sh unpack RESULTS_DIR      # -> runs/train/<run>/ with weights/best.pt
#      then evaluate and export as usual (README, "Training and evaluation").
#
# With a device tool that sends the working tree, step 2 is one call; streetwatch-v3's was (2026-11-26, H100,
# 528 s; the tree slimmed first by moving the model files not needed there out of it):
#   run(command="CONFIG=training/configs/product-v3-gpu.yaml TRAIN_LIMIT_S=555 WORKERS=12 \
#                training/remote_gpu.sh train", carry=[".whl", "data/pack"], timeout_s=600)
# The base weights are the config's; set BASE=... for another .pt or registry model. product-gpu.yaml names
# ../shared/weights/yolo11n-coco.pt, which does not travel: BASE=yolo11n-coco-interim is the same COCO
# YOLO11n as a registry model tracked in git. product-v3-gpu.yaml starts from streetwatch-v2 (tracked too).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
PACK=data/pack
SITE=.gpu-site
CONFIG=${CONFIG:-training/configs/product-gpu.yaml}
BASE=${BASE:-}  # empty: the config's own base

# What the GPU machine lacks, as distributions of this venv (versions pinned from it). Its image already
# holds torch, torchvision, opencv-headless, numpy, scipy, matplotlib, pandas, pyyaml, tqdm, psutil and
# pillow (/work/.library/device/KINDS.md), so only these travel (~8 MB). typing-extensions travels because
# pydantic needs a newer one than some images have. polars does not (40 MB): without it ultralytics'
# plots are off (training/ultra.py) and `unpack` draws results.png here.
WHEEL_DISTS=(
  ultralytics-opencv-headless ultralytics-thop albumentations albucore simsimd stringzilla
  pydantic pydantic-core annotated-types typing-inspection typing-extensions
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
  "$venv_py" -m pipeline.cli data pack "$dataset" --out "$PACK" --max-side "${PACK_MAX_SIDE:-512}" \
    --subset "${PACK_SUBSET:-train,val}" --budget-mb "${PACK_BUDGET_MB:-30}"
  du -sh "$WHEELS" "$PACK"
  echo "carry: .whl data/pack (64 MiB at most in all)"
}

train() {
  : "${OUT:?set OUT to the folder whose files come back}"
  mkdir -p "$SITE" "$OUT"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$PWD/$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -c "import scipy.special" 2>/dev/null; then
    mkdir -p "$SITE/scipy"
    echo '"""Stub: scipy is absent here; albumentations imports scipy.special but our transforms never call it."""' \
      >"$SITE/scipy/__init__.py"
    printf 'def __getattr__(name):\n    raise ImportError(f"scipy.special.{name}: scipy is not installed here")\n' \
      >"$SITE/scipy/special.py"
  fi
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  local data status=0
  data=$(ls "$PACK"/data.yaml)
  # TRAIN_LIMIT_S: a hard stop below the caller's own limit, so that what was trained still comes back.
  timeout --signal=INT --kill-after=30 "${TRAIN_LIMIT_S:-100000}" \
    "$PY" -m pipeline.cli train --config "$CONFIG" --set "data=$data" ${BASE:+--set "base=$BASE"} --set out=runs/train \
    --set workers="${WORKERS:-8}" "$@" 2>&1 | tr '\r' '\n' | grep --line-buffered -v -E '^train: *[0-9]*%|Caching images' \
    | tee "$OUT/train.log" || status=$?
  local run
  run=$(ls -td runs/train/*/ | head -1)
  if [ -f "$run/weights/best.pt" ] && [ "$status" = 0 ]; then
    cp "$run/weights/best.pt" "$OUT/best.pt"
  elif [ -f "$run/weights/last.pt" ]; then  # stopped early: the last epoch's weights, optimizer stripped
    echo "training stopped (status $status): returning the last epoch's weights" | tee -a "$OUT/train.log"
    "$PY" -c "import sys; from ultralytics.utils.torch_utils import strip_optimizer; strip_optimizer(sys.argv[1], sys.argv[2])" \
      "$run/weights/last.pt" "$OUT/best.pt"
  fi
  tar -czf "$OUT/run.tar.gz" --exclude=weights -C "$(dirname "$run")" "$(basename "$run")"
  ls -la "$OUT"
  return "$status"
}

unpack() {
  local results=${1:?usage: remote_gpu.sh unpack RESULTS_DIR}
  mkdir -p runs/train
  local name
  name=$(tar -tzf "$results/run.tar.gz" | awk -F/ 'NR == 1 {print $1}')  # reads all: no SIGPIPE under pipefail
  tar -xzf "$results/run.tar.gz" -C runs/train
  mkdir -p "runs/train/$name/weights"
  cp "$results/best.pt" "runs/train/$name/weights/best.pt"
  # a record that names no dataset manifest (the pack lacked it there): from the data.yaml it names, if here
  "${VENV_PY:-.venv/bin/python}" -c "import sys; from pathlib import Path; from training.train import fill_manifest
fill_manifest(Path(sys.argv[1])) and print('run record: dataset manifest filled in')" "runs/train/$name"
  if [ -f "runs/train/$name/results.csv" ] && [ ! -f "runs/train/$name/results.png" ]; then  # no polars there
    "${VENV_PY:-.venv/bin/python}" -c "import sys; from training import ultra; ultra.setup()
from ultralytics.utils.plotting import plot_results; plot_results(file=sys.argv[1])" "runs/train/$name/results.csv" \
      || echo "note: could not draw results.png" >&2
  fi
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
