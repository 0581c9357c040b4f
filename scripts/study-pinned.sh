#!/usr/bin/env bash
# Runs (or resumes) a study with the binary of one pinned commit, so that its runs keep one
# code version across sessions and machines while main moves on: a study reuses only runs
# made by the same code (crates/lab/build.rs hashes every crate's sources), so a long grid
# run with the newest binary would retrain after every change.
#
#   scripts/study-pinned.sh COMMIT GRID OUT [arlrr study options...]
#
# COMMIT is checked out as a git worktree under $ARLRR_PIN_DIR (default
# ~/.cache/arlrr/pinned/COMMIT) and built there once (~10 min on 2 cores); GRID is read from
# that checkout (the grid and its base config as they were at COMMIT); OUT is taken from the
# current directory. Commit OUT's finished runs (each run folder's summary.json and stamps;
# docs/study/*/.gitignore keeps the rest out) and a fresh clone resumes where this one stopped.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,13p "$0"; exit 2; }
commit=$1 grid=$2 out=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
full=$(git -C "$root" rev-parse --verify "$commit^{commit}")
pin=${ARLRR_PIN_DIR:-$HOME/.cache/arlrr/pinned}/${full:0:12}
if [ ! -x "$pin/target/release/arlrr" ]; then
  if [ ! -d "$pin" ]; then
    git -C "$root" worktree prune
    git -C "$root" worktree add --detach "$pin" "$full"
  fi
  (cd "$pin" && cargo build --release -p arlrr)
fi
out=$(realpath -m "$out")
cd "$pin"
exec ./target/release/arlrr study --grid "$grid" --out "$out" "$@"
