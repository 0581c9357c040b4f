"""A real TRL GRPOTrainer run through `arlrr serve`, with 1 and with 2 processes, on the same batches.

    scripts/engines/setup.sh trl
    ~/.cache/arlrr/engines/trl/bin/python scripts/engines/check_trl.py --arlrr target/release/arlrr

For each case it starts a fresh `arlrr serve`, runs `accelerate launch --cpu --num_processes N`
on this script (`worker`) for N = 1 and 2, and checks:
- every step's completions and rewards of the 2-process run equal the 1-process run's (per
  reward function, by global position in the batch, None = NaN included);
- the service's step equals the trainer's (`ArlrrStepCallback`), and the reports the service got
  are exactly the distinct steps (0..max_steps): a step is reported by one process only;
- `failures`: a judge that answers HTTP 500 for some completions: those come back as None
  after the client's retries, the others as rewards.

Cases: `scalarized` (arlrr_reward), `gdpo` (arlrr_reward, serve --objective gdpo --group-size G,
a group split between the processes), `gdpo-trl` (class_rewards() with TRL's
multi_objective_aggregation="normalize_then_sum", serve --objective scalarized), `failures`.

The model is a tiny random Llama built here with a word-level tokenizer whose tokens include the
rubric phrases (no download). Sampling is Gumbel-max with a noise keyed by the completion's
position in the global batch, so both runs sample the same completions whatever process draws
them, from the model's real distribution (TRL's generation path, unchanged).
"""
import argparse
import hashlib
import http.server
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "examples"))

NUM_GENERATIONS = 4
GLOBAL_BATCH = 12  # 3 prompts x 4: with 2 processes of 6, the second prompt's group is split
MAX_STEPS = 4
TRIGGER = "zzfail"  # `failures`: the judge answers 500 for completions with a token holding this


# ---------------------------------------------------------------- tiny model


def build_model(out, data):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words, phrases = set(), set()
    with open(data) as f:
        for line in f:
            ex = json.loads(line)
            for w in re.findall(r"[a-z]+", ex["prompt"][0]["content"].lower()):
                words.add(w)
            for r in ex["rubrics"]:
                for p in r["check"].get("phrases") or []:
                    phrases.add(p)
    specials = ["<pad>", "<eos>", "<unk>"]
    fails = [f"{TRIGGER}{i}" for i in range(6)]  # in no prompt or criterion: only in completions
    vocab = specials + sorted(phrases) + ["?", "-", "."] + fails + sorted(words - phrases)[:200]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)


def model_class():
    import torch
    from accelerate import PartialState
    from transformers import LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

    class PositionKeyedSampling(LogitsProcessor):
        """Gumbel-max from the model's distribution, the noise keyed by (generate call, global
        row, token position): the same sample whichever process holds the row."""

        def __init__(self, call, prompt_len):
            self.call, self.prompt_len = call, prompt_len
            self.offset = None

        def __call__(self, input_ids, scores):
            rows = input_ids.shape[0]
            if self.offset is None:
                self.offset = PartialState().process_index * rows
            pos = input_ids.shape[1] - self.prompt_len
            out = torch.full_like(scores, -math.inf)
            logp = torch.log_softmax(scores.float(), dim=-1)
            logp[:, 0] = -math.inf  # never <pad>
            for r in range(rows):
                g = torch.Generator().manual_seed(
                    int.from_bytes(
                        hashlib.sha256(f"{self.call}/{self.offset + r}/{pos}".encode()).digest()[:7],
                        "big",
                    )
                )
                u = torch.rand(scores.shape[1], generator=g).clamp_(1e-12, 1 - 1e-12)
                out[r, int(torch.argmax(logp[r] - torch.log(-torch.log(u))))] = 0.0
            return out

    class TinyLlama(LlamaForCausalLM):
        calls = 0

        def generate(self, *args, **kwargs):
            TinyLlama.calls += 1
            ids = kwargs.get("input_ids", args[0] if args else None)
            proc = PositionKeyedSampling(TinyLlama.calls, ids.shape[1])
            kwargs["logits_processor"] = LogitsProcessorList([proc])
            return super().generate(*args, **kwargs)

    return TinyLlama


# ---------------------------------------------------------------- worker (under accelerate)


