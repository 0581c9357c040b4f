#!/usr/bin/env python3
"""Independent HealthBench scoring, written after simple-evals' healthbench_eval.py
(calculate_score + per-tag scores + clipped mean), standard library only.

usage: healthbench_reference.py DATA.jsonl GRADES.jsonl
  -> JSON {overall, n, n_failed, axes: {name: score}, themes: {name: score}}
Verdicts may be true/false, a number in [0,1] (graded), or null (the judge failed): a response
with any null verdict is left out of every figure and counted in n_failed, as `arlrr score`
does. Theme scores are the clipped mean of the overall scores of the responses to examples
tagged `theme:<name>` (simple-evals' example-tag scores).
Used by the test suite to cross-check `arlrr score`.
"""
import json
import sys
from collections import defaultdict


def calculate_score(rubric_items, met):
    total_possible = sum(r["points"] for r in rubric_items if r["points"] > 0)
    if total_possible == 0:
        return None
    achieved = sum(r["points"] * float(m) for r, m in zip(rubric_items, met))
    return achieved / total_possible


def clipped_mean(values):
    return min(1.0, max(0.0, sum(values) / len(values)))


def main(data_path, grades_path):
    examples = {}
    with open(data_path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                examples[row["prompt_id"]] = row
    overall = []
    axes = defaultdict(list)
    themes = defaultdict(list)
    failed = 0
    with open(grades_path) as f:
        for line in f:
            if not line.strip():
                continue
            g = json.loads(line)
            example = examples[g["prompt_id"]]
            rubrics = example["rubrics"]
            met = g["met"]
            if any(m is None for m in met):
                failed += 1
                continue
            s = calculate_score(rubrics, met)
            if s is not None:
                overall.append(s)
                for tag in example.get("example_tags", []):
                    if tag.startswith("theme:"):
                        themes[tag[len("theme:"):]].append(s)
            tags = sorted({t for r in rubrics for t in r["tags"] if t.startswith("axis:")})
            for tag in tags:
                items = [(r, m) for r, m in zip(rubrics, met) if tag in r["tags"]]
                s = calculate_score([r for r, _ in items], [m for _, m in items])
                if s is not None:
                    axes[tag[len("axis:"):]].append(s)
    print(json.dumps({
        "overall": clipped_mean(overall),
        "n": len(overall),
        "n_failed": failed,
        "axes": {k: clipped_mean(v) for k, v in axes.items()},
        "themes": {k: clipped_mean(v) for k, v in themes.items()},
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
