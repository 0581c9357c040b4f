"""Drives a `reward_func` file (examples/openrlhf_reward_func.py) the way OpenRLHF's rollout actor
calls it, against a running `arlrr serve`, and prints what every completion got as JSON.

Two engines:

- `replay` (standard library only; what `cargo test --test client_openrlhf` runs): OpenRLHF's
  request pattern copied from openrlhf 0.11.2 (PyPI wheel; git 3c3be62 has the same code):
  * the file is loaded with `spec_from_file_location("reward_func", path)` while the rollout
    actor's event loop runs its `async def __init__` (trainer/ray/vllm_engine.py:37, :59 ->
    utils/agent.py:196-205); `--load outside` loads it before the loop instead;
  * every prompt is dispatched at once, one `generate_responses` per prompt
    (trainer/ppo_utils/samples_generator.py:156, :195-241), which gathers n_samples_per_prompt
    `execute` calls (vllm_engine.py:183-206);
  * each `execute` awaits its generation, then `asyncio.gather(asyncio.to_thread(reward_func,
    [query], [prompt], [label]))` (agent.py:286-325): one completion per call, in the loop's
    default thread pool, with no retry; an exception is logged and leaves the sample's reward
    None (agent.py:303-304);
  * the reward read back is `rewards`, `scores` (or `rewards`), `extra_logs` (agent.py:294-302).
- `openrlhf`: the same through OpenRLHF's own `SingleTurnAgentExecutor.execute` from an installed
  openrlhf (its utils/agent.py and utils/logging_utils.py are loaded by path, as its own
  tests/test_agent.py does, so torch, vLLM and Ray are not needed; it needs aiohttp), with a
  character tokenizer and an engine that answers the given completions:

      python3 -m venv ~/.cache/arlrr/engines/openrlhf
      ~/.cache/arlrr/engines/openrlhf/bin/pip install --no-deps openrlhf==0.11.2
      ~/.cache/arlrr/engines/openrlhf/bin/pip install aiohttp
      ~/.cache/arlrr/engines/openrlhf/bin/python scripts/engines/check_openrlhf.py \
          --engine openrlhf --cases cases.json --pool 32 --expect-group 8

`--pool P` is the size of the loop's default pool before the file is loaded: asyncio's own is
min(32, CPUs + 4), so 32 on a rollout node. `--cases` is a JSON list of {"label", "prompt",
"completions"}; each completion is one sample, generated after a random delay up to
`--gen-delay` seconds so that prompts interleave as vLLM's do. `--out FILE` writes the report
there (OpenRLHF's logger writes to stdout). `--eval` sends every label as
`eval:<label>` (an evaluation rollout). Environment: ARLRR_URL and the reward_func's own.
"""
import argparse
import asyncio
import importlib.util
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace


