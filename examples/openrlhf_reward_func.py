"""ARL-RR rewards for OpenRLHF from a running `arlrr serve`, for its `--reward.remote_url <file>.py`
mode (standard library only; torch tensors when torch is there, as OpenRLHF's own example).

OpenRLHF 0.9.1 to 0.11.2 load `reward_func(queries, prompts, labels)` from this file when the
rollout actor starts and call it once per completion (lists of one query, prompt and label) with
`asyncio.to_thread`, so in the event loop's default thread pool, for the n_samples_per_prompt
completions of every prompt of a rollout batch at about the same time. Each call goes to the
service's OpenRLHF endpoint. For `--objective gdpo`, start the service with
`--group-size <n_samples_per_prompt>` so that it collects a prompt's completions across calls into
one group:

    arlrr serve --data train.jsonl --judge rules.toml --objective gdpo --group-size 8 \
        --completions-per-step 1024 --port 8000
    python -m openrlhf.cli.train_ppo_ray ... --rollout.n_samples_per_prompt 8 \
        --algo.advantage.estimator group_norm \
        --reward.remote_url examples/openrlhf_reward_func.py \
        --data.input_key prompt --data.label_key prompt_id --data.apply_chat_template

(0.9.1 to 0.10.1 name the flags `--remote_rm_url`, `--n_samples_per_prompt`,
`--advantage_estimator`, `--input_key`, `--label_key`, `--apply_chat_template`. 0.8.3 to 0.9.0
call the function with a micro batch, as a Ray task, and read the same answer; older versions
want a bare tensor of rewards.)

What this file adds to the plain URL:
- Retries. OpenRLHF retries neither a `.py` function nor its errors: a call that raises leaves
  the sample without a reward, and the step then fails. A 5xx, 429 or 408 answer (a judge outage
  is a 503) or a broken connection is retried ARLRR_RETRIES times (6) with exponential backoff
  and full jitter from ARLRR_BACKOFF_SECS (1) up to ARLRR_BACKOFF_MAX_SECS (30), or the service's
  Retry-After. Any other 4xx is raised at once. After the last try it raises: never a made-up
  reward.
- No starved GDPO groups. The service holds each completion until its group is full, and each
  waiting call holds a thread. asyncio's default pool has min(32, CPUs + 4) threads; once they
  hold first members of different prompts, the other members queue behind them and the groups
  are only closed, short, when `--group-window-secs` expires. Loaded inside the rollout actor's
  running event loop (as OpenRLHF does), this file gives that loop a default pool of
  ARLRR_REWARD_THREADS (4096) threads, started only as they are needed; called from a smaller
  asyncio pool it widens it. Keep it at least the completions one rollout actor has in flight
  (its share of the rollout batch x n_samples_per_prompt), and the service's `--max-connections`
  at least the sum over actors. ARLRR_REWARD_THREADS=0 leaves the pool alone.
- Evaluation traffic. OpenRLHF passes the function nothing that tells evaluation rollouts from
  training ones, so label them: a label starting with ARLRR_EVAL_LABEL_PREFIX ("eval:") is sent
  without the prefix and with `x-arlrr-eval: 1`, and never counts toward the service's steps.
  Put `"prompt_id": "eval:<id>"` in the `--eval_dataset` (the service still needs the `<id>` in
  its `--data`).

Usage: python3 openrlhf_reward_func.py PROMPT_ID PROMPT_TEXT COMPLETION... calls reward_func
once per completion, all at once as OpenRLHF does, and prints the rewards.
Environment: ARLRR_URL (default http://127.0.0.1:8000), ARLRR_TOKEN (bearer token, optional),
and the ones above.
"""
import asyncio
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from concurrent.futures import ThreadPoolExecutor

URL = os.environ.get("ARLRR_URL", "http://127.0.0.1:8000")
RETRIES = int(os.environ.get("ARLRR_RETRIES", "6"))
BACKOFF_SECS = float(os.environ.get("ARLRR_BACKOFF_SECS", "1"))
BACKOFF_MAX_SECS = float(os.environ.get("ARLRR_BACKOFF_MAX_SECS", "30"))
# over the service's --request-timeout-secs (170), which covers a GDPO group's wait
TIMEOUT_SECS = float(os.environ.get("ARLRR_TIMEOUT_SECS", "180"))
REWARD_THREADS = int(os.environ.get("ARLRR_REWARD_THREADS", "4096"))
EVAL_PREFIX = os.environ.get("ARLRR_EVAL_LABEL_PREFIX", "eval:")


class ArlrrRewardError(RuntimeError):
    """The service did not reward this completion; OpenRLHF logs it and the sample has none."""


def _log(msg):
    sys.stderr.write(f"[arlrr reward_func] {msg}\n")  # one write: calls run in many threads
    sys.stderr.flush()


