#!/usr/bin/env python3
"""Loads what arlrr writes the way users load it, with HF transformers and peft, and compares
the logits with arlrr's.

    check_export.py PLAN.json [--out REPORT.json]

PLAN.json:

    {"cases": [
       {"name": "checkpoint", "adapter": "RUN/checkpoints/step-00000002", "ref": "ref.safetensors"},
       {"name": "over-base", "adapter": "ADAPTER", "base": "BASE", "ref": "ref.safetensors"},
       {"name": "merged", "model": "EXPORT", "ref": "ref.safetensors"}
     ],
     "make_adapter": {"base": "BASE", "out": "DIR", "ids": "ref.safetensors",
                      "logits": "peft_logits.safetensors", "r": 2, "lora_alpha": 4,
                      "target_modules": ["q_proj", "v_proj"], "seed": 0}}

A case with `model` loads an HF folder with `AutoModelForCausalLM`; with `adapter` alone,
`AutoPeftModelForCausalLM` (the base is the adapter's `base_model_name_or_path`); with
`adapter` and `base`, `PeftModel.from_pretrained` over `AutoModelForCausalLM` of `base`. Every
model is loaded in float32 (`dtype=torch.float32`: bf16 weights are widened exactly, so the
comparison is with arlrr's logits of the same bf16 weights). `ref` is a safetensors file of
arlrr's with `ids` (int64 [T], the prompt's token ids) and `logits` (float32 [T, V]); an
optional `text` case field is the prompt as text, which the folder's tokenizer must encode to
`ids` (`tokenizer_ids_match` in the report).

`make_adapter` goes the other way: peft builds a LoRA with random A and B over `base`, saves it
with `save_pretrained` into `out`, and writes its logits on the `ids` of a reference file, for
arlrr to load the adapter and compare.

The report (stdout, and REPORT.json with --out) gives per case `max_abs_diff`, the largest
|logit| and whether the argmax tokens agree.
"""

import argparse
import json
import sys

import torch
from safetensors.torch import load_file, save_file


def load_case(case):
    from transformers import AutoModelForCausalLM

    f32 = torch.float32
    if "model" in case:
        return AutoModelForCausalLM.from_pretrained(case["model"], dtype=f32), case["model"]
    from peft import AutoPeftModelForCausalLM, PeftModel

    if "base" in case:
        base = AutoModelForCausalLM.from_pretrained(case["base"], dtype=f32)
        return PeftModel.from_pretrained(base, case["adapter"]), case["base"]
    model = AutoPeftModelForCausalLM.from_pretrained(case["adapter"], dtype=f32)
    return model, model.peft_config["default"].base_model_name_or_path


@torch.no_grad()
def logits_of(model, ids):
    model.eval()
    return model(input_ids=ids.unsqueeze(0)).logits[0].float()


def check(case):
    ref = load_file(case["ref"])
    ids, want = ref["ids"].long(), ref["logits"].float()
    model, folder = load_case(case)
    got = logits_of(model, ids)
    if got.shape != want.shape:
        raise SystemExit(f"{case['name']}: logits {tuple(got.shape)}, arlrr's {tuple(want.shape)}")
    out = {
        "name": case["name"],
        "tokens": int(ids.numel()),
        "max_abs_diff": float((got - want).abs().max()),
        "max_abs_logit": float(want.abs().max()),
        "argmax_agree": bool((got.argmax(-1) == want.argmax(-1)).all()),
    }
    if "text" in case:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder)
        enc = tok(case["text"], add_special_tokens=False)["input_ids"]
        out["tokenizer_ids_match"] = enc == ids.tolist()
    return out


def make_adapter(spec):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.get("seed", 0))
    base = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32)
    cfg = LoraConfig(
        r=spec["r"],
        lora_alpha=spec["lora_alpha"],
        target_modules=spec["target_modules"],
        lora_dropout=0.0,
        init_lora_weights=False,  # B random too: the adapter changes the model
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, cfg)
    model.save_pretrained(spec["out"])
    ids = load_file(spec["ids"])["ids"].long()
    save_file({"ids": ids, "logits": logits_of(model, ids).contiguous()}, spec["logits"])
    return {"dir": spec["out"], "logits": spec["logits"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("plan")
    ap.add_argument("--out")
    a = ap.parse_args()
    with open(a.plan) as f:
        plan = json.load(f)
    report = {"cases": [check(c) for c in plan.get("cases", [])]}
    if "make_adapter" in plan:
        report["make_adapter"] = make_adapter(plan["make_adapter"])
    text = json.dumps(report, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
