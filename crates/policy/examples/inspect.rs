//! Prints a GGUF file's metadata (minus the large token arrays) and a greedy chat answer.
//! `cargo run -p arlrr-policy --example inspect -- PATH`

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| rubric::assets::smollm2_gguf().expect("fetched asset"));
    let mut f = std::fs::File::open(&path)?;
    let c = candle_core::quantized::gguf_file::Content::read(&mut f)?;
    let mut keys: Vec<_> = c.metadata.keys().collect();
    keys.sort();
    for k in keys {
        let v = &c.metadata[k];
        match v.to_vec() {
            Ok(a) => println!("{k}: array of {}", a.len()),
            Err(_) => println!("{k}: {v:?}"),
        }
    }
    let t0 = std::time::Instant::now();
    let model = policy::Model::load(&path)?;
    println!("loaded in {:?}: {:?}", t0.elapsed(), model.config);
    println!("{:?}", model.tokenizer);
    let msgs = [rubric::Message {
        role: "user".into(),
        content: "What is the capital of France?".into(),
    }];
    println!("{:?}", model.tokenizer.chat_prompt(&msgs)?);
    let t0 = std::time::Instant::now();
    println!("{}", model.chat(&msgs, 30, 0.0, 0)?);
    println!("chat in {:?}", t0.elapsed());
    Ok(())
}
