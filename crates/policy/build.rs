//! `cfg(amx)`: the AMX tile kernel of `bf16.rs` needs x86-64 and Linux's per-process
//! permission request (through glibc's `syscall`).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(amx)");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
    {
        println!("cargo::rustc-cfg=amx");
    }
}
