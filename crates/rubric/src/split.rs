//! `arlrr data split`: a seeded train/validation/test split of a data file, stratified by the
//! examples' `theme:` tag so every split carries the themes in the file's proportions.
//! Records are copied byte for byte (canary and unknown fields included).

use crate::error::read_text;
use crate::{DataError, Dataset};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files a split writes, named as the shipped configs expect them.
pub const SPLIT_FILES: [&str; 3] = ["train.jsonl", "val.jsonl", "test.jsonl"];

/// Example indices of each split; each split is in a seeded random order.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// Splits `data` into `val` and `test` examples and the rest for training. Strata are the
/// `theme:` tag values (examples without one form their own stratum); each stratum gives
/// the validation and the test split its share, rounded by largest remainder.
pub fn split(data: &Dataset, val: usize, test: usize, seed: u64) -> Result<Split, String> {
    let n = data.len();
    if val + test >= n {
        return Err(format!(
            "--val {val} and --test {test} leave no training examples ({n} in {})",
            data.source.display()
        ));
    }
    let mut strata: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, ex) in data.examples.iter().enumerate() {
        strata
            .entry(ex.tag_value("theme").unwrap_or(""))
            .or_default()
            .push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for members in strata.values_mut() {
        members.shuffle(&mut rng);
    }
    let sizes: Vec<usize> = strata.values().map(Vec::len).collect();
    let val_counts = apportion(val, &sizes);
    let room: Vec<usize> = sizes.iter().zip(&val_counts).map(|(s, v)| s - v).collect();
    // the test share is taken from the whole stratum too, capped by what validation left;
    // a stratum too small for both passes the rest to the strata furthest below their share
    let mut test_counts: Vec<usize> = apportion(test, &sizes)
        .iter()
        .zip(&room)
        .map(|(q, r)| *q.min(r))
        .collect();
    while test_counts.iter().sum::<usize>() < test {
        let below = |g: usize| test as f64 * sizes[g] as f64 / n as f64 - test_counts[g] as f64;
        let g = (0..sizes.len())
            .filter(|&g| test_counts[g] < room[g])
            .max_by(|&a, &b| below(a).total_cmp(&below(b)))
            .expect("val + test < n leaves room");
        test_counts[g] += 1;
    }
    let mut out = Split {
        train: vec![],
        val: vec![],
        test: vec![],
    };
    for ((members, v), t) in strata.values().zip(val_counts).zip(test_counts) {
        out.val.extend(&members[..v]);
        out.test.extend(&members[v..v + t]);
        out.train.extend(&members[v + t..]);
    }
    // strata were taken in theme order: shuffle so the first k of a split are a fair sample
    for part in [&mut out.train, &mut out.val, &mut out.test] {
        part.shuffle(&mut rng);
    }
    Ok(out)
}

/// `total` items shared over groups of `sizes` in proportion (largest remainder; ties go to the
/// earlier group). Never gives a group more than its size when `total <= sum(sizes)`.
fn apportion(total: usize, sizes: &[usize]) -> Vec<usize> {
    let sum: usize = sizes.iter().sum();
    if sum == 0 {
        return vec![0; sizes.len()];
    }
    let mut counts: Vec<usize> = sizes.iter().map(|s| total * s / sum).collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    // remainder of total*s/sum, compared exactly in integers
    order.sort_by_key(|&g| std::cmp::Reverse(total * sizes[g] % sum));
    let left = total - counts.iter().sum::<usize>();
    for &g in order.iter().take(left) {
        counts[g] += 1;
    }
    counts
}

/// Writes the split's records, copied verbatim from the data file, as `train.jsonl`,
/// `val.jsonl` and `test.jsonl` under `dir`. Returns the files with their record counts.
pub fn write_split(
    data: &Dataset,
    split: &Split,
    dir: &Path,
) -> Result<Vec<(PathBuf, usize)>, DataError> {
    let text = read_text(&data.source)?;
    let lines: Vec<&str> = text.lines().collect();
    let io_err =
        |p: &Path, e: std::io::Error| DataError::new(p, 0, "(file)", format!("cannot write: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut out = Vec::new();
    for (name, part) in SPLIT_FILES
        .iter()
        .zip([&split.train, &split.val, &split.test])
    {
        let path = dir.join(name);
        let mut body = String::new();
        for &i in part {
            body.push_str(lines[data.examples[i].line - 1].trim());
            body.push('\n');
        }
        crate::runfile::write_atomic(&path, body.as_bytes()).map_err(|e| io_err(&path, e))?;
        out.push((path, part.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::apportion;

    #[test]
    fn apportion_is_proportional_and_exact() {
        assert_eq!(apportion(10, &[50, 30, 20]), vec![5, 3, 2]);
        assert_eq!(apportion(3, &[1, 1, 1, 1]), vec![1, 1, 1, 0]);
        assert_eq!(apportion(7, &[5, 2]), vec![5, 2]);
        assert_eq!(apportion(4, &[10, 1, 1]).iter().sum::<usize>(), 4);
        assert_eq!(apportion(0, &[3, 4]), vec![0, 0]);
    }
}
