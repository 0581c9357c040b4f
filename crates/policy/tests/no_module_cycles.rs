//! No crate of the workspace has modules that import each other in a circle.
//!
//! For every `crates/*/src`, the top-level modules are its files (`a.rs`) and folders (`a/`,
//! with `a.rs` or `a/mod.rs`); a file deeper in a folder belongs to the top-level module it
//! sits in. Module `a` imports module `b` when any of `a`'s files names `crate::b`, an item
//! the crate root re-exports from `b` (`crate::Item` where lib.rs has `pub use b::Item`), or
//! `b` through enough `super::`s to reach the root. Test modules inside a file count: they
//! are part of the module. Comments, doc links and string literals do not count, and
//! `super::` or `self::` that stays inside `a` is `a` itself. The test fails on any strongly
//! connected set of two or more modules and names the files and lines of each import in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates whose cycles other work removes, printed here but not failed on (none left: arl's
/// and rubric's are gone). Once one of them has no cycle the test fails until its name leaves
/// this list.
const PENDING: &[&str] = &[];

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .unwrap()
        .map(|e| e.unwrap().path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 2,
        "no crates found under {}",
        crates.display()
    );
    let (mut found, mut gone) = (Vec::new(), Vec::new());
    for src in &dirs {
        let name = src.parent().unwrap().file_name().unwrap().to_string_lossy();
        let c = cycles(src);
        if !PENDING.contains(&name.as_ref()) {
            found.extend(c);
        } else if c.is_empty() {
            gone.push(name.into_owned());
        } else {
            eprintln!("pending import cycles:\n{}", c.join("\n"));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
    assert!(
        gone.is_empty(),
        "no cycle left in {gone:?}: take it out of PENDING"
    );
}

/// The checker itself: a cycle through `crate::`, through a root re-export and through
/// `super::super::` is found; `super::` inside a module, comments and strings are not edges.
#[test]
fn the_checker_finds_cycles_and_only_cycles() {
    let dir = std::env::temp_dir().join(format!("no_module_cycles_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |p: &str, s: &str| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    write(
        "lib.rs",
        "mod a; mod b; mod c; pub use c::{Thing as Other, more::Deep};",
    );
    write(
        "a.rs",
        "use crate::b::f; // crate::c::x\nconst S: &str = \"crate::c\";\n\
         fn g<'a>(x: &'a str) -> char { 'c' }\n#[cfg(test)] mod tests { use super::*; }",
    );
    write("b.rs", "use crate::{Other, a::g};");
    write("c/mod.rs", "mod d;");
    write("c/d.rs", "use super::Thing; use super::super::b::f;");
    let found = cycles(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("a -> b -> c"), "{}", found[0]);
    let (ab, bc, cb) = (
        "a.rs:1",
        "b.rs:1 `crate::Other`",
        "d.rs:1 `super::super::b`",
    );
    assert!(found[0].contains(ab) && found[0].contains(bc) && found[0].contains(cb));
}

/// One line per cycle of the crate whose sources are in `src`: its modules, then each import
/// between them with where it is.
fn cycles(src: &Path) -> Vec<String> {
    let files = rust_files(src);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
    let mut reexports = BTreeMap::new();
    for root in ["lib.rs", "main.rs"] {
        if let Ok(text) = std::fs::read_to_string(src.join(root)) {
            root_reexports(&sanitize(&text), &modules, &mut reexports);
        }
    }
    // edges[a][b]: where a names b
    let mut edges: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for f in &files {
        let Some(from) = top_module(src, f) else {
            continue;
        };
        let rel = f.strip_prefix(src).unwrap();
        let path = module_path(rel);
        let text = sanitize(&std::fs::read_to_string(f).unwrap());
        for (line, to, how) in references(&text, &path, &modules, &reexports) {
            if to != from {
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .push(format!("{}:{line} `{how}`", rel.display()));
            }
        }
    }
    let crate_name = src.parent().unwrap().file_name().unwrap().to_string_lossy();
    strongly_connected(&modules, &edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let set: BTreeSet<&String> = c.iter().collect();
            let mut line = format!("{} ({crate_name})", c.join(" -> "));
            for a in &c {
                for (b, wheres) in &edges[a] {
                    if set.contains(b) {
                        line += &format!("\n    {a} -> {b}: {}", wheres.join(", "));
                    }
                }
            }
            line
        })
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// The module path of a file relative to `src`: `a.rs` and `a/mod.rs` are `[a]`, `a/b.rs` is
/// `[a, b]`, lib.rs and main.rs (and `bin/`, their own crates) the root `[]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return Vec::new();
    }
    let last = parts.pop().unwrap();
    let stem = last.strip_suffix(".rs").unwrap_or(&last).to_string();
    if !(stem == "mod" || (parts.is_empty() && (stem == "lib" || stem == "main"))) {
        parts.push(stem);
    }
    parts
}

