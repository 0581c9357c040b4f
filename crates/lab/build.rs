//! The code version a study run is tied to: a hash of every crate's sources, manifests and
//! Cargo.lock (`ARLRR_CODE`), and the git commit they were built from where there is one
//! (`ARLRR_COMMIT`, `-dirty` for uncommitted changes, else `unknown`).

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../..");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).expect("crates/") {
        let krate = entry.expect("crates/ entry").path();
        for part in ["src", "Cargo.toml", "build.rs"] {
            let p = krate.join(part);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
                collect(&p, &mut files);
            }
        }
    }
    for top in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(top).display());
        files.push(root.join(top));
    }
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        // the path from the root, so that the same sources hash alike in any checkout
        h.update(
            f.strip_prefix(&root)
                .unwrap_or(f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(std::fs::read(f).unwrap_or_default());
    }
    let code = format!("{:x}", h.finalize());
    println!("cargo:rustc-env=ARLRR_CODE={}", &code[..16]);

    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c)
            if git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()) =>
        {
            format!("{c}-dirty")
        }
        Some(c) => c,
        None => "unknown".to_string(),
    };
    // a new commit moves the branch's ref (sources changed since are watched above)
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = root.join(dir);
        let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]).unwrap_or_default();
        for p in ["HEAD", branch.as_str()] {
            if !p.is_empty() && dir.join(p).exists() {
                println!("cargo:rerun-if-changed={}", dir.join(p).display());
            }
        }
    }
    println!("cargo:rustc-env=ARLRR_COMMIT={commit}");
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        for e in std::fs::read_dir(p).expect("source folder") {
            collect(&e.expect("source entry").path(), out);
        }
    } else {
        out.push(p.to_path_buf());
    }
}
