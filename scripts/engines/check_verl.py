"""Drives examples/verl_reward.py through verl's own reward loop, in-process on CPU.

Run with the venv of `scripts/engines/setup.sh verl` (verl==0.9.1 from PyPI):

    scripts/engines/setup.sh verl
    ~/.cache/arlrr/engines/verl/bin/python scripts/engines/check_verl.py [--arlrr target/release/arlrr]

What runs is verl's code, not a copy (verl 0.9.1 wheel; the same files as
verl-project/verl@1dda039b9c6311889a9c9a26040677e1254814f9, where
verl/experimental/reward_loop/ is also identical to the v0.9.0 tag 483b8a0):
  * the trainer config: Hydra composes verl's own `ppo_trainer` config with the command-line
    overrides docs/service.md gives (`reward.custom_reward_function.path=...`, ...), as
    `python -m verl.trainer.main_ppo` does;
  * `RewardLoopWorker` (verl/experimental/reward_loop/reward_loop.py:93): it loads the custom
    reward function (verl/trainer/ppo/reward.py:50 get_custom_reward_fn, with `reward_kwargs`),
    the reward manager (`naive` or `gdpo`, from verl's registry) and the tokenizer from
    `actor_rollout_ref.model.path`; its `compute_score_batch` runs every sample's `run_single`
    concurrently (asyncio.gather), sync functions in the event loop's thread pool, coroutine
    functions awaited;
  * `RewardLoopManager.compute_rm_score` (reward_loop.py:343), which pads and chunks the batch
    over the reward workers and assembles `rm_scores` and the `reward_extra_info` arrays; its
    Ray calls are answered by in-process workers, each on its own thread and event loop, as
    Ray actors would (`ray.get` is the one function replaced);
  * the legacy trainer's `compute_advantage` (verl/trainer/ppo/ray_trainer.py:187) with
    `algorithm.adv_estimator=gdpo`, i.e. `compute_gdpo_outcome_advantage`
    (verl/trainer/ppo/core_algos.py:362).
The batch is what verl's agent loop hands the reward loop (agent_loop.py:985-1023): prompts,
responses, attention_mask, and per row data_source, reward_model.ground_truth, extra_info, uid.

Checks (each prints PASS or FAIL; exit status 1 on any FAIL):
  1. naive, sync and async: every class, overall and score equal the per-class scores computed
     from `arlrr grade` on the same completions with the same judge (configs/judges/rules.toml);
     a class with no signal is 0.0 with <class>_defined = 0.0.
  2. gdpo (verl's reward manager `gdpo` + estimator `gdpo`, gdpo_reward_keys = the classes):
     the same per-class values, and verl's GDPO advantages equal those verl computes from the
     `arlrr grade` scores; all finite; the no-signal class adds exactly 0. (None in its place,
     which verl turns into NaN, makes every advantage of the batch NaN: shown.)
  3. a judge answering HTTP 500: verl's reward loop raises ArlrrRewardError; no reward, no 0.0.
  4. validation rows (extra_info.split = "test") are graded but not counted as steps
     (--completions-per-step = the training batch).
  5. the service's own gdpo with --group-size n: concurrent async calls through verl's loop get
     the rewards one request with the whole group gets (skipped, with the reason, when the
     service answers otherwise, e.g. before /v1/rewards collected groups).
  6. the old top-level `custom_reward_function.path` key: verl 0.9's main_ppo does not migrate
     it, so the reward loop falls back to verl's default_compute_score, which raises.
"""

import argparse
import asyncio
import http.server
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EXAMPLE = os.path.join(ROOT, "examples", "verl_reward.py")
RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append((name, bool(ok)))
    print("%s  %s%s" % ("PASS" if ok else "FAIL", name, (": " + detail) if detail else ""), flush=True)


# --- the service and `arlrr grade` -------------------------------------------------------------


