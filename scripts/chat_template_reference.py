#!/usr/bin/env python3
"""What HF transformers' `apply_chat_template` makes of a set of conversations, for the chat
template test (crates/policy/tests/chat_templates.rs): the text and the token ids, for
SmolLM2's own template (loaded from its GGUF, as `transformers` loads a GGUF) and for the
templates of Qwen2.5, Qwen3 and Llama 3 kept as fixtures in
crates/policy/tests/fixtures/chat_templates/, rendered over the same GGUF tokenizer (Llama 3's
header tokens and `<|begin_of_text|>` added as special tokens, the last as `bos_token`).

    ~/.cache/arlrr/engines/hf/bin/python scripts/chat_template_reference.py \
        --gguf ~/.cache/arlrr/assets/SmolLM2-135M-Instruct.Q4_1.gguf \
        --healthbench ~/.cache/arlrr/assets/healthbench_eval.jsonl \
        --out crates/policy/tests/fixtures/chat_templates/expected.json

The Python comes from `scripts/engines/setup.sh hf` (transformers 5.25.0, gguf 0.19.0).
"""

import argparse
import json
import os
import sys

FIXTURES = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "crates", "policy", "tests", "fixtures", "chat_templates",
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def conversations(healthbench):
    """Short conversations that exercise each template's branches, and one real multi-turn
    HealthBench prompt."""
    u = lambda c: {"role": "user", "content": c}
    a = lambda c: {"role": "assistant", "content": c}
    s = lambda c: {"role": "system", "content": c}
    convs = {
        "one_user": [u("What is the capital of France?")],
        "system_first": [s("You are a careful clinician."), u("I have had a fever for two days.")],
        "multi_turn": [
            u("My child has a rash."),
            a("How old is your child, and does the rash fade when pressed?"),
            u("She is four, and it does not fade."),
        ],
        "thinking_turn": [
            u("Is ibuprofen safe with asthma?"),
            a("<think>\nSome asthmatics react to NSAIDs.\n</think>\n\nOften, but not always."),
            u("What should I watch for?"),
        ],
        "whitespace_and_unicode": [u("  Héllo wörld 🤖, naïve café\n\n  "), a(" ok \n")],
    }
    with open(healthbench, encoding="utf-8") as f:
        for line in f:
            ex = json.loads(line)
            prompt = ex["prompt"]
            if len(prompt) >= 3:
                convs["healthbench_" + ex["prompt_id"][:8]] = [
                    {"role": m["role"], "content": m["content"]} for m in prompt
                ]
                break
    return convs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--healthbench", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import transformers
    from transformers import AutoTokenizer

    folder, name = os.path.split(os.path.abspath(args.gguf))

    def gguf_tokenizer():
        return AutoTokenizer.from_pretrained(folder, gguf_file=name)

    templates = {"smollm2": gguf_tokenizer()}
    for fixture in ["qwen2.5", "qwen3", "llama3"]:
        t = gguf_tokenizer()
        with open(os.path.join(FIXTURES, fixture + ".jinja"), encoding="utf-8") as f:
            t.chat_template = f.read()
        if fixture == "llama3":
            t.add_tokens(LLAMA3_SPECIALS, special_tokens=True)
            t.bos_token = "<|begin_of_text|>"
        templates[fixture] = t

    cases = []
    for conv_name, messages in conversations(args.healthbench).items():
        for template, tok in templates.items():
            for add in [True, False]:
                if not add and messages[-1]["role"] != "assistant":
                    continue
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
                ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add)
                if not isinstance(ids, list):
                    ids = ids["input_ids"]
                cases.append({
                    "template": template,
                    "conversation": conv_name,
                    "add_generation_prompt": add,
                    "messages": messages,
                    "text": text,
                    "ids": ids,
                })
    out = {
        "made_by": f"scripts/chat_template_reference.py, transformers {transformers.__version__}",
        "special_tokens": {k: templates[k].special_tokens_map for k in templates},
        "cases": cases,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{len(cases)} cases -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
