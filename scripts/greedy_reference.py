"""Greedy text of HF transformers on the fetched SmolLM2 GGUF, beside `arlrr generate`'s at each
sampling precision: the check of docs/benchmarks.md ("int8 sampling").

    scripts/engines/setup.sh hf
    ~/.cache/arlrr/engines/hf/bin/python scripts/greedy_reference.py [--arlrr target/release/arlrr]

transformers dequantizes the GGUF to f32 and decodes greedily (`do_sample=False`) from the
model's chat template; `arlrr generate --temperature 0 --precision P` does the same for P in
f32, bf16 and int8. Prints, per prompt and precision, "same" or where the texts part.
"""
import argparse
import os
import subprocess

PROMPTS = [
    "What should I do for a sprained ankle?",
    "I have had a headache for three days. Should I worry?",
    "Explain what a fever is in two sentences.",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--arlrr", default=os.path.join(root, "target", "release", "arlrr"))
    ap.add_argument("--tokens", type=int, default=48)
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = os.path.join(os.environ.get("ARLRR_ASSETS") or os.path.expanduser(
        "~/.cache/arlrr/assets"), "SmolLM2-135M-Instruct.Q4_1.gguf")
    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{a.tokens} greedy tokens")
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                      add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        out = model.generate(ids, do_sample=False, max_new_tokens=a.tokens)
        want = tok.decode(out[0][ids.shape[1]:], skip_special_tokens=True).strip()
        for precision in ["f32", "bf16", "int8"]:
            got = subprocess.run(
                [a.arlrr, "generate", "--prompt", prompt, "--temperature", "0", "--max-tokens",
                 str(a.tokens), "--precision", precision],
                check=True, capture_output=True, text=True).stdout.strip()
            if got == want:
                verdict = "same"
            else:
                i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]),
                         min(len(got), len(want)))
                verdict = f"parts at char {i}: HF {want[i:i + 30]!r}, arlrr {got[i:i + 30]!r}"
            print(f"{precision:5} {prompt[:40]!r}: {verdict}")


if __name__ == "__main__":
    main()
