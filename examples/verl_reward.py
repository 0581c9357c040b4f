"""ARL-RR rewards for verl from a running `arlrr serve` (standard library only).

verl 0.9 (checked against verl==0.9.1 from PyPI) rewards each response through its reward loop,
one call per response: `compute_score(data_source, solution_str, ground_truth, extra_info)`, a
plain function run in a thread pool or a coroutine function awaited on the reward worker's event
loop. Put the rubric example id (`builtin-train-0000`, a HealthBench `prompt_id`) in each row's
`reward_model.ground_truth` and point verl at one of the two:

    reward.custom_reward_function.path=examples/verl_reward.py
    reward.custom_reward_function.name=compute_score_async    # or compute_score (sync)

The top-level `custom_reward_function.*` keys of verl <= 0.8 are no longer read by
`verl.trainer.main_ppo` in 0.9: use the `reward.` ones.

Each call returns a dict: `score` is the scalar reward under the service's objective, and every
other key reaches verl's `reward_extra_info` (logged, and readable by `algorithm.gdpo_reward_keys`):
    <class>           the class's reward, for every class the service has (accuracy, ...)
    <class>_defined   1.0 when the service gave the class a value, 0.0 when it answered null: the
                      class has no positive-point criterion for this prompt ("no signal"), or it
                      was not graded (`--grade active`). The value is then 0.0, the same for every
                      response of the prompt, so group normalization (GRPO, verl's GDPO) gives it
                      a zero advantage; None or NaN would make verl's GDPO NaN for the whole batch.
    overall, overall_defined   the overall rubric score, the same way.
Every dict has the same keys, as verl requires (it builds its arrays from the first dict's keys).

A failed grading is never a reward. The call is retried with bounded exponential backoff (a
per-completion `error`, HTTP 5xx, 408, 429 or a transport error; ARLRR_RETRIES, default 5,
ARLRR_BACKOFF_SECS, default 1, doubling, at most 30 s apart), then ArlrrRewardError is raised:
verl has no value meaning "no reward" (None fails in its tensor code, NaN poisons the group's
and, under GDPO, the batch's advantages). With verl 0.9's default trainer (`trainer.use_v1=True`)
the exception fails that response's rollout session: verl logs it and the response is left out
of its group (or the group is refilled with `trainer.v1.sampler.sync_refill_failed_groups=True`).
With the legacy trainer (`trainer.use_v1=False`) it stops the step, so nothing trains on a
grading that did not happen. A 4xx (unknown prompt id, bad token, gdpo without --group-size)
is raised at once: retrying cannot fix it.

Validation: verl passes the function no "validate" flag, only the dataset row's `extra_info`.
Rows whose `extra_info.split` is test/val/valid/validation/eval (verl's preprocessing scripts
write `split`) or whose `extra_info.arlrr_eval` is true are sent with `x-arlrr-eval: 1`, so the
service grades them without counting them as training steps.

Steps: verl does not pass the training step to the reward function, so start the service with
`--completions-per-step <data.train_batch_size * actor_rollout_ref.rollout.n>`.

GDPO, two ways:
  * verl's own: `algorithm.adv_estimator=gdpo` with
    `+algorithm.gdpo_reward_keys='["accuracy","completeness",...]'` (the service's class names)
    and any service objective that grades every class (scalarized). verl normalizes each key
    within the prompt's group (its `uid`) and sums.
  * the service's: `--objective gdpo --group-size <actor_rollout_ref.rollout.n>`. Each call
    carries one response, so the service holds it until its prompt's group is complete; use
    `compute_score_async` so that waiting calls do not hold verl's thread pool.

Environment: ARLRR_URL (default http://127.0.0.1:8000), ARLRR_TOKEN (bearer token, optional),
ARLRR_TIMEOUT_SECS (per request, default 600), ARLRR_RETRIES, ARLRR_BACKOFF_SECS. verl's
`reward.custom_reward_function.reward_kwargs` may also pass `arlrr_url` and `arlrr_token`.
"""

import asyncio
import json
import math
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

URL = os.environ.get("ARLRR_URL", "http://127.0.0.1:8000")
EVAL_SPLITS = {"test", "val", "valid", "validation", "eval"}


class ArlrrRewardError(RuntimeError):
    """No reward for this response: the grading failed (after retries) or the request was refused."""


class _Retry(Exception):
    """A failure that a later try may not have."""