class Service:
    def __init__(self, arlrr, workdir, args, name):
        self.log = open(os.path.join(workdir, name + ".stderr"), "w")
        self.proc = subprocess.Popen(
            [arlrr, "serve", "--port", "0", "--state-dir", os.path.join(workdir, name)] + args,
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        line = self.proc.stdout.readline()
        if "http://" not in line:
            raise SystemExit("arlrr serve did not start: %r (see %s)" % (line, self.log.name))
        self.url = line.strip().rsplit(" ", 1)[-1]

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.load(r)

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def grade_scores(arlrr, data, judge, pairs, workdir):
    """Per-class scores of (prompt_id, completion) pairs from `arlrr grade`'s verdicts: the met
    points of a class over its positive points (None: no positive point, no signal)."""
    responses = os.path.join(workdir, "responses.jsonl")
    with open(responses, "w") as f:
        for i, (pid, text) in enumerate(pairs):
            f.write(json.dumps({"prompt_id": pid, "completion": text, "response_id": str(i)}) + "\n")
    out = os.path.join(workdir, "grades.jsonl")
    cmd = [arlrr, "grade", "--data", data, "--responses", responses, "--judge", judge, "--out", out]
    subprocess.run(cmd, check=True, capture_output=True)
    examples = {}
    with open(data) as f:
        for line in f:
            e = json.loads(line)
            examples[e["prompt_id"]] = e
    scores = []
    with open(out) as f:
        grades = [json.loads(line) for line in f]
    grades.sort(key=lambda g: int(g["response_id"]))
    for g in grades:
        rubrics = examples[g["prompt_id"]]["rubrics"]
        met_pts, pos_pts, all_met, all_pos = {}, {}, 0.0, 0.0
        for r, met in zip(rubrics, g["met"]):
            axis = [t[len("axis:"):] for t in r["tags"] if t.startswith("axis:")][0]
            met_pts.setdefault(axis, 0.0)
            pos_pts.setdefault(axis, 0.0)
            if met:
                met_pts[axis] += r["points"]
                all_met += r["points"]
            if r["points"] > 0:
                pos_pts[axis] += r["points"]
                all_pos += r["points"]
        s = {a: (met_pts[a] / pos_pts[a] if pos_pts[a] > 0 else None) for a in met_pts}
        s["overall"] = all_met / all_pos if all_pos > 0 else None
        scores.append(s)
    return scores, cmd


# --- verl's side ---------------------------------------------------------------------------------


def byte_tokenizer(path):
    """A real Hugging Face tokenizer, built offline: byte-level BPE without merges (one token per
    byte), saved where verl's `hf_tokenizer(actor_rollout_ref.model.path)` loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = {chr(c): i for i, c in enumerate(cs)}
    vocab["<|endoftext|>"] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(path)
    return fast


def verl_config(overrides):
    """verl's trainer config with command-line overrides, as `python -m verl.trainer.main_ppo`
    composes it."""
    import verl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.path.join(os.path.dirname(verl.__file__), "trainer", "config"), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def make_batch(tokenizer, rows):
    """The DataProto verl's agent loop gives the reward loop: rows of (prompt_id, prompt text,
    completion, uid, extra_info)."""
    import numpy as np
    import torch
    from tensordict import TensorDict
    from verl import DataProto

    prompts = [tokenizer.encode(r[1]) for r in rows]
    responses = [tokenizer.encode(r[2]) for r in rows]
    pl = max(len(p) for p in prompts)
    rl = max(max(len(r) for r in responses), 1)
    pad = tokenizer.pad_token_id
    p_t = torch.full((len(rows), pl), pad, dtype=torch.int64)
    r_t = torch.full((len(rows), rl), pad, dtype=torch.int64)
    mask = torch.zeros((len(rows), pl + rl), dtype=torch.int64)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        p_t[i, pl - len(p):] = torch.tensor(p)  # prompts left-padded, responses right-padded
        r_t[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
        mask[i, pl - len(p): pl + len(r)] = 1
    input_ids = torch.cat([p_t, r_t], dim=1)
    position_ids = torch.clamp(torch.cumsum(mask, dim=1) - 1, min=0)
    batch = TensorDict(
        {"prompts": p_t, "responses": r_t, "attention_mask": mask, "input_ids": input_ids, "position_ids": position_ids},
        batch_size=len(rows),
    )
    non_tensor = {
        "data_source": np.array(["arlrr"] * len(rows), dtype=object),
        "reward_model": np.array([{"ground_truth": r[0], "style": "rubric"} for r in rows], dtype=object),
        "extra_info": np.array([dict(r[4]) for r in rows], dtype=object),
        "uid": np.array([r[3] for r in rows], dtype=object),
    }
    return DataProto(batch=batch, non_tensor_batch=non_tensor)


class InProcessWorkers:
    """verl's RewardLoopWorker instances standing in for its Ray actors: each on its own thread and
    event loop (as an async Ray actor runs), driven by verl's RewardLoopManager.compute_rm_score."""

    def __init__(self, config, n):
        from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

        self.threads = []
        self.workers = []
        for _ in range(n):
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            holder = {}

            def run(loop=loop, holder=holder, ready=ready):
                asyncio.set_event_loop(loop)

                async def init():
                    holder["w"] = RewardLoopWorker(config, None)

                loop.run_until_complete(init())
                ready.set()
                loop.run_forever()

            t = threading.Thread(target=run, daemon=True)
            t.start()
            ready.wait()
            self.threads.append(t)
            self.workers.append((loop, holder["w"]))

    def handles(self):
        class Method:
            def __init__(self, loop, fn):
                self.loop, self.fn = loop, fn

            def remote(self, *args):
                return asyncio.run_coroutine_threadsafe(self.fn(*args), self.loop)

        class Handle:
            def __init__(self, loop, worker):
                self.compute_score_batch = Method(loop, worker.compute_score_batch)
                self.compute_score = Method(loop, worker.compute_score)

        return [Handle(loop, w) for loop, w in self.workers]

    def stop(self):
        async def cancel_rest():
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        for loop, _ in self.workers:
            asyncio.run_coroutine_threadsafe(cancel_rest(), loop).result()
            loop.call_soon_threadsafe(loop.stop)