def load_reward_func(path):
    # agent.py:201-205
    spec = importlib.util.spec_from_file_location("reward_func", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reward_func


class ReplayExecutor:
    """SingleTurnAgentExecutor's reward path (agent.py:280-325) after a simulated generation."""

    def __init__(self, func_path, gen):
        self.reward_func = load_reward_func(func_path)
        self.gen = gen

    async def execute(self, prompt, label):
        completion = await self.gen(prompt)
        query = prompt + completion
        output = {"prompt": prompt, "label": label, "reward": None, "scores": None, "extra_logs": {}}
        try:
            rewards_info_list = await asyncio.gather(
                asyncio.to_thread(self.reward_func, [query], [prompt], [label])
            )
            rewards_info = rewards_info_list[0] if rewards_info_list else None
            if rewards_info:
                score_value = rewards_info.get("scores")
                if score_value is None:
                    score_value = rewards_info.get("rewards")
                output.update(
                    reward=rewards_info.get("rewards"),
                    scores=score_value,
                    extra_logs=rewards_info.get("extra_logs") or {},
                )
        except Exception as e:
            output["error"] = str(e)
        output["query"] = query
        return output


class CharTokenizer:
    """Enough of a Hugging Face tokenizer for SingleTurnAgentExecutor: one id per character."""

    class _Ids(list):
        def tolist(self):
            return list(self)

    def __call__(self, text, add_special_tokens=False, return_tensors=None):
        return {"input_ids": [self._Ids(ord(c) for c in text)]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


class FakeEngine:
    """RolloutRayActor.generate's answer shape (vllm_engine.py:155-179) with given completions."""

    def __init__(self, gen):
        self.gen = gen

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        text = await self.gen("".join(chr(i) for i in prompt_token_ids))
        out = SimpleNamespace(token_ids=[ord(c) for c in text], text=text, finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[out])


def load_openrlhf_agent():
    spec = importlib.util.find_spec("openrlhf")
    if spec is None:
        sys.exit("openrlhf is not installed in this Python (see --help)")
    root = Path(list(spec.submodule_search_locations)[0])
    for name, rel in (("openrlhf.utils.logging_utils", "utils/logging_utils.py"), ("_openrlhf_agent", "utils/agent.py")):
        s = importlib.util.spec_from_file_location(name, root / rel)
        m = importlib.util.module_from_spec(s)
        sys.modules[name] = m
        s.loader.exec_module(m)
    return sys.modules["_openrlhf_agent"], root


async def run(args, cases):
    loop = asyncio.get_running_loop()
    # the stock default pool of the rollout actor's loop
    loop.set_default_executor(ThreadPoolExecutor(max_workers=args.pool, thread_name_prefix="asyncio"))
    rng = random.Random(args.seed)
    by_prompt = {c["prompt"]: list(c["completions"]) for c in cases}
    handed = {p: 0 for p in by_prompt}

    async def gen(prompt):
        # vLLM finishes samples at different times, so prompts interleave
        i = handed[prompt]
        handed[prompt] += 1
        await asyncio.sleep(rng.uniform(0, args.gen_delay))
        return by_prompt[prompt][i]

    # the actor's async __init__ builds the executor, which loads the file (vllm_engine.py:59)
    openrlhf_root = None
    if args.engine == "openrlhf":
        agent, openrlhf_root = load_openrlhf_agent()
        executor = agent.SingleTurnAgentExecutor(args.func)
        engine, tok = FakeEngine(gen), CharTokenizer()
        params = SimpleNamespace(max_tokens=None, logprobs=None)

        async def execute(prompt, label):
            out = await executor.execute(prompt, label, params, 1 << 20, tok, engine)
            out["query"] = tok.decode(out["observation_tokens"])
            return out

    else:
        executor = REPLAY or ReplayExecutor(args.func, gen)
        executor.gen = gen
        execute = executor.execute

    async def generate_responses(prompt, label, n):
        # vllm_engine.py:183-206
        return await asyncio.gather(*[execute(prompt, label) for _ in range(n)])

    peak = threading.active_count()
    done = asyncio.Event()

    async def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, threading.active_count())
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    start = time.monotonic()
    label = (lambda c: "eval:" + c["label"]) if args.eval else (lambda c: c["label"])
    per_prompt = await asyncio.gather(
        *[generate_responses(c["prompt"], label(c), len(c["completions"])) for c in cases]
    )
    seconds = time.monotonic() - start
    done.set()
    await watcher

    samples = []
    for case, outs in zip(cases, per_prompt):
        for out in outs:
            logs = out.get("extra_logs") or {}
            size = logs.get("arlrr/group_size")
            reward = out.get("reward")
            samples.append(
                {
                    "label": case["label"],
                    "completion": case["completions"].index(out["query"][len(case["prompt"]) :]),
                    "reward": None if reward is None else float(reward[0]),
                    "group_size": None if size is None else float(size[0]),
                    "error": out.get("error"),
                }
            )
    return {
        "engine": args.engine,
        "openrlhf": str(openrlhf_root) if openrlhf_root else None,
        "pool": args.pool,
        "load": args.load,
        "seconds": round(seconds, 3),
        "peak_threads": peak,
        "samples": samples,
    }


REPLAY = None


def main():
    global REPLAY
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--func", default=str(Path(__file__).resolve().parents[2] / "examples/openrlhf_reward_func.py"))
    p.add_argument("--cases", required=True)
    p.add_argument("--engine", choices=["replay", "openrlhf"], default="replay")
    p.add_argument("--pool", type=int, default=32)
    p.add_argument("--load", choices=["in-loop", "outside"], default="in-loop")
    p.add_argument("--gen-delay", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action="store_true")
    p.add_argument("--out", help="write the JSON report here rather than to stdout (OpenRLHF logs to stdout)")
    p.add_argument("--expect-group", type=int, help="exit 1 unless every sample was rewarded in a group of this size")
    args = p.parse_args()
    with open(args.cases) as f:
        cases = json.load(f)
    if len({c["prompt"] for c in cases}) != len(cases):
        sys.exit("every case needs a prompt text of its own (the engine sees only the prompt)")
    if args.load == "outside":
        if args.engine != "replay":
            sys.exit("--load outside is for --engine replay")
        REPLAY = ReplayExecutor(args.func, None)
    report = asyncio.run(run(args, cases))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f)
    else:
        print(json.dumps(report))
    if args.expect_group is not None:
        bad = [s for s in report["samples"] if s["error"] or s["group_size"] != args.expect_group]
        if bad:
            print(f"{len(bad)} of {len(report['samples'])} samples not rewarded in a whole group: {bad[:3]}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
