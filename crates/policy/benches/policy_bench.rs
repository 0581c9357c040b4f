//! `cargo bench -p arlrr-policy`: prints speed and memory figures for SmolLM2-135M (the fetched GGUF
//! when present, else random weights of the same shape). Set POLICY_BENCH_QUICK=1 for a
//! smaller run. For profiling one part: POLICY_BENCH_TRAIN=BxP+C (one training shape, e.g.
//! `8x32+480`; `0` skips training), POLICY_BENCH_ITERS=N, POLICY_BENCH_GEN=B,SMALL,NEW (e.g.
//! `32,1,64`; `0,0,0` skips generation; a fourth number sets the prompt length, e.g. `2,0,1,500`
//! times a HealthBench-length prefill), POLICY_BENCH_PRECISION=f32|bf16|int8|int4 (one
//! sampling and training-matmul precision; int8 and int4 sample only; all by default).
//! ARLRR_MAX_CPU_ISA=avx2 (or portable, avx512, avx512bf16) runs arlrr's own kernels as a CPU
//! without the higher levels would.

fn main() -> anyhow::Result<()> {
    policy::keep_freed_memory();
    policy::check_isa_env()?;
    let model = match rubric::assets::smollm2_gguf() {
        Ok(p) => {
            println!("model: {}", p.display());
            policy::Model::load(&p)?.transformer
        }
        Err(e) => {
            println!("model: random SmolLM2-135M shape ({e})");
            policy::Transformer::random(
                &policy::Config::smollm2_135m(),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
                0,
            )?
        }
    };
    let mut opts = policy::bench::BenchOptions::default();
    if std::env::var("POLICY_BENCH_QUICK").is_ok() {
        opts.train_batch = 2;
        opts.completion_len = 192;
        opts.train_iters = 1;
        opts.long_train = None;
        opts.gen_new_tokens = 16;
    }
    if let Ok(s) = std::env::var("POLICY_BENCH_PRECISION") {
        opts.gen_precisions = vec![policy::bf16::Precision::parse(s.trim())?];
        // int8 and int4 are sampling precisions: that run times generation only
        opts.train_precisions = policy::bf16::Precision::parse_training(s.trim())
            .map(|p| vec![p])
            .unwrap_or_default();
    }
    if let Ok(s) = std::env::var("POLICY_BENCH_TRAIN") {
        if s.trim() == "0" {
            opts.train_iters = 0;
        } else {
            let (b, rest) = s
                .split_once('x')
                .ok_or_else(|| anyhow::anyhow!("want BxP+C"))?;
            let (p, c) = rest
                .split_once('+')
                .ok_or_else(|| anyhow::anyhow!("want BxP+C"))?;
            opts.train_batch = b.trim().parse()?;
            opts.prompt_len = p.trim().parse()?;
            opts.completion_len = c.trim().parse()?;
            opts.long_train = None;
        }
    }
    if let Ok(s) = std::env::var("POLICY_BENCH_ITERS") {
        opts.train_iters = s.trim().parse()?;
    }
    if let Ok(s) = std::env::var("POLICY_BENCH_GEN") {
        let v: Vec<usize> = s
            .split(',')
            .map(|x| x.trim().parse())
            .collect::<Result<_, _>>()?;
        anyhow::ensure!(
            matches!(v.len(), 3 | 4),
            "want B,SMALL,NEW or B,SMALL,NEW,PROMPT"
        );
        (opts.gen_batch, opts.gen_small_batch, opts.gen_new_tokens) = (v[0], v[1], v[2]);
        if let Some(&p) = v.get(3) {
            opts.gen_prompt_len = p;
        }
    }
    policy::bench::run(&model, &opts)?;
    Ok(())
}