def worker(a):
    import torch  # noqa: F401
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    import trl_reward
    from trl_reward import ArlrrStepCallback, arlrr_reward, class_rewards

    # cpu=True as GRPOConfig(use_cpu=True) says: the first PartialState decides for the process
    state = PartialState(cpu=True)
    nproc, rank = state.num_processes, state.process_index
    if nproc != a.nproc:
        sys.exit(f"launched for {a.nproc} processes, running as {nproc}")
    rows = []
    with open(a.data) as f:
        for line in f:
            ex = json.loads(line)
            rows.append({"prompt": ex["prompt"][0]["content"], "prompt_id": ex["prompt_id"]})
    ds = Dataset.from_list(rows[:24])
    funcs = class_rewards() if a.case == "gdpo-trl" else [arlrr_reward]
    record = open(os.path.join(a.out, f"rank{rank}.jsonl"), "a")

    def recorded(f):
        def call(prompts, completions, **kw):
            out = f(prompts=prompts, completions=completions, **kw)
            step = kw["trainer_state"].global_step
            record.write(json.dumps({"step": step, "rank": rank, "func": f.__name__,
                                     "completions": completions, "rewards": out}) + "\n")
            record.flush()
            return out

        call.__name__ = f.__name__
        return call

    args = GRPOConfig(
        output_dir=os.path.join(a.out, "trainer"),
        per_device_train_batch_size=GLOBAL_BATCH // nproc,
        num_generations=NUM_GENERATIONS,
        max_completion_length=12,
        max_steps=MAX_STEPS,
        learning_rate=1e-3,
        seed=7,
        beta=0.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        multi_objective_aggregation="normalize_then_sum" if a.case == "gdpo-trl" else "sum_then_normalize",
        disable_tqdm=True,
    )
    model = model_class().from_pretrained(a.model)
    trainer = GRPOTrainer(
        model=model,
        processing_class=AutoTokenizer.from_pretrained(a.model),
        reward_funcs=[recorded(f) for f in funcs],
        train_dataset=ds,
        args=args,
        callbacks=[ArlrrStepCallback()],
    )
    trainer.train()
    if rank == 0:
        metrics = [h for h in trainer.state.log_history if "loss" in h or "reward" in h]
        with open(os.path.join(a.out, "trainer.json"), "w") as f:
            json.dump({"global_step": trainer.state.global_step, "log": metrics,
                       "client_reported": trl_reward._steps["reported"]}, f)


# ---------------------------------------------------------------- orchestration


