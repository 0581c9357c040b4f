"""Rubric data (native / HealthBench JSONL, as `arlrr data builtin` writes it) as verl's RL parquet.

    python scripts/engines/verl/to_parquet.py data/train.jsonl data/train.parquet --split train
    python scripts/engines/verl/to_parquet.py data/validation.jsonl data/val.parquet --split test

Each row has verl's columns: `data_source` ("arlrr"), `prompt` (the chat messages), `ability`,
`reward_model` = {"style": "rubric", "ground_truth": <prompt_id>} (what examples/verl_reward.py
sends as `prompt_id`) and `extra_info` = {"split", "index", "prompt_id"}: a split other than
"train" marks validation rows, which verl_reward.py sends with `x-arlrr-eval: 1`.
Needs pandas and pyarrow (both come with verl).
"""
import argparse
import json

import pandas as pd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("jsonl")
    ap.add_argument("parquet")
    ap.add_argument("--split", default="train", help="extra_info.split: train, or test/val for validation rows")
    a = ap.parse_args()
    rows = []
    with open(a.jsonl) as f:
        for i, line in enumerate(l for l in f if l.strip()):
            e = json.loads(line)
            pid = str(e["prompt_id"])
            rows.append({
                "data_source": "arlrr",
                "prompt": [{"role": m["role"], "content": m["content"]} for m in e["prompt"]],
                "ability": "rubric",
                "reward_model": {"style": "rubric", "ground_truth": pid},
                "extra_info": {"split": a.split, "index": i, "prompt_id": pid},
            })
    pd.DataFrame(rows).to_parquet(a.parquet)
    print("%d rows -> %s" % (len(rows), a.parquet))


if __name__ == "__main__":
    main()
