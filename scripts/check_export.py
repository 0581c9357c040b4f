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
model computes in the case's `dtype`, `float32` (default) or `float64` (the whole model, the
adapters too, cast after loading; bf16 or f32 weights are widened exactly, so the comparison is
with arlrr's logits of the same weights in that dtype). In float64 the accumulation-order
noise of the two implementations' float32 matmuls is gone and any other difference shows.
transformers computes two parts in float32 whatever the model's dtype: the rotary tables
(`*RotaryEmbedding`) and the RMSNorm statistics (`*RMSNorm`). For a float64 case the script
gives those modules the same formulas in float64 (`f64_forwards` in the report counts them;
only the default RoPE type, the one arlrr implements), so no float32 step is left on either
side; the eager attention's float32 softmax is avoided by loading with `sdpa` attention.
`ref` is a safetensors file of arlrr's with `ids` (int64 [T], the prompt's token ids) and
`logits` ([T, V]); an optional `text` case field is the prompt as text, which the folder's
tokenizer must encode to `ids` (`tokenizer_ids_match` in the report).

`make_adapter` goes the other way: peft builds a LoRA with random A and B over `base`, saves it
with `save_pretrained` into `out`, and writes its logits on the `ids` of a reference file, for
arlrr to load the adapter and compare.

The report (stdout, and REPORT.json with --out) gives per case `max_abs_diff`, the largest
|logit| and whether the argmax tokens agree.
"""

import argparse
import json
import sys
import types

import torch
from safetensors.torch import load_file, save_file


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def rope_f64(self, x, position_ids):
    """The default RoPE of transformers' `*RotaryEmbedding.forward`, in float64."""
    base = self.config.rope_parameters["rope_theta"]
    dim = self.inv_freq.numel() * 2
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].double() * inv.to(x.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(
        x.dtype
    )


def rms_norm_f64(self, hidden_states):
    """transformers' `*RMSNorm.forward` without its cast to float32."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def f64_forwards(model):
    """Gives the rotary and RMSNorm modules float64 forwards; how many it changed."""
    n = 0
    for m in model.modules():
        kind = type(m).__name__
        if kind.endswith("RotaryEmbedding"):
            if getattr(m, "rope_type", "default") != "default":
                raise SystemExit(f"{kind}: RoPE type {m.rope_type} has no float64 forward here")
            m.forward = types.MethodType(rope_f64, m)
            n += 1
        elif kind.endswith("RMSNorm") and hasattr(m, "variance_epsilon"):
            m.forward = types.MethodType(rms_norm_f64, m)
            n += 1
    return n


def load_case(case):
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[case.get("dtype", "float32")]
    kw = {"dtype": dtype, "attn_implementation": "sdpa"}
    if "model" in case:
        model = AutoModelForCausalLM.from_pretrained(case["model"], **kw)
        return model.to(dtype), case["model"]
    from peft import AutoPeftModelForCausalLM, PeftModel

    if "base" in case:
        base = AutoModelForCausalLM.from_pretrained(case["base"], **kw)
        return PeftModel.from_pretrained(base, case["adapter"]).to(dtype), case["base"]
    model = AutoPeftModelForCausalLM.from_pretrained(case["adapter"], **kw)
    # peft keeps the adapters in the dtype they were saved in (f32): cast them too
    return model.to(dtype), model.peft_config["default"].base_model_name_or_path


@torch.no_grad()
def logits_of(model, ids):
    model.eval()
    return model(input_ids=ids.unsqueeze(0)).logits[0]


def check(case):
    ref = load_file(case["ref"])
    ids, want = ref["ids"].long(), ref["logits"].double()
    model, folder = load_case(case)
    patched = f64_forwards(model) if case.get("dtype") == "float64" else 0
    got = logits_of(model, ids).double()
    if got.shape != want.shape:
        raise SystemExit(f"{case['name']}: logits {tuple(got.shape)}, arlrr's {tuple(want.shape)}")
    out = {
        "name": case["name"],
        "dtype": case.get("dtype", "float32"),
        "tokens": int(ids.numel()),
        "max_abs_diff": float((got - want).abs().max()),
        "max_abs_logit": float(want.abs().max()),
        "argmax_agree": bool((got.argmax(-1) == want.argmax(-1)).all()),
    }
    if patched:
        out["f64_forwards"] = patched
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
    logits = logits_of(model, ids).float().contiguous()
    save_file({"ids": ids, "logits": logits}, spec["logits"])
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
