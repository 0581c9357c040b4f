"""ARL-RR rewards for verl from a running `arlrr serve` (standard library only).

Put the rubric example id in each row's `reward_model.ground_truth`, then either
    custom_reward_function.path=examples/verl_reward.py custom_reward_function.name=compute_score
(verl's default naive reward manager: one call per response), or, so that the completions of
one prompt reach the service together as one GRPO group (needed by --objective gdpo),
    reward_model.reward_manager=batch custom_reward_function.name=compute_score_batch
The batch function groups a batch's completions by id wherever they stand (verl's
trainer.balance_batch reorders the batch) and answers in the batch's order.

Environment: ARLRR_URL (default http://127.0.0.1:8000), ARLRR_TOKEN (bearer token, optional).
"""
import json
import os
import urllib.request

URL = os.environ.get("ARLRR_URL", "http://127.0.0.1:8000")


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info])[0]


def compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos, **kwargs):
    # verl may reorder a batch before rewarding (trainer.balance_batch, on by default), so the
    # completions of one prompt need not be adjacent: group by id over the whole batch, then
    # answer in the input order
    items, item_of, slots = [], {}, []
    for gt, text in zip(ground_truths, solution_strs):
        key = str(gt)
        if key not in item_of:
            item_of[key] = len(items)
            items.append({"prompt_id": key, "completions": []})
        completions = items[item_of[key]]["completions"]
        slots.append((item_of[key], len(completions)))
        completions.append(text)
    token = os.environ.get("ARLRR_TOKEN")
    auth = {"Authorization": "Bearer " + token} if token else {}
    body = json.dumps({"items": items}).encode()
    req = urllib.request.Request(URL + "/v1/rewards", body, {"Content-Type": "application/json", **auth})
    with urllib.request.urlopen(req, timeout=600) as resp:
        answer = json.load(resp)
    # a dict gives verl the per-class rewards to log next to the score
    out = []
    for i, j in slots:
        c = answer["items"][i]["completions"][j]
        out.append(dict({"score": c["reward"] or 0.0}, **{k: v or 0.0 for k, v in c["classes"].items()}))
    return out


if __name__ == "__main__":
    import sys

    # python3 verl_reward.py PROMPT_ID COMPLETION... : prints the scores as JSON
    texts = sys.argv[2:]
    print(json.dumps([compute_score("arlrr", t, sys.argv[1]) for t in texts]))