fn top_module(src: &Path, f: &Path) -> Option<String> {
    module_path(f.strip_prefix(src).unwrap()).into_iter().next()
}

/// Items the root re-exports from a module (`pub use b::{X, Y as Z}` maps X, Y and Z to b).
fn root_reexports(text: &str, modules: &BTreeSet<String>, map: &mut BTreeMap<String, String>) {
    let chars: Vec<char> = text.chars().collect();
    let mut depth = 0;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 && word_at(&chars, i, "use") {
            let end = (i..chars.len())
                .find(|&j| chars[j] == ';')
                .unwrap_or(chars.len());
            let stmt: String = chars[i + 3..end].iter().collect();
            let words: Vec<&str> = stmt
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty() && !["crate", "self", "as"].contains(w))
                .collect();
            if let Some((m, items)) = words.split_first() {
                if modules.contains(*m) {
                    for it in items {
                        if !modules.contains(*it) {
                            map.insert(it.to_string(), m.to_string());
                        }
                    }
                }
            }
            i = end;
        }
        i += 1;
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether the word `w` (a whole identifier) starts at `i`.
fn word_at(chars: &[char], i: usize, w: &str) -> bool {
    let n = w.chars().count();
    (i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == '$'))
        && i + n <= chars.len()
        && chars[i..i + n].iter().copied().eq(w.chars())
        && chars.get(i + n).is_none_or(|&c| !is_ident(c))
}

/// Each path starting with `crate` or `super` that leaves the module, as (line, top-level
/// module it names, the path's start); `path` is the file's module path.
fn references(
    text: &str,
    path: &[String],
    modules: &BTreeSet<String>,
    reexports: &BTreeMap<String, String>,
) -> Vec<(usize, String, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut depth = 0usize;
    // inline modules open here: (name, brace depth inside them)
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\n' => line += 1,
            '{' => depth += 1,
            '}' => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        if word_at(&chars, i, "mod") {
            let (name, j) = ident(&chars, skip_ws(&chars, i + 3));
            let k = skip_ws(&chars, j);
            if !name.is_empty() && chars.get(k) == Some(&'{') {
                inline.push((name, depth + 1));
            }
        }
        if !(word_at(&chars, i, "crate") || word_at(&chars, i, "super")) {
            i += 1;
            continue;
        }
        if i > 1 && chars[i - 1] == ':' && chars[i - 2] == ':' {
            i += 1;
            continue; // `super` in the middle of a path is handled with its start
        }
        let mut here: Vec<String> = path.to_vec();
        here.extend(inline.iter().map(|(n, _)| n.clone()));
        let mut segs = Vec::new();
        let mut j = i;
        let mut group = false;
        loop {
            let (seg, k) = ident(&chars, j);
            if seg.is_empty() {
                group = chars.get(j) == Some(&'{');
                break;
            }
            segs.push(seg);
            let k2 = skip_ws(&chars, k);
            if chars.get(k2) == Some(&':') && chars.get(k2 + 1) == Some(&':') {
                j = skip_ws(&chars, k2 + 2);
            } else {
                j = k;
                break;
            }
        }
        let mut base = here;
        let mut rest = segs.as_slice();
        match rest.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &rest[1..];
            }
            _ => {
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
        }
        if rest.is_empty() && segs.len() == 1 && !group {
            i += 1; // `pub(crate)`, `super` alone
            continue;
        }
        if base.is_empty() {
            let heads: Vec<String> = match rest.first() {
                Some(h) => vec![h.clone()],
                None if group => group_heads(&chars, j),
                None => vec![],
            };
            for h in heads {
                let to = if modules.contains(&h) {
                    Some(h.clone())
                } else {
                    reexports.get(&h).cloned()
                };
                if let Some(to) = to {
                    let prefix: Vec<&str> = segs
                        .iter()
                        .map(String::as_str)
                        .take_while(|s| *s == "crate" || *s == "super")
                        .collect();
                    out.push((line, to, format!("{}::{h}", prefix.join("::"))));
                }
            }
        }
        // base non-empty: the path stays inside this top-level module
        let next = j.max(i + 1);
        line += chars[i + 1..next].iter().filter(|&&c| c == '\n').count();
        i = next;
    }
    out
}

