"""ARL-RR rewards for OpenRLHF 0.9.1 and later from a running `arlrr serve`, for its
`--reward.remote_url <file>.py` mode (standard library only; torch tensors when torch is there).

OpenRLHF loads `reward_func(queries, prompts, labels)` from this file and calls it once per
completion (lists of one query, prompt and label), in a thread, for the n_samples_per_prompt
completions of a prompt at about the same time. Each call goes to the service's OpenRLHF
endpoint. For `--objective gdpo`, start the service with `--group-size <n_samples_per_prompt>`
so that it collects a prompt's completions across calls into one group:

    arlrr serve --data train.jsonl --judge rules.toml --objective gdpo --group-size 8 --port 8000
    python -m openrlhf.cli.train_ppo_ray ... --rollout.n_samples_per_prompt 8 \
        --algo.advantage.estimator group_norm \
        --reward.remote_url examples/openrlhf_reward_func.py \
        --data.input_key prompt --data.label_key prompt_id --data.apply_chat_template

(0.9.1 to 0.10.1 name the flags `--remote_rm_url`, `--n_samples_per_prompt`,
`--advantage_estimator`, `--input_key`, `--label_key`, `--apply_chat_template`. The service's
URL in place of this file, `http://127.0.0.1:8000/openrlhf/reward`, does the same.)

Usage: python3 openrlhf_reward_func.py PROMPT_ID PROMPT_TEXT COMPLETION... calls reward_func
once per completion, all at once as OpenRLHF does, and prints the rewards.
Environment: ARLRR_URL (default http://127.0.0.1:8000), ARLRR_TOKEN (bearer token, optional).
"""
import json
import os
import urllib.request

URL = os.environ.get("ARLRR_URL", "http://127.0.0.1:8000")


def reward_func(queries, prompts, labels, **kwargs):
    headers = {"Content-Type": "application/json"}
    if os.environ.get("ARLRR_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["ARLRR_TOKEN"]
    body = json.dumps({"query": list(queries), "prompts": list(prompts), "labels": list(labels)})
    req = urllib.request.Request(URL + "/openrlhf/reward", body.encode(), headers)
    # over the service's --request-timeout-secs (170), which covers a GDPO group's wait
    with urllib.request.urlopen(req, timeout=180) as resp:
        info = json.load(resp)
    try:
        import torch
    except ImportError:
        return info
    # OpenRLHF's own reward_func example answers tensors
    return {
        "rewards": torch.tensor(info["rewards"]),
        "scores": torch.tensor(info["scores"]),
        "extra_logs": {k: torch.tensor(v) for k, v in info["extra_logs"].items()},
    }


if __name__ == "__main__":
    import sys
    from concurrent.futures import ThreadPoolExecutor

    prompt_id, prompt, completions = sys.argv[1], sys.argv[2], sys.argv[3:]
    chat = "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n"

    def one(c):
        info = reward_func([chat + c + "<|im_end|>"], [chat], [prompt_id])
        return float(info["rewards"][0])

    with ThreadPoolExecutor(max_workers=max(1, len(completions))) as pool:
        print(json.dumps(list(pool.map(one, completions))))