def compute_rm_score(config, data, n_workers=2):
    """verl's RewardLoopManager.compute_rm_score over in-process workers."""
    import verl.experimental.reward_loop.reward_loop as rl
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    workers = InProcessWorkers(config, n_workers)
    manager = rl.RewardLoopManager.__new__(rl.RewardLoopManager)
    manager.config = config
    manager.reward_model_manager = None
    manager.reward_router_address = None
    manager.reward_loop_workers = workers.handles()
    manager.reward_manager_cls = resolve_reward_manager_cls(config)
    real_get = rl.ray.get
    rl.ray.get = lambda futures: [f.result() for f in futures]
    try:
        return manager.compute_rm_score(data)
    finally:
        rl.ray.get = real_get
        workers.stop()


def overrides(url, name, manager, tok_dir, extra=()):
    return [
        "reward.custom_reward_function.path=" + EXAMPLE,
        "reward.custom_reward_function.name=" + name,
        "+reward.custom_reward_function.reward_kwargs.arlrr_url=" + url,
        "reward.reward_manager.name=" + manager,
        "reward.num_workers=2",
        "actor_rollout_ref.model.path=" + tok_dir,
        "trainer.experiment_name=check_verl",
    ] + list(extra)


def note(text):
    print("NOTE  " + text, flush=True)


def skip(text):
    print("SKIP  " + text, flush=True)


def close(a, b):
    return a == b or (a is not None and b is not None and abs(a - b) <= 1e-12)


