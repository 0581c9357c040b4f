//! Every relative link in README.md, CHANGELOG.md and docs/**/*.md resolves inside the
//! repository: `[text](path)`, `[text](path#anchor)` and `[text](#anchor)` name a file that
//! exists and, with an anchor, a heading of that Markdown file (GitHub's slug rule). Links with
//! a scheme (`https://…`, `mailto:`) are not checked. Failures name `file:line`. Standard
//! library only.

use std::path::{Component, Path, PathBuf};

fn root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// README.md, CHANGELOG.md and every `.md` under docs/, sorted.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    let mut docs = Vec::new();
    walk(&root.join("docs"), &mut docs);
    docs.sort();
    files.extend(docs);
    files
}

/// The file's lines with fenced code blocks blanked (line numbers kept) and inline code spans
/// removed: a link inside code is an example, not a link.
fn prose_lines(text: &str) -> Vec<String> {
    let mut fence: Option<&str> = None;
    text.lines()
        .map(|line| {
            let t = line.trim_start();
            let marker = if t.starts_with("```") {
                Some("```")
            } else if t.starts_with("~~~") {
                Some("~~~")
            } else {
                None
            };
            match (fence, marker) {
                (None, Some(m)) => {
                    fence = Some(m);
                    String::new()
                }
                (Some(f), Some(m)) if f == m => {
                    fence = None;
                    String::new()
                }
                (Some(_), _) => String::new(),
                (None, None) => without_code_spans(line),
            }
        })
        .collect()
}

fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let after = &rest[start + ticks..];
        match after.find(&"`".repeat(ticks)) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Link targets of `[text](target)` and `[text](target "title")` on one line.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let mut depth = 0usize;
        let mut end = after.len();
        for (j, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = j;
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let inner = after[..end].trim();
        let target = inner
            .strip_prefix('<')
            .and_then(|t| t.split_once('>').map(|(t, _)| t))
            .unwrap_or_else(|| inner.split_whitespace().next().unwrap_or(""));
        if !target.is_empty() {
            out.push(target.to_string());
        }
        rest = &after[end.min(after.len())..];
    }
    out
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to
/// `-`, inline code and emphasis markers dropped.
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
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let hashes = t.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && t[hashes..].starts_with(' ') {
            let base = slug(&t[hashes..]);
            // GitHub numbers repeated headings: name, name-1, name-2, ...
            let n = seen.iter().filter(|s| **s == base).count();
            seen.push(base.clone());
            out.push(if n == 0 { base } else { format!("{base}-{n}") });
        }
    }
    out
}

/// `a/b/../c` without touching the file system, so that a missing file is reported as such.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn has_scheme(target: &str) -> bool {
    match target.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

#[test]
fn relative_links_in_readme_changelog_and_docs_resolve() {
    let root = root();
    let files = markdown_files(&root);
    let mut bad = Vec::new();
    let mut count = 0;
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (n, line) in prose_lines(&text).iter().enumerate() {
            for target in link_targets(line) {
                if has_scheme(&target) {
                    continue;
                }
                count += 1;
                let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
                let dest = if path.is_empty() {
                    file.clone()
                } else if let Some(abs) = path.strip_prefix('/') {
                    root.join(abs)
                } else {
                    normalize(&file.parent().unwrap().join(path))
                };
                let problem = if !dest.starts_with(&root) {
                    Some("points outside the repository".to_string())
                } else if !dest.exists() {
                    Some("no such file".to_string())
                } else if !fragment.is_empty()
                    && dest.extension().is_some_and(|e| e == "md")
                    && !anchors(&dest).iter().any(|a| a == fragment)
                {
                    Some(format!("no heading #{fragment}"))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    bad.push(format!("{shown}:{}: ({target}) {problem}", n + 1));
                }
            }
        }
    }
    assert!(
        count > 20,
        "only {count} relative links found; is the pattern right?"
    );
    assert!(
        bad.is_empty(),
        "links that do not resolve:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_link_parser_finds_what_it_should() {
    assert_eq!(
        link_targets("see [a](docs/x.md#y) and [b](<c d.md> \"t\") and [e](f(g).md)"),
        ["docs/x.md#y", "c d.md", "f(g).md"]
    );
    assert_eq!(
        prose_lines("a `[x](nope.md)` b\n```\n[y](nope.md)\n```\n"),
        ["a  b", "", "", ""]
    );
    assert_eq!(
        slug("Where the code departs from `x.md`"),
        "where-the-code-departs-from-xmd"
    );
    assert!(has_scheme("https://example.com") && has_scheme("mailto:a@b"));
    assert!(!has_scheme("docs/x.md") && !has_scheme("#a:b"));
}

#[test]
fn readme_is_short() {
    let lines = std::fs::read_to_string(root().join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines <= 150,
        "README.md has {lines} lines; details belong in docs/"
    );
}
