#!/usr/bin/env bash
# Installs the RL engines' own code from PyPI into virtual environments outside the
# repository, for scripts/engines/check_*.py (see docs/service.md,
# "Engines"), and Hugging Face's own readers for the files a run writes (`hf`: transformers'
# apply_chat_template, peft, tensorboard's event reader; docs/training.md, "Files a user's
# tools read"). CPU only; torch comes from PyPI.
# Usage: scripts/engines/setup.sh [trl|verl|openrlhf|hf|all]
set -euo pipefail
ROOT="${ARLRR_ENGINES_DIR:-$HOME/.cache/arlrr/engines}"
PY="${PYTHON:-python3}"
want="${1:-all}"

make_venv() {
    local name="$1"; shift
    local dir="$ROOT/$name"
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import sys; sys.exit(0)" \
        && [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$*" ]; then
        echo "$name: $dir (already installed: $*)"
        return
    fi
    mkdir -p "$ROOT"
    "$PY" -m venv "$dir"
    "$dir/bin/pip" install --quiet --upgrade pip
    "$dir/bin/pip" install --quiet "$@"
    echo "$*" > "$dir/.installed"
    echo "$name: $dir ($*)"
}

# The versions the docs' results were measured with.
case "$want" in
    trl|all) make_venv trl "trl==1.16.0" "accelerate==1.16.0" "torch==2.15.0" "gguf==0.19.0" ;;&
    verl|all) make_venv verl "verl[verl-core]==0.9.1" "torch==2.15.0" ;;&
    # openrlhf pins flash-attn (built against CUDA) and deepspeed, which do not install on a
    # CPU machine; its reward path (SingleTurnAgentExecutor) needs only aiohttp
    openrlhf|all) make_venv openrlhf "aiohttp==3.14.5" \
        && "$ROOT/openrlhf/bin/pip" install --quiet --no-deps "openrlhf==0.11.2" ;;&
    hf|all) make_venv hf "transformers==5.25.0" "peft==0.22.0" "tensorboard==2.21.0" \
        "torch==2.15.0" "safetensors==0.8.0" "gguf==0.19.0" ;;&
    trl|verl|openrlhf|hf|all) ;;
    *) echo "usage: $0 [trl|verl|openrlhf|hf|all]" >&2; exit 2 ;;
esac
