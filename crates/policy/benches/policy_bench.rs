//! `cargo bench -p policy`: prints speed and memory figures for SmolLM2-135M (the fetched GGUF
//! when present, else random weights of the same shape). Set POLICY_BENCH_QUICK=1 for a
//! smaller run.

fn main() -> anyhow::Result<()> {
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
        opts.gen_new_tokens = 16;
    }
    policy::bench::run(&model, &opts)?;
    Ok(())
}
