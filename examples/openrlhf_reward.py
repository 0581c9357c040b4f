"""What OpenRLHF sends to its remote reward URL and reads back, in the standard library only: a
check of the service before a long run (OpenRLHF itself needs no code, only flags).

OpenRLHF 0.8 to 0.9.0 (`remote_rm_fn_ray`, a batch of queries per request):

    arlrr serve --data train.jsonl --judge rules.toml --objective alternating \
        --completions-per-step 1024 --port 8000          # rollout_batch_size x n_samples_per_prompt
    python -m openrlhf.cli.train_ppo_ray ... --advantage_estimator group_norm \
        --remote_rm_url http://127.0.0.1:8000/openrlhf/reward \
        --input_key prompt --label_key prompt_id --apply_chat_template

OpenRLHF 0.9.1 and later send one completion per request (for gdpo add `--group-size 8`, the
n_samples_per_prompt, to `arlrr serve`); 0.9.1 to 0.10.1 take the flags above, 0.10.2 and later
these:

    python -m openrlhf.cli.train_ppo_ray ... --algo.advantage.estimator group_norm \
        --reward.remote_url http://127.0.0.1:8000/openrlhf/reward \
        --data.input_key prompt --data.label_key prompt_id --data.apply_chat_template

On this URL path OpenRLHF tries each request 5 times, 1 s apart (a 4xx too), and cannot mark
evaluation rollouts, which then count toward `--completions-per-step`; `openrlhf_reward_func.py`
(`--reward.remote_url` set to the file) retries with backoff and marks them.

Usage: python3 openrlhf_reward.py PROMPT_ID PROMPT_TEXT COMPLETION... prints the rewards.
Environment: ARLRR_URL (default http://127.0.0.1:8000), ARLRR_TOKEN (bearer token, optional).
"""
import json
import os
import sys
import urllib.request

URL = os.environ.get("ARLRR_URL", "http://127.0.0.1:8000")


def remote_rm(queries, prompts, labels):
    # {"query", "prompts", "labels"} in, the whole JSON out (remote_rm_fn_ray in 0.8/0.9,
    # _fetch_rewards_via_http with one entry each from 0.9.1)
    headers = {"Content-Type": "application/json"}
    if os.environ.get("ARLRR_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["ARLRR_TOKEN"]
    body = json.dumps({"query": queries, "prompts": prompts, "labels": labels}).encode()
    req = urllib.request.Request(URL + "/openrlhf/reward", body, headers)
    with urllib.request.urlopen(req, timeout=180) as resp:
        return json.load(resp)


if __name__ == "__main__":
    prompt_id, prompt, completions = sys.argv[1], sys.argv[2], sys.argv[3:]
    chat = "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n"
    n = len(completions)
    info = remote_rm([chat + c + "<|im_end|>" for c in completions], [chat] * n, [prompt_id] * n)
    assert len(info["rewards"]) == len(info["scores"]) == n
    assert all(len(v) == n for v in info["extra_logs"].values())
    print(json.dumps(info["rewards"]))
