"""TRL's GRPOTrainer on the work of `configs/bench-grpo-smollm2.toml`, timed per step: the peer
`arlrr bench grpo` is compared with, side by side on one machine (docs/benchmarks.md, "GRPO step").

    scripts/engines/setup.sh trl
    ~/.cache/arlrr/engines/trl/bin/python scripts/bench_trl.py --arlrr target/release/arlrr

The same work as the bench config: SmolLM2-135M-Instruct from the fetched GGUF (transformers
dequantizes it to f32, as arlrr does), full fine-tuning, the built-in task's training prompts
(`arlrr data builtin`, seed 0) in the model's chat template, 4 prompts x 8 samples x <= 64 new
tokens per step (`per_device_train_batch_size = 32`, `num_generations = 8`), temperature 1,
`beta = 0` (no KL), `num_iterations = 1` (one optimizer step per batch), lr 1e-5, AdamW. Rewards
come from a fresh `arlrr serve --objective scalarized` with the rule judge, through
`examples/trl_reward.py`, as a TRL user of arlrr gets them. f32 is TRL's fastest CPU setting
(`--bf16` turns on torch's CPU autocast, measured 3x slower on an AVX512-BF16 CPU; see
docs/benchmarks.md), and without gradient checkpointing, which GRPOConfig turns on by default
(`--gradient-checkpointing`: less memory, a second forward). torch uses every core, like arlrr.

`--healthbench`: the work of `configs/bench-grpo-healthbench.toml` instead: real HealthBench
prompts (the training part of `arlrr data split` of the fetched 500-item sample, 50/50, seed 0,
as the bench writes it), 2 prompts x 4 samples x <= 128 new tokens, rewards from the local
MiniLM embedding judge (`kind = "embedding"`). TRL 1.16 no longer truncates prompts, nor does
arlrr.

Prints one line per step, then the median and the process's peak RSS, and with `--json FILE`
writes them as JSON.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, os.path.join(HERE, "engines"))
import check_trl  # noqa: E402  (its `serve`: a fresh `arlrr serve` on a free port)


def gguf_path():
    cache = os.environ.get("ARLRR_ASSETS") or os.path.join(
        os.path.expanduser("~"), ".cache", "arlrr", "assets")
    path = os.path.join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run `arlrr fetch` first")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arlrr", default=os.path.join(ROOT, "target", "release", "arlrr"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="torch CPU autocast (slower on CPUs)")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="GRPOConfig's default (recomputes activations: less memory, slower)")
    ap.add_argument("--healthbench", action="store_true",
                    help="the work of configs/bench-grpo-healthbench.toml")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="arlrr-bench-trl-")
    proc = None
    try:
        data = os.path.join(work, "data")
        if a.healthbench:
            sample = os.path.join(os.path.dirname(gguf_path()), "healthbench_eval.jsonl")
            subprocess.run([a.arlrr, "data", "split", sample, "--out", data, "--val", "50",
                            "--test", "50", "--seed", "0"], check=True,
                           stdout=subprocess.DEVNULL)
            judge_kind, prompts, group, new_tokens = "embedding", 2, 4, 128
        else:
            subprocess.run([a.arlrr, "data", "builtin", "--out", data], check=True,
                           stdout=subprocess.DEVNULL)
            judge_kind, prompts, group, new_tokens = "rules", 4, 8, 64
        train = os.path.join(data, "train.jsonl")
        judge = os.path.join(work, "judge.toml")
        with open(judge, "w") as f:
            f.write(f'kind = "{judge_kind}"\n')
        proc, url = check_trl.serve(argparse.Namespace(arlrr=a.arlrr, data=train), work,
                                    "serve", ["--objective", "scalarized"], judge)
        os.environ["ARLRR_URL"] = url

        import torch
        import transformers
        import trl
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
        from trl_reward import ArlrrStepCallback, arlrr_reward

        gguf = gguf_path()
        folder, name = os.path.dirname(gguf), os.path.basename(gguf)
        # transformers dequantizes the GGUF to f32 but marks the model as quantized, and the
        # Trainer refuses to fine-tune that: the same tensors go into a plain model
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                          dtype=torch.float32)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        del gguf_model
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        rows = [json.loads(line) for line in open(train)]
        ds = Dataset.from_list([{"prompt": r["prompt"], "prompt_id": r["prompt_id"]}
                                for r in rows])

        times = []

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                self.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                times.append(time.perf_counter() - self.t)
                print(f"step {state.global_step}/{a.steps}: {times[-1]:.1f} s", flush=True)

        cfg = GRPOConfig(
            output_dir=os.path.join(work, "out"), per_device_train_batch_size=prompts * group,
            num_generations=group, max_completion_length=new_tokens, temperature=1.0, beta=0.0,
            num_iterations=1, learning_rate=1e-5, max_steps=a.steps, logging_steps=1,
            report_to=[], save_strategy="no", use_cpu=True, bf16=a.bf16, seed=0,
            gradient_checkpointing=a.gradient_checkpointing,
        )
        trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[arlrr_reward],
                              train_dataset=ds, args=cfg,
                              callbacks=[ArlrrStepCallback(), Timer()])
        trainer.train()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        med = statistics.median(times)
        work_name = "healthbench" if a.healthbench else "built-in task"
        print(f"{work_name}, {prompts} x {group} x <= {new_tokens} tokens: "
              f"TRL {trl.__version__} GRPOTrainer (torch {torch.__version__}, transformers "
              f"{transformers.__version__}, {'bf16 autocast' if a.bf16 else 'f32'}, "
              f"gradient checkpointing {'on' if a.gradient_checkpointing else 'off'}, "
              f"{torch.get_num_threads()} threads): median step {med:.1f} s "
              f"({', '.join(f'{t:.1f}' for t in times)}), peak RSS {peak:,.0f} MiB")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"trl": trl.__version__, "torch": torch.__version__,
                           "work": work_name, "bf16": a.bf16,
                           "gradient_checkpointing": a.gradient_checkpointing, "steps_s": times, "median_s": med,
                           "peak_rss_mib": peak}, f, indent=1)
    finally:
        if proc:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
