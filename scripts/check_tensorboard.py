#!/usr/bin/env python3
"""Checks a run's TensorBoard scalars against its metrics.jsonl with TensorBoard's own reader.

Usage: check_tensorboard.py RUN_DIR

Reads RUN_DIR/tensorboard/ with tensorboard's EventAccumulator (every scalar kept) and
compares it with RUN_DIR/metrics.jsonl, flattened as the trainer flattens it
(crates/arl/src/tensorboard.rs, `scalars`): each numeric leaf of a line (booleans as 0 or 1)
tagged with its path of keys joined by "/", array elements by their index; strings, nulls and
the top-level `step` (the event's step) left out. Each tag must hold exactly one scalar per
line that has the leaf, at the line's step, equal to the leaf as a 32-bit float, and no other
tag may appear. Prints a summary; exits 1 on any difference.

Needs the `tensorboard` package (scripts/engines/setup.sh hf installs it with the rest of
the hf environment).
"""

import json
import math
import struct
import sys
from pathlib import Path

from tensorboard.backend.event_processing import event_accumulator


def leaves(path, value, out):
    if isinstance(value, bool):
        out[path] = 1.0 if value else 0.0
    elif isinstance(value, (int, float)):
        out[path] = float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            leaves(f"{path}/{k}", v, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            leaves(f"{path}/{i}", v, out)


def scalars(line):
    out = {}
    for k, v in line.items():
        if k != "step":
            leaves(k, v, out)
    return out


def f32(x):
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    run = Path(sys.argv[1])
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l]
    want = {}  # tag -> [(step, value)]
    for line in lines:
        for tag, x in scalars(line).items():
            want.setdefault(tag, []).append((line["step"], f32(x)))

    folder = run / "tensorboard"
    files = sorted(p.name for p in folder.glob("*tfevents*"))
    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0}
    )
    acc.Reload()
    got = {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()[event_accumulator.SCALARS]
    }

    problems = []
    for tag in sorted(set(want) - set(got)):
        problems.append(f"missing tag {tag} ({len(want[tag])} values in metrics.jsonl)")
    for tag in sorted(set(got) - set(want)):
        problems.append(f"tag {tag} is not in metrics.jsonl")
    for tag in sorted(set(want) & set(got)):
        w, g = want[tag], got[tag]
        if len(w) != len(g):
            problems.append(f"{tag}: {len(g)} scalars, metrics.jsonl has {len(w)}")
        for (ws, wx), (gs, gx) in zip(w, g):
            if ws != gs or not (wx == gx or (math.isnan(wx) and math.isnan(gx))):
                problems.append(f"{tag}: step {gs} = {gx!r}, metrics.jsonl step {ws} = {wx!r}")
                break

    n = sum(len(v) for v in got.values())
    steps = sorted({s for v in got.values() for s, _ in v})
    print(f"run           {run}")
    print(f"event files   {', '.join(files) or 'none'}")
    print(f"metrics.jsonl {len(lines)} lines, steps {[l['step'] for l in lines]}")
    print(f"tensorboard   {len(got)} tags, {n} scalars, steps {steps}")
    if problems:
        for p in problems[:50]:
            print(f"MISMATCH {p}")
        print(f"{len(problems)} differences")
        return 1
    print(f"every scalar equals metrics.jsonl ({sum(len(v) for v in want.values())} values)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
