#!/usr/bin/env bash
# Installs the RL engines' own code from PyPI into virtual environments outside the
# repository, for scripts/engines/check_*.py (see docs/service.md, "Checked against the
# engines"). CPU only; torch comes from PyPI. Usage: scripts/engines/setup.sh [trl|verl|all]
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
    trl|all) make_venv trl "trl==1.16.0" "accelerate==1.16.0" "torch==2.15.0" ;;&
    verl|all) make_venv verl "verl[verl-core]==0.9.1" "torch==2.15.0" ;;
    trl) ;;
    *) echo "usage: $0 [trl|verl|all]" >&2; exit 2 ;;
esac
