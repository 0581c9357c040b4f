"""ARL-RR rewards for TRL's GRPOTrainer from a running `arlrr serve` (standard library only).

Written against TRL 1.16 (`trl/trainer/grpo_trainer.py`, `_calculate_rewards`). Two ways in:

1. One scalar reward, the service's objective (`alternating`: the active class; `scalarized`;
   `gdpo`):

       from trl import GRPOConfig, GRPOTrainer
       from trl_reward import arlrr_reward, ArlrrStepCallback
       trainer = GRPOTrainer(model=..., reward_funcs=[arlrr_reward], train_dataset=ds,
                             args=GRPOConfig(...), callbacks=[ArlrrStepCallback()])

2. GDPO done by TRL itself: one reward function per class, normalized per group and per class
   after TRL gathers every process's rewards (so a group is never split), then summed:

       from trl_reward import class_rewards
       trainer = GRPOTrainer(model=..., reward_funcs=class_rewards(), train_dataset=ds,
                             args=GRPOConfig(..., multi_objective_aggregation="normalize_then_sum"))

   Serve with `--objective scalarized` (the default `--grade all`): the per-class functions
   read each completion's `classes`, which every objective answers when it grades every class,
   and `scalarized` neither waits for groups nor depends on the schedule. The functions of
   one batch share one request: N classes cost one grading.

`ds` needs a `prompt_id` column holding the rubric example ids (TRL passes every dataset column
to reward functions as a keyword argument); without it the prompt text is matched. TRL repeats
each prompt `num_generations` times in a row; consecutive completions of one prompt are sent as
one item. With several processes a group may be split between them: `--objective gdpo` through
`arlrr_reward` then needs `arlrr serve --group-size <num_generations>`, which collects a
prompt's completions across requests (path 2 needs nothing of the kind).

What comes back:
- a failed grading (the service answers `reward: null` with an `error`) is retried
  ARLRR_RETRIES times (3) with backoff, the failed completions alone, then returned as None:
  TRL turns it into NaN and leaves it out (a completion every function scored None gets a zero
  advantage). Under `gdpo`, `arlrr_reward` does not retry single completions (a completion
  graded alone is no group): its failures are None at once; the service's judge has its own
  retries. A connection error or a 5xx answer is retried the same way; a 4xx is raised.
- "no signal" (the class has no positive-point criterion for the prompt, or a `gdpo` group
  with no spread: `reward: null` without `error`) is the same for the whole group, so its
  advantage is 0 whatever is returned. The per-class functions return None (TRL's per-class
  normalization then leaves the class out of that group, and its logged mean leaves it out);
  `arlrr_reward` returns 0.0 (ARLRR_NO_SIGNAL=none makes it None; then TRL warns that every
  reward function returned None for those rows).
- per-class figures go to TRL's `log_metric` once per completion, so TRL's average over the
  processes is the mean over completions: `arlrr/<class>` (graded completions where the class
  is defined), `arlrr/overall`, `arlrr/failed` (share of completions whose grading failed).

Steps: TRL passes `trainer_state`; `trainer_state.global_step` (absolute, so a repeat changes
nothing) is reported by the main process only, when it changes, before its rewards are asked
for. The other processes wait (up to ARLRR_STEP_WAIT_SECS, 60) until the service has reached
that step, so a phase change never splits a batch between two classes. `ArlrrStepCallback`
also reports each step as it ends, so the service's step equals the trainer's (without it, it
lags one step behind until the next generation). Evaluation calls (TRL calls reward functions
in `evaluate()` too; the trainer's model is then not in training mode) are sent with
`x-arlrr-eval: 1`, never counted, and report no step. Reported steps and
`--completions-per-step` do not mix (both would move the schedule): with TRL's `trainer_state`
serve without it, or set ARLRR_REPORT_STEPS=0 to count on the service instead.

AsyncGRPO (`trl.experimental.async_grpo`) calls reward functions once per group, in a spawned
process, with the dataset columns only: no `trainer_state`, no `log_metric`, and sums the
functions' rewards (no per-class normalization). Use `arlrr_reward` (any objective; `gdpo`
needs no --group-size, each call is a whole group) and `callbacks=[ArlrrStepCallback()]`, which
runs in the trainer's process; or, without the callback, count steps on the service with
`--completions-per-step` (approximate there: token budgeting varies a step's size, and
rollouts discarded as stale were graded and counted).

Environment: ARLRR_URL (default http://127.0.0.1:8000), ARLRR_TOKEN (bearer token, optional),
ARLRR_RETRIES (3), ARLRR_REPORT_STEPS (1; 0 = never report), ARLRR_BACKOFF_SECS (1.0, doubled per try up to 30), ARLRR_STEP_WAIT_SECS
(60), ARLRR_NO_SIGNAL (`0` or `none`), ARLRR_EVAL=1 (every call is evaluation traffic).
"""
import hashlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