class FailingJudge(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible judge: 500 when the graded text holds TRIGGER, else 'met'."""

    calls = {"ok": 0, "failed": 0}

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if TRIGGER in body:
            FailingJudge.calls["failed"] += 1
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"down")
            return
        FailingJudge.calls["ok"] += 1
        msg = json.dumps({"explanation": "fine", "criteria_met": True})
        out = json.dumps({"choices": [{"message": {"content": msg}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def serve(a, work, name, extra, judge):
    state = os.path.join(work, name, "state")
    shutil.rmtree(os.path.dirname(state), ignore_errors=True)  # no verdicts cached by a former run
    os.makedirs(os.path.dirname(state))
    log = open(os.path.join(work, name, "serve.log"), "w")
    p = subprocess.Popen(
        [a.arlrr, "serve", "--data", a.data, "--judge", judge, "--state-dir", state,
         "--port", "0", "--phase-steps", "1", *extra],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    line = p.stdout.readline()
    if "http://" not in line:
        p.kill()
        sys.exit(f"arlrr serve did not start: {line}\n{open(log.name).read()}")
    return p, line.strip().split(" ")[-1]


def metric(url, name):
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    return 0.0


def launch(a, work, case, nproc, url):
    out = os.path.join(work, case, f"np{nproc}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    env = dict(os.environ, ARLRR_URL=url, ARLRR_BACKOFF_SECS="0.05", ARLRR_RETRIES="2",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRL_EXPERIMENTAL_SILENCE="1")
    # `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.16's simple
    # launcher; several CPU processes need MPI there). `--multi_gpu` starts them through
    # torch.distributed.run and, with GRPOConfig(use_cpu=True), they form a gloo group.
    env["CUDA_VISIBLE_DEVICES"] = ""
    mode = ["--multi_gpu"] if nproc > 1 else ["--cpu"]
    cmd = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", *mode,
           "--num_processes", str(nproc), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(29500 + nproc),
           os.path.abspath(__file__), "worker", "--case", case, "--model", a.model_dir,
           "--data", a.data, "--out", out, "--nproc", str(nproc)]
    t0 = time.time()
    with open(os.path.join(out, "launch.log"), "w") as log:
        rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    took = time.time() - t0
    if rc != 0:
        sys.exit(f"{case} with {nproc} process(es) failed (rc {rc}); see {log.name}:\n"
                 + open(log.name).read()[-4000:])
    # per step and function: the global batch, by position (rank r holds rows r*B .. r*B+B-1)
    steps = {}
    for r in range(nproc):
        with open(os.path.join(out, f"rank{r}.jsonl")) as f:
            for line in f:
                rec = json.loads(line)
                steps.setdefault((rec["step"], rec["func"]), {})[r] = rec
    merged = {}
    for key, by_rank in steps.items():
        merged[key] = {
            "completions": [c for r in range(nproc) for c in by_rank[r]["completions"]],
            "rewards": [x for r in range(nproc) for x in by_rank[r]["rewards"]],
        }
    trainer = json.load(open(os.path.join(out, "trainer.json")))
    return merged, trainer, took


def same(x, y):
    if x is None or y is None:
        return x is None and y is None
    return abs(x - y) <= 1e-9


def run_case(a, work, case, judge):
    extra = {
        "scalarized": ["--objective", "scalarized"],
        "gdpo": ["--objective", "gdpo", "--group-size", str(NUM_GENERATIONS),
                 "--group-window-secs", "60"],
        "gdpo-trl": ["--objective", "scalarized"],
        "failures": ["--objective", "scalarized"],
    }[case]
    results, problems = {}, []
    for nproc in (1, 2):
        proc, url = serve(a, work, f"{case}-np{nproc}", extra, judge)
        try:
            merged, trainer, took = launch(a, work, case, nproc, url)
            sched = json.load(urllib.request.urlopen(url + "/v1/schedule"))
            reports = metric(url, 'arlrr_requests_total{endpoint="/v1/schedule/report",status="200"}')
            requests = metric(url, 'arlrr_requests_total{endpoint="/v1/rewards",status="200"}')
        finally:
            proc.terminate()
            proc.wait()
        results[nproc] = merged
        steps = sorted({s for s, _ in merged})
        print(f"  {case}, {nproc} process(es): {took:.0f} s, trainer steps {trainer['global_step']}, "
              f"service step {sched['step']}, step reports {reports:.0f}, /v1/rewards requests "
              f"{requests:.0f}, reward calls at steps {steps}")
        if sched["step"] != trainer["global_step"]:
            problems.append(f"{case} np{nproc}: service step {sched['step']} != trainer "
                            f"{trainer['global_step']}")
        if reports != trainer["global_step"] + 1:
            problems.append(f"{case} np{nproc}: {reports:.0f} step reports for steps "
                            f"0..{trainer['global_step']}")
        funcs = {f for _, f in merged}
        if requests != len(steps) * nproc and case != "failures":
            problems.append(f"{case} np{nproc}: {requests:.0f} reward requests for {len(steps)} "
                            f"batches x {nproc} process(es) x {len(funcs)} function(s)")
    one, two = results[1], results[2]
    if set(one) != set(two):
        problems.append(f"{case}: different reward calls: {sorted(one)} vs {sorted(two)}")
    compared = differ = 0
    for key in sorted(set(one) & set(two)):
        if one[key]["completions"] != two[key]["completions"]:
            problems.append(f"{case} step {key[0]}: the runs sampled different completions")
            continue
        for i, (x, y) in enumerate(zip(one[key]["rewards"], two[key]["rewards"])):
            compared += 1
            if not same(x, y):
                differ += 1
                problems.append(f"{case} step {key[0]} {key[1]} [{i}]: {x} (1 process) != {y} (2)")
    values = [x for m in one.values() for x in m["rewards"]]
    nones = sum(x is None for x in values)
    spread = len({round(x, 9) for x in values if x is not None})
    print(f"  {case}: {compared} rewards compared, {differ} differ; {nones} None; "
          f"{spread} distinct values")
    if case == "failures":
        for m in list(one.values()) + list(two.values()):
            for c, x in zip(m["completions"], m["rewards"]):
                if (TRIGGER in c) != (x is None):
                    problems.append(f"failures: {c!r} -> {x}")
        if not any(TRIGGER in c for m in one.values() for c in m["completions"]):
            problems.append("failures: no completion holds the trigger phrase")
    return problems


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--case", required=True)
    w.add_argument("--model", required=True)
    w.add_argument("--data", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--nproc", type=int, required=True)
    p.add_argument("--arlrr", default=os.path.join(ROOT, "target/release/arlrr"))
    p.add_argument("--cases", default="scalarized,gdpo,gdpo-trl,failures")
    p.add_argument("--work", default=None, help="kept when given (a temporary folder otherwise)")
    a = p.parse_args()
    if a.cmd == "worker":
        a.model = a.model
        return worker(a)

    import accelerate
    import torch
    import transformers
    import trl

    work = a.work or tempfile.mkdtemp(prefix="check-trl-")
    os.makedirs(work, exist_ok=True)
    subprocess.check_call([a.arlrr, "data", "builtin", "--out", os.path.join(work, "data")],
                          stdout=subprocess.DEVNULL)
    a.data = os.path.join(work, "data", "train.jsonl")
    a.model_dir = os.path.join(work, "tiny-llama")
    if not os.path.exists(os.path.join(a.model_dir, "config.json")):
        build_model(a.model_dir, a.data)
    rules = os.path.join(work, "rules.toml")
    with open(rules, "w") as f:
        f.write('kind = "rules"\n')
    print(f"trl {trl.__version__}, accelerate {accelerate.__version__}, "
          f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
          f"{GLOBAL_BATCH} completions per step ({NUM_GENERATIONS} per prompt), {MAX_STEPS} steps")
    problems = []
    for case in a.cases.split(","):
        judge = rules
        if case == "failures":
            srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingJudge)
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            judge = os.path.join(work, "failing.toml")
            with open(judge, "w") as f:
                f.write(f'kind = "http"\n[http]\nbase_url = "http://127.0.0.1:{srv.server_port}/v1"\n'
                        'model = "m"\nretries = 0\nbackoff_initial_secs = 0.01\n'
                        'backoff_max_secs = 0.01\n')
        problems += run_case(a, work, case, judge)
        if case == "failures":
            print(f"  failures: judge calls answered {FailingJudge.calls['ok']}, "
                  f"failed {FailingJudge.calls['failed']}")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems[:40]))
        sys.exit(1)
    print(f"OK: {a.cases}")


if __name__ == "__main__":
    main()
