"""ARL-RR rewards for TRL's GRPOTrainer from a running `arlrr serve` (standard library only).

    from trl import GRPOTrainer
    from trl_reward import arlrr_reward
    trainer = GRPOTrainer(model=..., reward_funcs=[arlrr_reward], train_dataset=ds, ...)

`ds` needs a `prompt_id` column holding the rubric example ids (TRL passes every dataset
column to reward functions as a keyword argument); without it the prompt text is matched.
TRL repeats each prompt `num_generations` times in a row, so consecutive completions of one
prompt are sent as one item: one GRPO group, which `--objective gdpo` normalizes within.
When TRL passes `trainer_state` (TRL >= 0.20), the global step is reported to the service,
which advances the ARL-RR schedule; older TRL: start the service with --completions-per-step.

Environment: ARLRR_URL (default http://127.0.0.1:8000), ARLRR_TOKEN (bearer token, optional).
"""
import json
import os
import urllib.request

URL = os.environ.get("ARLRR_URL", "http://127.0.0.1:8000")
_last_step = [None]


def _post(path, body):
    headers = {"Content-Type": "application/json"}
    if os.environ.get("ARLRR_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["ARLRR_TOKEN"]
    req = urllib.request.Request(URL + path, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.load(resp)


def _text(x):
    # conversational datasets give lists of {"role", "content"} messages
    return x[-1]["content"] if isinstance(x, list) else x


def arlrr_reward(prompts, completions, prompt_id=None, trainer_state=None, **kwargs):
    step = getattr(trainer_state, "global_step", None)
    if step is not None and step != _last_step[0]:
        _post("/v1/schedule/report", {"step": step})
        _last_step[0] = step
    keys = prompt_id or [json.dumps(p) for p in prompts]
    items = []
    for i, key in enumerate(keys):
        if not items or keys[i - 1] != key:
            item = {"prompt_id": key} if prompt_id else {"prompt": prompts[i]}
            items.append(dict(item, completions=[]))
        items[-1]["completions"].append(_text(completions[i]))
    answer = _post("/v1/rewards", {"items": items})
    # null = no signal for this prompt under the active class: the same for the whole group,
    # so 0.0 gives a zero advantage
    return [c["reward"] or 0.0 for it in answer["items"] for c in it["completions"]]


if __name__ == "__main__":
    import sys

    # python3 trl_reward.py PROMPT_ID COMPLETION... : prints the rewards as JSON
    ids, texts = [sys.argv[1]] * (len(sys.argv) - 2), sys.argv[2:]
    print(json.dumps(arlrr_reward(prompts=[""] * len(texts), completions=texts, prompt_id=ids)))
