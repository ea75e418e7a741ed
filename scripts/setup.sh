#!/usr/bin/env bash
# Set up mmrag on a fresh Debian/Ubuntu machine and run the main job on the embedded defaults:
# system packages, a virtualenv with the pinned torch build, the project, then ingest + query a
# demo corpus (Milvus Lite + LightRAG on disk under ./.mmrag-demo).
#   bash scripts/setup.sh            # set up + demo
#   bash scripts/setup.sh --no-demo  # set up only (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
demo=1
[ "${1:-}" = "--no-demo" ] && demo=0

# 1. System packages: Tesseract (OCR of images and scanned pages), ffmpeg (audio/video decoding),
#    espeak-ng (the tests speak known sentences to check transcript timing), chromium and its
#    chromedriver (the chat page's browser test drives them headless through Selenium), PostgreSQL's
#    server binaries (tests/test_postgres.py starts its own server in a temp dir for the Dagster
#    storage tests; mmrag itself only needs a server when MMRAG_DAGSTER_PG_URL is set).
need=()
command -v tesseract >/dev/null || need+=(tesseract-ocr tesseract-ocr-eng)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || [ -x /usr/lib/chromium/chromedriver ] || need+=(chromium-driver)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "==> apt-get install ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 2. Virtualenv. torch is pinned first so no other package pulls an unpinned (multi-GB) build.
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $PY"
  $PY -m venv .venv
fi
.venv/bin/pip install -q -U pip
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "==> installing torch"
  .venv/bin/pip install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
fi
echo "==> installing mmrag"
.venv/bin/pip install -q -e ".[dev]"

if [ $demo -eq 1 ]; then
  # 3. The main job on embedded defaults: ingest a generated demo corpus, then query it.
  export MMRAG_HOME=${MMRAG_HOME:-$PWD/.mmrag-demo}
  if ! .venv/bin/python -c "import socket; socket.create_connection(('huggingface.co', 443), timeout=3)" 2>/dev/null; then
    echo "==> the model hub is unreachable: CLIP image embedding will be off (text and graph work offline)"
    export HF_HUB_OFFLINE=1
  fi
  .venv/bin/python scripts/make_demo.py demo/corpus
  echo "==> mmrag ingest demo/corpus"
  .venv/bin/mmrag ingest demo/corpus --source demo
  echo "==> mmrag query \"Which ducks feed at the surface of shallow water?\""
  .venv/bin/mmrag query "Which ducks feed at the surface of shallow water?" --top-k 3
  echo "==> done. See the runs: MMRAG_HOME=$MMRAG_HOME .venv/bin/mmrag dev"
fi