def _settings(kwargs):
    url = kwargs.get("arlrr_url") or os.environ.get("ARLRR_URL", URL)
    token = kwargs.get("arlrr_token") or os.environ.get("ARLRR_TOKEN")
    retries = max(0, int(os.environ.get("ARLRR_RETRIES", "5")))
    backoff = max(0.0, float(os.environ.get("ARLRR_BACKOFF_SECS", "1")))
    timeout = float(os.environ.get("ARLRR_TIMEOUT_SECS", "600"))
    return url.rstrip("/"), token, retries, backoff, timeout


def is_eval(extra_info):
    """Whether a row is evaluation traffic (see the module docstring)."""
    if not isinstance(extra_info, dict):
        return False
    if extra_info.get("arlrr_eval"):
        return True
    split = extra_info.get("split")
    return isinstance(split, str) and split.strip().lower() in EVAL_SPLITS


def _request(ground_truth, solution_str, extra_info, token):
    body = json.dumps({"items": [{"prompt_id": str(ground_truth), "completions": [solution_str]}]}).encode()
    return body, _headers(token, is_eval(extra_info))


def _headers(token, evaluating):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    if evaluating:
        headers["x-arlrr-eval"] = "1"
    return headers


def _post(url, body, headers, timeout):
    """POSTs a request to `/v1/rewards` and reads the answer: _Retry for what may pass."""
    req = urllib.request.Request(url + "/v1/rewards", body, headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        raise _http_failure(e.code, e.read().decode("utf-8", "replace")) from None
    except (OSError, ValueError) as e:  # refused, reset, timed out, a broken answer
        raise _Retry("arlrr serve at %s: %s" % (url, e)) from None


def _http_failure(status, text):
    """An HTTP error answer: _Retry for what may pass, ArlrrRewardError for what cannot."""
    try:
        message = json.loads(text)["error"]["message"]
    except Exception:
        message = text[:300]
    why = "arlrr serve answered HTTP %d: %s" % (status, message)
    if status >= 500 or status in (408, 429):
        return _Retry(why)
    return ArlrrRewardError(why)


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def to_verl(answer):
    """The dict verl gets for a one-completion `/v1/rewards` answer (see the module docstring)."""
    c = answer["items"][0]["completions"][0]
    if c.get("error"):
        raise _Retry("grading failed: %s" % c["error"])
    classes = c.get("classes") or {}
    names = answer.get("classes") or sorted(classes)
    if (
        answer.get("objective") == "gdpo"
        and c.get("reward") is None
        and "group_size" not in c
        and any(_number(v) for v in classes.values())
    ):
        # a service that does not collect groups on /v1/rewards answers a one-completion gdpo
        # item with a null reward (newer ones refuse it with a 400 naming --group-size); with
        # --group-size, a group that closed with one member is null: no signal, 0.0 below
        raise ArlrrRewardError(
            "the service's gdpo got one completion of a prompt and no group: start it with "
            "--group-size <actor_rollout_ref.rollout.n>, or use verl's own algorithm.adv_estimator=gdpo"
        )
    out = {"score": float(c["reward"]) if _number(c.get("reward")) else 0.0}
    for name in list(names) + ["overall"]:
        value = c.get("overall") if name == "overall" else classes.get(name)
        out[name] = float(value) if _number(value) else 0.0
        out[name + "_defined"] = 1.0 if _number(value) else 0.0
    return out


def _retry_or_raise(attempt, retries, backoff, why):
    if attempt >= retries:
        raise ArlrrRewardError("%s (after %d tries)" % (why, attempt + 1))
    return min(backoff * 2**attempt, 30.0)


def _retrying(call, retries, backoff):
    """`call()`, called again after a backoff while it raises _Retry, `retries` times at most."""
    attempt = 0
    while True:
        try:
            return call()
        except _Retry as e:
            time.sleep(_retry_or_raise(attempt, retries, backoff, str(e)))
            attempt += 1


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """verl's custom reward function (sync: verl runs it in its thread pool)."""
    url, token, retries, backoff, timeout = _settings(kwargs)
    body, headers = _request(ground_truth, solution_str, extra_info, token)
    return _retrying(lambda: to_verl(_post(url, body, headers, timeout)), retries, backoff)


async def _post_async(url, body, headers, timeout):
    """POST with asyncio streams (HTTP/1.1, one request per connection): (status, body text)."""
    u = urllib.parse.urlsplit(url)
    tls = u.scheme == "https"
    port = u.port or (443 if tls else 80)
    host_header = u.hostname if u.port is None else "%s:%d" % (u.hostname, u.port)
    path = (u.path or "/") + ("?" + u.query if u.query else "")

    async def exchange():
        reader, writer = await asyncio.open_connection(
            u.hostname, port, ssl=ssl.create_default_context() if tls else None
        )
        try:
            head = ["POST %s HTTP/1.1" % path, "Host: " + host_header, "Connection: close",
                    "Content-Length: %d" % len(body)]
            head += ["%s: %s" % kv for kv in headers.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                raise ValueError("not an HTTP answer: %r" % status_line[:80])
            status = int(parts[1])
            fields = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                fields[name.strip().lower()] = value.strip()
            if "chunked" in fields.get("transfer-encoding", "").lower():
                data = b""
                while True:
                    size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        break
                    data += await reader.readexactly(size)
                    await reader.readline()
            elif "content-length" in fields:
                data = await reader.readexactly(int(fields["content-length"]))
            else:
                data = await reader.read()
            return status, data.decode("utf-8", "replace")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    return await asyncio.wait_for(exchange(), timeout)


async def compute_score_async(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """verl's custom reward function (async: awaited on the reward worker's event loop, so any
    number of calls wait for the service without holding a thread)."""
    url, token, retries, backoff, timeout = _settings(kwargs)
    body, headers = _request(ground_truth, solution_str, extra_info, token)
    attempt = 0
    while True:
        try:
            try:
                status, text = await _post_async(url + "/v1/rewards", body, headers, timeout)
            except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                raise _Retry("arlrr serve at %s: %r" % (url, e)) from None
            if status != 200:
                raise _http_failure(status, text)
            try:
                answer = json.loads(text)
            except ValueError as e:
                raise _Retry("arlrr serve at %s: broken answer: %s" % (url, e)) from None
            return to_verl(answer)
        except _Retry as e:
            await asyncio.sleep(_retry_or_raise(attempt, retries, backoff, str(e)))
            attempt += 1


def compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos, **kwargs):
    """verl <= 0.7.0 only: `reward_model.reward_manager=batch custom_reward_function.name=compute_score_batch`
    (verl's BatchRewardManager; removed in verl 0.7.1 by its PR #5237, where the batch manager is
    `Unknown reward manager: batch`). Sends each prompt's completions together, as one group (the
    batch may be reordered by trainer.balance_batch, so they are grouped by id wherever they
    stand) and answers in the batch's order, each entry as compute_score's. A failed completion
    raises, as compute_score does after its retries."""
    url, token, retries, backoff, timeout = _settings(kwargs)
    items, item_of, slots = [], {}, []
    for gt, text in zip(ground_truths, solution_strs):
        key = str(gt)
        if key not in item_of:
            item_of[key] = len(items)
            items.append({"prompt_id": key, "completions": []})
        completions = items[item_of[key]]["completions"]
        slots.append((item_of[key], len(completions)))
        completions.append(text)
    evaluating = all(is_eval(e) for e in extra_infos) if extra_infos else False
    headers = _headers(token, evaluating)
    body = json.dumps({"items": items}).encode()

    def scores():
        answer = _post(url, body, headers, timeout)
        failed = [
            c["error"] for item in answer["items"] for c in item["completions"] if c.get("error")
        ]
        if failed:
            raise _Retry("grading failed for %d completions: %s" % (len(failed), failed[0]))
        out = []
        for i, j in slots:
            one = dict(answer, items=[{"completions": [answer["items"][i]["completions"][j]]}])
            out.append(to_verl(one))
        return out

    return _retrying(scores, retries, backoff)


if __name__ == "__main__":
    import sys

    # python3 verl_reward.py [--async] [--eval] PROMPT_ID COMPLETION... : prints the dicts as JSON
    args = sys.argv[1:]
    use_async = "--async" in args
    info = {"split": "test"} if "--eval" in args else {}
    args = [a for a in args if a not in ("--async", "--eval")]
    if not args:
        sys.exit("usage: verl_reward.py [--async] [--eval] PROMPT_ID COMPLETION...")
    prompt_id, texts = args[0], args[1:]
    try:
        if use_async:

            async def main():
                calls = [compute_score_async("arlrr", t, prompt_id, dict(info)) for t in texts]
                return await asyncio.gather(*calls)

            scores = asyncio.run(main())
        else:
            scores = [compute_score("arlrr", t, prompt_id, dict(info)) for t in texts]
    except ArlrrRewardError as e:
        sys.exit("verl_reward.py: no reward: %s" % e)
    print(json.dumps(scores))