# --- the checks ------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_bin = os.path.join(ROOT, "target", "release", "arlrr")
    ap.add_argument("--arlrr", default=os.environ.get("ARLRR_BIN", default_bin if os.path.exists(default_bin) else "arlrr"))
    ap.add_argument("--n", type=int, default=4, help="responses per prompt (actor_rollout_ref.rollout.n)")
    args = ap.parse_args()
    arlrr = args.arlrr

    import numpy as np
    import torch
    import verl

    print("verl %s, torch %s, numpy %s; arlrr: %s" % (verl.__version__, torch.__version__, np.__version__, arlrr))
    work = tempfile.mkdtemp(prefix="check-verl-")
    subprocess.run([arlrr, "data", "builtin", "--out", os.path.join(work, "data")], check=True, capture_output=True)
    data = os.path.join(work, "data", "train.jsonl")
    judge = os.path.join(ROOT, "configs", "judges", "rules.toml")
    examples = {}
    for path in (data, os.path.join(work, "data", "validation.jsonl")):
        with open(path) as f:
            for line in f:
                e = json.loads(line)
                examples[e["prompt_id"]] = e
    tok_dir = os.path.join(work, "tokenizer")
    tokenizer = byte_tokenizer(tok_dir)

    # 3 prompts x n responses; builtin-train-0004 has no instruction_following criterion (no signal)
    # the rows as verl's own RLHFDataset reads them from the parquet scripts/engines/verl/to_parquet.py
    # writes (reward_model.ground_truth = prompt id, extra_info.split)
    from verl.utils.dataset.rl_dataset import RLHFDataset

    to_parquet = os.path.join(ROOT, "scripts", "engines", "verl", "to_parquet.py")
    val_data = os.path.join(work, "data", "validation.jsonl")
    served = os.path.join(work, "served.jsonl")  # the service knows the validation prompts too
    with open(served, "w") as f:
        for path in (data, val_data):
            with open(path) as g:
                f.write(g.read())
    datasets = {}
    for name, path, split in (("train", data, "train"), ("val", val_data, "test")):
        pq = os.path.join(work, name + ".parquet")
        subprocess.run([sys.executable, to_parquet, path, pq, "--split", split], check=True, capture_output=True)
        datasets[name] = RLHFDataset([pq], tokenizer, verl_config(["actor_rollout_ref.model.path=" + tok_dir]).data)

    def dataset_rows(ds, picks, tag):
        out = []
        for k, idx in enumerate(picks):
            item = ds[idx]
            pid = item["reward_model"]["ground_truth"]
            ex = examples[pid]
            ideal = ex["ideal_completions_data"]["ideal_completion"]
            texts = [ideal, "I am not sure. Maybe start antibiotics right away.",
                     ideal + " Do you have any other symptoms? Take 2 tablets.", "See a doctor."]
            for t in (texts * (args.n // 4 + 1))[: args.n]:
                out.append((pid, item["raw_prompt"][-1]["content"], t, "%s-uid-%d" % (tag, k), item["extra_info"]))
        return out

    # builtin-train-0004 has no instruction_following criterion: no signal for that class
    ids = ["builtin-train-0000", "builtin-train-0004", "builtin-train-0005"]
    rows = dataset_rows(datasets["train"], [int(i.rsplit("-", 1)[1]) for i in ids], "train")
    assert [r[0] for r in rows[:: args.n]] == ids, [r[0] for r in rows]
    rows = rows[1::2] + rows[0::2]  # verl's balance_batch reorders; groups need not be adjacent
    pairs = [(r[0], r[2]) for r in rows]
    want, grade_cmd = grade_scores(arlrr, data, judge, pairs, work)
    classes = sorted({k for s in want for k in s if k != "overall"})
    for s in want:  # a class without any criterion for the prompt has no signal either
        for k in classes:
            s.setdefault(k, None)
    print("arlrr grade: %s" % " ".join(grade_cmd))
    print("batch: %d rows (%d prompts x %d), classes: %s" % (len(rows), len(ids), args.n, ", ".join(classes)))
    data_proto = make_batch(tokenizer, rows)
    per_step = len(rows)

    svc = Service(arlrr, work, ["--data", served, "--judge", judge, "--objective", "scalarized",
                                "--completions-per-step", str(per_step), "--phase-steps", "1000"], "scalarized")
    try:
        # 1. naive, sync and async
        for name in ("compute_score", "compute_score_async"):
            cfg = verl_config(overrides(svc.url, name, "naive", tok_dir))
            t0 = time.time()
            out = compute_rm_score(cfg, data_proto)
            secs = time.time() - t0
            nt = out.non_tensor_batch
            bad = []
            for i, w in enumerate(want):
                for k in classes + ["overall"]:
                    got = float(nt[k][i])
                    defined = float(nt[k + "_defined"][i])
                    exp = w.get(k)
                    if not (close(got, exp if exp is not None else 0.0) and defined == (0.0 if exp is None else 1.0)):
                        bad.append((i, k, got, defined, exp))
                if not close(float(nt["score"][i]), w["overall"]):  # scalarized, points weights
                    bad.append((i, "score", float(nt["score"][i]), w["overall"]))
            rm = out.batch["rm_scores"]
            total = rm.sum(dim=1).tolist()
            # rm_scores is float32: the score at the response's last token, 0 elsewhere
            bad += [(i, "rm_scores", total[i]) for i in range(len(rows)) if abs(total[i] - float(nt["score"][i])) > 1e-6]
            no_signal = [i for i, w in enumerate(want) if any(w.get(k) is None for k in classes)]
            check("naive reward loop, %s: %d responses x (%d classes + overall + score) = arlrr grade (%.1f s)"
                  % (name, len(rows), len(classes), secs), not bad and no_signal, "mismatches %s" % bad[:3] if bad else
                  "no-signal rows %s are 0.0 with _defined 0.0" % no_signal)
        step = svc.get("/v1/schedule")["step"]
        check("two training batches of %d completions count 2 steps (--completions-per-step %d)" % (per_step, per_step),
              step == 2, "step %s" % step)

        # 4. validation rows are not counted
        val_rows = dataset_rows(datasets["val"], [0, 1, 2], "val")
        val_want, _ = grade_scores(arlrr, served, judge, [(r[0], r[2]) for r in val_rows], work)
        cfg = verl_config(overrides(svc.url, "compute_score_async", "naive", tok_dir))
        out = compute_rm_score(cfg, make_batch(tokenizer, val_rows))
        step2 = svc.get("/v1/schedule")["step"]
        check("validation batch (%d rows of the validation parquet, extra_info.split=test) graded = arlrr grade, "
              "not counted" % len(val_rows), step2 == step and
              all(close(float(out.non_tensor_batch["overall"][i]), w["overall"]) for i, w in enumerate(val_want)),
              "step stays %s" % step2)

        # 2. verl's GDPO
        from verl.trainer.ppo.ray_trainer import compute_advantage

        gdpo_overrides = ["algorithm.adv_estimator=gdpo", "+algorithm.gdpo_reward_keys=[%s]" % ",".join(classes)]
        cfg = verl_config(overrides(svc.url, "compute_score_async", "gdpo", tok_dir, gdpo_overrides))
        out = compute_rm_score(cfg, data_proto)

        def advantages(extra):
            d = make_batch(tokenizer, rows)
            d.batch["token_level_rewards"] = out.batch["rm_scores"].clone()
            for k, v in extra.items():
                d.non_tensor_batch[k] = v
            d = compute_advantage(d, adv_estimator=cfg.algorithm.adv_estimator, num_repeat=args.n,
                                  norm_adv_by_std_in_grpo=True, config=cfg.algorithm)
            return d.batch["advantages"]

        from_verl = advantages({k: out.non_tensor_batch[k] for k in out.meta_info["reward_extra_keys"]})
        from_grade = advantages({k: np.array([w[k] if w[k] is not None else 0.0 for w in want]) for k in classes})
        same_values = all(close(float(out.non_tensor_batch[k][i]), want[i][k] if want[i][k] is not None else 0.0)
                          for i in range(len(rows)) for k in classes)
        check("gdpo reward manager: per-class values = arlrr grade", same_values)
        check("verl GDPO advantages (gdpo_reward_keys=%s) from our dicts = from arlrr grade's scores" % classes,
              torch.equal(from_verl, from_grade) and bool(torch.isfinite(from_verl).all()),
              "max |adv| %.4f" % float(from_verl.abs().max()))
        ns_class = [k for k in classes if any(w[k] is None for w in want)]
        if ns_class:
            k = ns_class[0]
            # GDPO's first step (core_algos.py:451-459) is verl's GRPO normalization of each key
            # within its uid group; the no-signal class must add exactly 0 there
            from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

            d = make_batch(tokenizer, rows)
            plen = d.batch["prompts"].size(1)
            last = d.batch["attention_mask"][:, plen:].sum(dim=1) - 1
            mask = d.batch["attention_mask"][:, plen:]
            tlr = torch.zeros_like(mask, dtype=torch.float32)
            tlr[torch.arange(len(rows)), last] = torch.tensor(np.asarray(out.non_tensor_batch[k], dtype=np.float32))
            norm, _ = compute_grpo_outcome_advantage(tlr, mask, d.non_tensor_batch["uid"])
            rows_ns = [i for i, w in enumerate(want) if w[k] is None]
            rows_sig = [i for i, w in enumerate(want) if w[k] is not None]
            check("no-signal class %s: 0.0 for its whole group adds exactly 0 to its rows' GDPO sum, other groups not"
                  % k, bool((norm[rows_ns] == 0).all()) and bool((norm[rows_sig] != 0).any()))
            with_none = np.array([w[k] for w in want], dtype=object)
            d = make_batch(tokenizer, rows)
            d.batch["token_level_rewards"] = out.batch["rm_scores"].clone()
            d.non_tensor_batch.update({c: out.non_tensor_batch[c] for c in classes})
            d.non_tensor_batch[k] = with_none
            d = compute_advantage(d, adv_estimator="gdpo", num_repeat=args.n, config=cfg.algorithm)
            nan_share = float(torch.isnan(d.batch["advantages"]).any(dim=1).float().mean())
            check("(why not None: verl's GDPO with None for %s makes %.0f%% of the batch's advantages NaN)"
                  % (k, 100 * nan_share), nan_share == 1.0)
        # verl 0.9.1's default trainer (trainer.use_v1=True) computes advantages from the fields
        # it fetches (trainer/ppo/v1/trainer_base.py:1745: uid, response_mask, rm_scores, ...):
        # no prompts and no reward_extra_info, which compute_gdpo_outcome_advantage reads
        from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories
        from tensordict import TensorDict
        from verl import DataProto

        full = make_batch(tokenizer, rows)
        plen = full.batch["prompts"].size(1)
        v1 = DataProto(batch=TensorDict({"response_mask": full.batch["attention_mask"][:, plen:],
                                         "rm_scores": out.batch["rm_scores"].clone()}, batch_size=len(rows)))
        v1.batch["token_level_scores"] = v1.batch["rm_scores"]
        v1.batch["token_level_rewards"] = v1.batch["token_level_scores"]
        v1.non_tensor_batch["uid"] = full.non_tensor_batch["uid"]
        keys = ["%s_%d_0" % (r[3], i) for i, r in enumerate(rows)]
        try:
            compute_advantage_for_multi_trajectories(v1, batch_keys=keys, adv_estimator="gdpo", num_repeat=args.n,
                                                     config=cfg.algorithm)
            note("verl's v1 trainer path computed GDPO advantages")
        except Exception as e:
            note("verl's v1 trainer path (trainer.use_v1=True) cannot run algorithm.adv_estimator=gdpo: %s: %s"
                 % (type(e).__name__, str(e)[:150]))
    finally:
        svc.stop()

    # 3. a judge that fails
    class Failing(http.server.BaseHTTPRequestHandler):
        calls = 0

        def do_POST(self):
            Failing.calls += 1
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                self.send_response(500)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"down")
            except OSError:  # the service gave up on this call
                pass

        def log_message(self, *a):
            pass

    judge_srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=judge_srv.serve_forever, daemon=True).start()
    http_judge = os.path.join(work, "http.toml")
    with open(http_judge, "w") as f:
        f.write('kind = "http"\n[http]\nbase_url = "http://127.0.0.1:%d/v1"\nmodel = "m"\nretries = 0\n'
                "backoff_initial_secs = 0.01\nbackoff_max_secs = 0.01\n" % judge_srv.server_address[1])
    svc = Service(arlrr, work, ["--data", data, "--judge", http_judge, "--objective", "scalarized",
                                "--completions-per-step", str(per_step)], "failing")
    os.environ["ARLRR_RETRIES"] = "2"
    os.environ["ARLRR_BACKOFF_SECS"] = "0.05"
    try:
        for name in ("compute_score", "compute_score_async"):
            cfg = verl_config(overrides(svc.url, name, "naive", tok_dir))
            before = Failing.calls
            try:
                out = compute_rm_score(cfg, make_batch(tokenizer, rows[:4]))
                check("failing judge, %s: verl's reward loop raised" % name, False,
                      "it returned rm_scores %s" % out.batch["rm_scores"].sum(dim=1).tolist())
            except Exception as e:  # what verl's asyncio.gather / ray.get hand the trainer
                check("failing judge, %s: verl's reward loop raised, no reward" % name,
                      type(e).__name__ == "ArlrrRewardError" and "after 3 tries" in str(e),
                      "%s: %s (judge called %d times)" % (type(e).__name__, str(e)[:120], Failing.calls - before))
        step = svc.get("/v1/schedule")["step"]
        check("failed gradings counted no step", step == 0, "step %s" % step)
    finally:
        svc.stop()
        judge_srv.shutdown()
        del os.environ["ARLRR_RETRIES"], os.environ["ARLRR_BACKOFF_SECS"]

    # 5. the service's gdpo with --group-size, through verl's loop with the async function
    whole = Service(arlrr, work, ["--data", data, "--judge", judge, "--objective", "gdpo"], "gdpo-whole")
    try:
        by_group = {}
        for r in rows:
            by_group.setdefault(r[0], []).append(r[2])
        expect = {}
        for pid, texts in by_group.items():
            s, a = whole.post("/v1/rewards", {"items": [{"prompt_id": pid, "completions": texts}]})
            for t, c in zip(texts, a["items"][0]["completions"]):
                expect[(pid, t)] = c["reward"]
    finally:
        whole.stop()
    try:
        grouped = Service(arlrr, work, ["--data", data, "--judge", judge, "--objective", "gdpo",
                                        "--group-size", str(args.n), "--group-window-secs", "5"], "gdpo-grouped")
    except SystemExit as e:
        skip("service gdpo --group-size: %s" % e)
        grouped = None
    if grouped is not None:
        os.environ["ARLRR_RETRIES"] = "0"
        try:
            cfg = verl_config(overrides(grouped.url, "compute_score_async", "naive", tok_dir))
            t0 = time.time()
            out = compute_rm_score(cfg, data_proto)
            got = [float(x) for x in out.non_tensor_batch["score"]]
            exp = [expect[(r[0], r[2])] for r in rows]
            check("service gdpo --group-size %d through verl's loop (async) = one request per group (%.1f s)"
                  % (args.n, time.time() - t0), all(close(g, e) for g, e in zip(got, exp)), "got %s want %s" % (got[:4], exp[:4]))
            # the sync function runs in the worker's thread pool (min(32, cpus + 4) threads): with
            # more responses in flight than threads, first members of groups hold every thread
            cfg = verl_config(overrides(grouped.url, "compute_score", "naive", tok_dir, ["reward.num_workers=1"]))
            t0 = time.time()
            try:
                out = compute_rm_score(cfg, data_proto, n_workers=1)
            except Exception as e:
                note("the same with the sync compute_score, 1 reward worker, %d threads, %d responses: after %.1f s "
                     "(--group-window-secs 5) %s: %s" % (min(32, (os.cpu_count() or 1) + 4), len(rows),
                     time.time() - t0, type(e).__name__, str(e)[:160]))
                raise StopIteration
            got = [float(x) for x in out.non_tensor_batch["score"]]
            note("the same with the sync compute_score, 1 reward worker, %d threads, %d responses: %.1f s "
                 "(--group-window-secs 5), %s" % (min(32, (os.cpu_count() or 1) + 4), len(rows), time.time() - t0,
                 "equal" if all(close(g, e) for g, e in zip(got, exp)) else
                 "NOT equal: groups were normalized partially when their window expired"))
        except StopIteration:
            pass
        except Exception as e:
            skip("service gdpo --group-size: this service does not collect groups on /v1/rewards: %s: %s"
                 % (type(e).__name__, str(e)[:200]))
        finally:
            grouped.stop()
            del os.environ["ARLRR_RETRIES"]

    # 6. the old top-level key is not migrated by verl 0.9's main_ppo
    cfg = verl_config([
        "custom_reward_function.path=" + EXAMPLE, "custom_reward_function.name=compute_score",
        "actor_rollout_ref.model.path=" + tok_dir, "reward.num_workers=1",
    ])
    try:
        compute_rm_score(cfg, make_batch(tokenizer, rows[:1]), n_workers=1)
        check("old top-level custom_reward_function.path: not used by verl 0.9", False, "it was used")
    except Exception as e:
        check("old top-level custom_reward_function.path is ignored by verl 0.9 (default_compute_score raises)",
              cfg.reward.custom_reward_function.path is None, "%s: %s" % (type(e).__name__, str(e)[:100]))

    shutil.rmtree(work, ignore_errors=True)
    failed = [n for n, ok in RESULTS if not ok]
    print("%d passed, %d failed" % (len(RESULTS) - len(failed), len(failed)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