/// The first identifier of each item of the `{...}` group opening at `open`.
fn group_heads(chars: &[char], open: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect = true;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '{' => {
                depth += 1;
                if depth == 1 {
                    expect = true;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect = true,
            c if expect && depth == 1 && is_ident(c) => {
                let (w, k) = ident(chars, i);
                heads.push(w);
                expect = false;
                i = k;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    heads
}

fn skip_ws(chars: &[char], mut i: usize) -> usize {
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

fn ident(chars: &[char], i: usize) -> (String, usize) {
    let mut j = i;
    while chars.get(j).is_some_and(|&c| is_ident(c)) {
        j += 1;
    }
    (chars[i.min(chars.len())..j].iter().collect(), j)
}

/// The source with comments removed and the insides of string and char literals blanked,
/// newlines kept (so line numbers stay).
fn sanitize(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let keep_lines = |out: &mut String, s: &[char]| {
        out.extend(s.iter().filter(|&&ch| ch == '\n'));
    };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let (mut depth, start) = (0, i);
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            keep_lines(&mut out, &c[start..i]);
        } else if c[i] == 'r'
            && (i == 0
                || !is_ident(c[i - 1])
                || (c[i - 1] == 'b' && (i < 2 || !is_ident(c[i - 2]))))
            && matches!(next, Some('"') | Some('#'))
            && raw_quote(&c, i + 1).is_some()
        {
            let (hashes, open) = raw_quote(&c, i + 1).unwrap();
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let mut j = open + 1;
            while j < c.len() && !c[j..].starts_with(&close) {
                j += 1;
            }
            out.push_str("r\"\"");
            keep_lines(&mut out, &c[open..j.min(c.len())]);
            i = (j + close.len()).min(c.len());
        } else if c[i] == '"' {
            let start = i;
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
            keep_lines(&mut out, &c[start..i.min(c.len())]);
        } else if c[i] == '\'' {
            // a char literal ('x', '\n', '\u{1F600}') or a lifetime ('a)
            let end = if next == Some('\\') {
                (i + 2..c.len()).find(|&j| c[j] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.push_str("' '");
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// For `#*"` at `i`: the number of `#`s and where the quote is.
fn raw_quote(c: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some((j - i, j))
}

/// Tarjan's strongly connected components, each in visiting order.
fn strongly_connected(
    nodes: &BTreeSet<String>,
    edges: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, Vec<String>>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(next) = s.edges.get(v) {
            for w in next.keys() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            comp.reverse();
            s.out.push(comp);
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in nodes {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}
