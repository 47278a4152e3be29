//! The library's rooms stand on the rooms below them: no top-level module
//! of `src/` reaches (through `crate::...`) a module that reaches back to
//! it, directly or through others. Read from the source, so a new cycle
//! fails the plain tier the day it is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its code names.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            // The front end and the crate root are above every room.
            if matches!(top.as_str(), "main" | "cli" | "lib") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let name: String = line[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        out.entry(top.clone()).or_default().insert(name);
                    }
                }
            }
        }
    }
    out
}

fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(n) = stack.pop() {
        for m in g.get(&n).into_iter().flatten() {
            if m == to {
                return true;
            }
            if seen.insert(m.clone()) {
                stack.push(m.clone());
            }
        }
    }
    false
}

#[test]
fn plain_no_room_imports_a_room_that_imports_it() {
    let g = edges(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(g.len() > 10, "too few modules read: {g:?}");
    let mut cycles = vec![];
    for (a, bs) in &g {
        for b in bs {
            if reaches(&g, b, a) {
                cycles.push(format!("{a} -> {b} -> ... -> {a}"));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between rooms: {cycles:#?}"
    );
}

#[test]
fn plain_the_cycle_check_sees_a_cycle() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert!(reaches(&g, "b", "a") && reaches(&g, "a", "a"));
    assert!(!reaches(&g, "a", "c"));
}