_lock = threading.Lock()  # the answers below
_step_lock = threading.Lock()  # the step state
# answers of the last batches: {key: _Pending}; the class functions of a batch share one
_answers = {}
_ANSWERS_KEPT = 64
_steps = {"reported": None, "waited": None, "wait_broken": False}


def _env_float(name, default):
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _url():
    return os.environ.get("ARLRR_URL", "http://127.0.0.1:8000").rstrip("/")


class ServiceError(RuntimeError):
    """The service refused a request (4xx): a configuration error, never retried."""


def _backoff(attempt):
    return min(_env_float("ARLRR_BACKOFF_SECS", 1.0) * 2**attempt, 30.0)


def _request(method, path, body=None, evaluation=False):
    """JSON request; connection errors and 5xx answers are retried with backoff."""
    headers = {"Content-Type": "application/json"}
    if os.environ.get("ARLRR_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["ARLRR_TOKEN"]
    if evaluation:
        headers["x-arlrr-eval"] = "1"
    data = None if body is None else json.dumps(body).encode()
    retries = int(_env_float("ARLRR_RETRIES", 3))
    for attempt in range(retries + 1):
        req = urllib.request.Request(_url() + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")[:2000]
            if e.code < 500:
                raise ServiceError(f"{method} {path}: HTTP {e.code}: {text}") from None
            error = f"HTTP {e.code}: {text}"
        except (urllib.error.URLError, OSError, ValueError) as e:  # refused, reset, timeout, bad JSON
            error = repr(e)
        if attempt == retries:
            raise RuntimeError(f"{method} {path} failed {retries + 1} times; last: {error}")
        print(f"trl_reward: {method} {path}: {error}; retrying", file=sys.stderr)
        time.sleep(_backoff(attempt))


def _trainer(kwargs):
    # TRL passes its own bound method `GRPOTrainer._log_metric` as `log_metric`
    return getattr(kwargs.get("log_metric"), "__self__", None)


def _is_eval(kwargs):
    if os.environ.get("ARLRR_EVAL") == "1":
        return True
    model = getattr(_trainer(kwargs), "model", None)
    # TRL's own test: mode = "train" if self.model.training else "eval"
    return model is not None and not getattr(model, "training", True)


def _is_main(kwargs):
    acc = getattr(_trainer(kwargs), "accelerator", None)
    if acc is not None and hasattr(acc, "is_main_process"):
        return bool(acc.is_main_process)
    for var in ("RANK", "LOCAL_RANK"):
        if os.environ.get(var, "").strip().isdigit():
            return int(os.environ[var]) == 0
    return True


def report_step(step):
    """Reports the trainer's absolute step (a repeat is a no-op on the service)."""
    with _step_lock:
        if _steps["reported"] == step:
            return
        _request("POST", "/v1/schedule/report", {"step": step})
        _steps["reported"] = step


def _sync_step(step, main):
    """The main process reports `step`; the others wait until the service is there."""
    if main:
        report_step(step)
        return
    with _step_lock:
        if _steps["waited"] == step or _steps["wait_broken"]:
            return
        deadline = time.monotonic() + _env_float("ARLRR_STEP_WAIT_SECS", 60)
        pause = 0.02
        while _request("GET", "/v1/schedule").get("step", 0) < step:
            if time.monotonic() > deadline:
                # the service does not follow reported steps (--completions-per-step?)
                print(
                    f"trl_reward: the service never reached step {step}; not waiting again",
                    file=sys.stderr,
                )
                _steps["wait_broken"] = True
                return
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        _steps["waited"] = step


def _text(x):
    # conversational datasets give lists of {"role", "content"} messages
    return x[-1]["content"] if isinstance(x, list) else x


def _items(prompts, texts, ids, indices):
    """Consecutive completions of one prompt as one item; `indices` into the batch."""
    items, where = [], []
    for i in indices:
        key = ids[i] if ids else json.dumps(prompts[i])
        if not items or where[-1][0] != key or where[-1][1] != i - 1:
            items.append(dict({"prompt_id": key} if ids else {"prompt": prompts[i]}, completions=[]))
            where.append([key, i, []])
        items[-1]["completions"].append(texts[i])
        where[-1][1] = i
        where[-1][2].append(i)
    return items, [w[2] for w in where]


def _post_rewards(prompts, texts, ids, indices, evaluation):
    items, members = _items(prompts, texts, ids, indices)
    answer = _request("POST", "/v1/rewards", {"items": items}, evaluation)
    out = {}
    for item, idx in zip(answer["items"], members):
        for i, c in zip(idx, item["completions"]):
            out[i] = c
    return answer, out


def _failed(c):
    return c.get("reward") is None and c.get("error") is not None


class _Pending:
    def __init__(self):
        self.done = threading.Event()
        self.value = None
        self.error = None


def _grade(prompts, completions, prompt_id=None, trainer_state=None, **kwargs):
    """The service's answer for this batch: (answer, [completion dict per completion])."""
    texts = [_text(c) for c in completions]
    ids = list(prompt_id) if prompt_id is not None else None
    evaluation = _is_eval(kwargs)
    step = getattr(trainer_state, "global_step", None)
    content = json.dumps([ids, None if ids else prompts, texts, evaluation, step], default=str)
    # the same list object is handed to every reward function of one batch (and the step is in
    # the content: a new batch may land at a freed list's address with the same texts)
    key = (id(completions), hashlib.sha256(content.encode()).hexdigest())
    with _lock:
        pending = _answers.get(key)
        owner = pending is None
        if owner:
            pending = _answers[key] = _Pending()
            while len(_answers) > _ANSWERS_KEPT:
                _answers.pop(next(iter(_answers)))
    if not owner:
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.value
    try:
        pending.value = _fetch(prompts, texts, ids, trainer_state, evaluation, kwargs)
    except BaseException as e:
        pending.error = e
        with _lock:
            _answers.pop(key, None)
        raise
    finally:
        pending.done.set()
    return pending.value


def _fetch(prompts, texts, ids, trainer_state, evaluation, kwargs):
    step = getattr(trainer_state, "global_step", None)
    reporting = os.environ.get("ARLRR_REPORT_STEPS", "1") != "0"
    if step is not None and not evaluation and reporting:
        _sync_step(int(step), _is_main(kwargs))
    everyone = list(range(len(texts)))
    answer, got = _post_rewards(prompts, texts, ids, everyone, evaluation)
    # under gdpo a completion graded alone is no group: no retry of single completions
    if answer.get("objective") != "gdpo":
        retries = int(_env_float("ARLRR_RETRIES", 3))
        for attempt in range(retries):
            failed = [i for i in everyone if _failed(got[i])]
            if not failed:
                break
            print(
                f"trl_reward: grading failed for {len(failed)} completion(s): "
                f"{got[failed[0]]['error']}; retrying them",
                file=sys.stderr,
            )
            time.sleep(_backoff(attempt))
            _, again = _post_rewards(prompts, texts, ids, failed, evaluation)
            got.update(again)
    results = [got[i] for i in everyone]
    _log(answer, results, kwargs.get("log_metric"))
    return answer, results


def _log(answer, results, log_metric):
    if log_metric is None:
        return
    for c in results:
        log_metric("arlrr/failed", 1.0 if _failed(c) else 0.0)
        if c.get("overall") is not None:
            log_metric("arlrr/overall", float(c["overall"]))
        for name, value in (c.get("classes") or {}).items():
            if value is not None:
                log_metric(f"arlrr/{name}", float(value))


def _no_signal():
    return None if os.environ.get("ARLRR_NO_SIGNAL", "0").lower() == "none" else 0.0


def arlrr_reward(prompts, completions, prompt_id=None, trainer_state=None, **kwargs):
    """The service's scalar reward under its objective; None where grading failed."""
    _, results = _grade(prompts, completions, prompt_id, trainer_state, **kwargs)
    no_signal = _no_signal()
    return [
        None if _failed(c) else (no_signal if c.get("reward") is None else c["reward"])
        for c in results
    ]


class ClassReward:
    """One class's reward (or `overall`), a TRL reward function named `arlrr_<class>`.

    A module-level class, so it pickles (AsyncGRPO sends reward functions to a spawned
    process); TRL logs it under its `__name__`.
    """

    def __init__(self, name):
        self.name = name
        self.__name__ = f"arlrr_{name}"

    def __repr__(self):
        return f"ClassReward({self.name!r})"

    def __call__(self, prompts, completions, prompt_id=None, trainer_state=None, **kwargs):
        answer, results = _grade(prompts, completions, prompt_id, trainer_state, **kwargs)
        if self.name != "overall":
            if self.name not in answer.get("classes", []):
                raise ServiceError(f"the service has no class {self.name!r}: {answer.get('classes')}")
            graded = answer.get("graded_classes", answer.get("classes", []))
            if self.name not in graded:
                raise ServiceError(
                    f"class {self.name!r} is not graded (serve without --grade active "
                    "for the per-class reward functions)"
                )
        out = []
        for c in results:
            if self.name == "overall":
                out.append(c.get("overall"))
            else:
                out.append((c.get("classes") or {}).get(self.name))
        return [None if v is None else float(v) for v in out]


def class_rewards(classes=None, overall=False):
    """One reward function per class (the service's classes when `classes` is None), plus
    `arlrr_overall` when `overall`: for `multi_objective_aggregation="normalize_then_sum"`."""
    if classes is None:
        classes = _request("GET", "/v1/schedule")["classes"]
    return [ClassReward(c) for c in classes] + ([ClassReward("overall")] if overall else [])


def _step_callback_class():
    from transformers import TrainerCallback

    class ArlrrStepCallback(TrainerCallback):
        """Reports `state.global_step` at each step's end from the main process, so the
        service's step equals the trainer's (AsyncGRPO: the only step source)."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                report_step(int(state.global_step))

    return ArlrrStepCallback


def __getattr__(name):
    # `from trl_reward import ArlrrStepCallback` imports transformers then, and only then
    if name == "ArlrrStepCallback":
        cls = globals()[name] = _step_callback_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    # python3 trl_reward.py [--classes] PROMPT_ID COMPLETION... : prints the rewards as JSON
    # (`--classes`: {"arlrr_<class>": [...]} from the per-class functions)
    args = sys.argv[1:]
    per_class = bool(args) and args[0] == "--classes"
    if per_class:
        args = args[1:]
    if not args:
        sys.exit(__doc__.split("\n\n")[0] + "\nusage: trl_reward.py [--classes] PROMPT_ID COMPLETION...")
    ids, texts = [args[0]] * (len(args) - 1), args[1:]
    batch = dict(prompts=[""] * len(texts), completions=texts, prompt_id=ids)
    if per_class:
        print(json.dumps({f.__name__: f(**batch) for f in class_rewards()}))
    else:
        print(json.dumps(arlrr_reward(**batch)))