def _widen_loop_pool():
    """Gives the running event loop (OpenRLHF's rollout actor, which loads this file in its async
    __init__) a default pool wide enough for every completion waiting for its group."""
    if REWARD_THREADS <= 0:
        return False
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    pool = ThreadPoolExecutor(max_workers=REWARD_THREADS, thread_name_prefix="arlrr-reward")
    loop.set_default_executor(pool)
    _log(f"the event loop's default pool now has up to {REWARD_THREADS} threads")
    return True


_POOL_WIDENED = _widen_loop_pool()
_checked = threading.Event()


def _widen_this_pool():
    """When this file was loaded outside the loop, widens the asyncio pool running this call
    instead (private attributes of CPython's ThreadPoolExecutor, so guarded), and starts threads
    for the calls already queued behind the full pool."""
    if REWARD_THREADS <= 0 or _POOL_WIDENED or _checked.is_set():
        return
    _checked.set()
    thread = threading.current_thread()
    if not thread.name.startswith("asyncio"):  # not asyncio's default pool (asyncio_0, ...)
        return
    try:
        ref = getattr(thread, "_args", (None,))[0]
        pool = ref() if isinstance(ref, weakref.ref) else None
        if isinstance(pool, ThreadPoolExecutor) and pool._max_workers < REWARD_THREADS:
            _log(f"widening the calling pool from {pool._max_workers} to {REWARD_THREADS} threads")
            pool._max_workers = REWARD_THREADS
            for _ in range(pool._work_queue.qsize()):
                pool._adjust_thread_count()
    except Exception as e:  # a Python whose pool differs: say so, the calls still work
        _log(f"could not widen the calling thread pool ({e!r}); gdpo groups may wait for their window")


def _retryable(status):
    return status in (408, 429) or status >= 500


def _post(body, headers):
    """One request: (status, parsed JSON or None, Retry-After seconds or None)."""
    req = urllib.request.Request(URL + "/openrlhf/reward", body, headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_SECS) as resp:
            return resp.status, json.load(resp), None
    except urllib.error.HTTPError as e:
        try:
            info = json.load(e)
        except Exception:
            info = None
        retry_after = None
        try:
            retry_after = float(e.headers.get("Retry-After"))
        except (TypeError, ValueError):
            pass
        return e.code, info, retry_after


def _error_text(status, info):
    err = info.get("error") if isinstance(info, dict) else None
    if isinstance(err, dict):
        return f"{status} {err.get('type')}: {err.get('message')}"
    return f"{status}"


def _request(queries, prompts, labels, evaluation):
    headers = {"Content-Type": "application/json"}
    if os.environ.get("ARLRR_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["ARLRR_TOKEN"]
    if evaluation:
        headers["x-arlrr-eval"] = "1"
    body = json.dumps({"query": queries, "prompts": prompts, "labels": labels}).encode()
    tries = RETRIES + 1
    for attempt in range(tries):
        retry_after = None
        try:
            status, info, retry_after = _post(body, headers)
            if status == 200 and isinstance(info, dict) and "rewards" in info:
                return info
            last = _error_text(status, info)
            if status == 200 or not _retryable(status):
                raise ArlrrRewardError(f"arlrr reward service refused the request: {last}")
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            # connection refused or reset, timeout, a cut answer: the request may be sent again
            # (a completion the service already graded is not counted twice, and costs no judge call)
            last = f"{type(e).__name__}: {e}"
        if attempt + 1 == tries:
            break
        delay = random.uniform(0, min(BACKOFF_MAX_SECS, BACKOFF_SECS * 2**attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, BACKOFF_MAX_SECS))
        _log(f"{last}; try {attempt + 2} of {tries} in {delay:.1f}s")
        time.sleep(delay)
    raise ArlrrRewardError(f"arlrr reward service failed {tries} tries at {URL}; last: {last}")


def reward_func(queries, prompts, labels, **kwargs):
    _widen_this_pool()
    labels = list(labels)
    marked = [isinstance(l, str) and bool(EVAL_PREFIX) and l.startswith(EVAL_PREFIX) for l in labels]
    if any(marked) and not all(marked):
        raise ArlrrRewardError("a call mixes evaluation labels (" + EVAL_PREFIX + "...) and training ones")
    if all(marked) and labels:
        labels = [l[len(EVAL_PREFIX) :] for l in labels]
    info = _request(list(queries), list(prompts), labels, evaluation=all(marked) and bool(labels))
    try:
        import torch
    except ImportError:
        return info
    # OpenRLHF's own reward_func example answers tensors (0.8.3 to 0.9.0 concatenate them)
    return {
        "rewards": torch.tensor(info["rewards"]),
        "scores": torch.tensor(info["scores"]),
        "extra_logs": {k: torch.tensor(v) for k, v in info["extra_logs"].items()},
    }


if __name__ == "__main__":
    prompt_id, prompt, completions = sys.argv[1], sys.argv[2], sys.argv[3:]
    chat = "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n"

    def one(c):
        info = reward_func([chat + c + "<|im_end|>"], [chat], [prompt_id])
        return float(info["rewards"][0])

    with ThreadPoolExecutor(max_workers=max(1, len(completions))) as pool:
        print(json.dumps(list(pool.map(one, completions))))
