//! The README and docs/ link only inside the repository, and every link resolves: a file that
//! exists and, for `#anchor`, a heading of that file (GitHub's slug rule).

use regex::Regex;
use std::path::{Path, PathBuf};

fn without_code_blocks(text: &str) -> String {
    Regex::new(r"(?s)```.*?```")
        .unwrap()
        .replace_all(text, "")
        .into_owned()
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(path: &Path) -> Vec<String> {
    let text = without_code_blocks(&std::fs::read_to_string(path).unwrap());
    Regex::new(r"(?m)^#+ (.*)$")
        .unwrap()
        .captures_iter(&text)
        .map(|c| slug(&c[1]))
        .collect()
}

#[test]
fn readme_and_docs_links_resolve_inside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let link = Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut bad = Vec::new();
    let mut count = 0;
    for file in &files {
        let text = without_code_blocks(&std::fs::read_to_string(file).unwrap());
        for target in link.captures_iter(&text).map(|c| c[1].to_string()) {
            count += 1;
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if path.is_empty() {
                Some(file.clone())
            } else {
                file.parent().unwrap().join(path).canonicalize().ok()
            };
            let ok = !target.contains("://")
                && dest.as_ref().is_some_and(|d| {
                    d.starts_with(&root)
                        && (fragment.is_empty() || anchors(d).iter().any(|a| a == fragment))
                });
            if !ok {
                bad.push(format!("{}: {target}", file.display()));
            }
        }
    }
    assert!(
        count > 20,
        "only {count} links found; is the pattern right?"
    );
    assert!(
        bad.is_empty(),
        "links that do not resolve:\n{}",
        bad.join("\n")
    );
}

#[test]
fn readme_is_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lines = std::fs::read_to_string(root.join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines <= 150,
        "README.md has {lines} lines; details belong in docs/"
    );
}
