//! The module graph of the application crate is acyclic (ARCHITECTURE.md, "Invariants").
//!
//! Read from the sources, not from rustc: every `crate::<module>` path in code (comments and
//! string literals removed; `use crate::{a, b::c}` groups included) is an edge from the
//! top-level module that contains the file to `<module>`. The same is done one level down, for
//! sibling submodules of each top-level module (`super::x` from `src/m/y.rs`, `crate::m::x`
//! anywhere in `src/m/`); a parent and its own children are one unit and not compared. A new
//! cycle fails here, naming the modules and one file per edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::repo;

/// (from, to) → one file that makes the edge.
type Edges = BTreeMap<(String, String), PathBuf>;

#[test]
fn top_level_modules_form_no_cycle() {
    let src = repo().join("src");
    let mut edges = Edges::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap();
        let Some(from) = top_module(rel) else {
            continue;
        };
        for path in crate_paths(&code_only(&std::fs::read_to_string(&file).unwrap())) {
            let to = &path[0];
            if to != &from && is_module(&src, to) {
                edges
                    .entry((from.clone(), to.clone()))
                    .or_insert_with(|| rel.to_path_buf());
            }
        }
    }
    assert!(
        edges.len() > 10,
        "the scan found too few edges ({}): is the parser broken?",
        edges.len()
    );
    if std::env::var_os("SDSEG_PRINT_MODULE_GRAPH").is_some() {
        print_graph(&edges);
    }
    if let Some(cycle) = find_cycle(&edges) {
        panic!("{}", describe("top-level modules", &cycle, &edges));
    }
}

#[test]
fn sibling_submodules_form_no_cycle() {
    let src = repo().join("src");
    let mut checked = 0;
    for top in std::fs::read_dir(&src).unwrap() {
        let dir = top.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let top = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut edges = Edges::new();
        for file in rust_files(&dir) {
            let rel = file.strip_prefix(&dir).unwrap();
            // `src/m/mod.rs` is the parent itself; its edges to children are declarations.
            let Some(from) = top_module(rel).filter(|f| f != "mod") else {
                continue;
            };
            // Folders below src/m/; a `mod.rs` is its folder's module.
            let mut depth = rel.components().count() - 1;
            if rel.file_name().is_some_and(|n| n == "mod.rs") {
                depth -= 1;
            }
            let code = code_only(&std::fs::read_to_string(&file).unwrap());
            let mut targets = Vec::new();
            for p in crate_paths(&code) {
                if p.len() >= 2 && p[0] == top {
                    targets.push(p[1].clone());
                }
            }
            for p in super_paths(&code) {
                // From src/m/y.rs `super::` is m; from src/m/y/z.rs it takes `super::super::`.
                if p.0 == depth + 1 {
                    targets.push(p.1);
                }
            }
            for to in targets {
                if to != from && is_module(&dir, &to) {
                    edges
                        .entry((from.clone(), to))
                        .or_insert_with(|| file.strip_prefix(&src).unwrap().to_path_buf());
                }
            }
        }
        if std::env::var_os("SDSEG_PRINT_MODULE_GRAPH").is_some() {
            println!("submodules of {top}:");
            print_graph(&edges);
        }
        if let Some(cycle) = find_cycle(&edges) {
            panic!(
                "{}",
                describe(&format!("submodules of `{top}`"), &cycle, &edges)
            );
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} module folders found");
}

/// Files under `src/<dir>` (code only) that mention any of `needles`, except `allowed`.
fn offenders(dir: &str, needles: &[&str], allowed: &[&str]) -> Vec<String> {
    let src = repo().join("src");
    let mut out = Vec::new();
    let root = src.join(dir);
    let files = if root.is_file() {
        vec![root]
    } else if root.is_dir() {
        rust_files(&root)
    } else {
        vec![]
    };
    for file in files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if allowed
            .iter()
            .any(|a| rel == *a || rel.starts_with(&format!("{a}/")))
        {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        if let Some(n) = needles.iter().find(|n| code.contains(**n)) {
            out.push(format!("src/{rel} ({n})"));
        }
    }
    out
}

#[test]
fn the_pipeline_never_sees_candle_except_through_the_segmenter_seam() {
    let found = offenders("pipeline", &["candle"], &["pipeline/segmenter.rs"]);
    assert!(
        found.is_empty(),
        "candle outside pipeline::segmenter: {found:?}"
    );
    for dir in [
        "io",
        "metrics",
        "geometry.rs",
        "volume.rs",
        "eval.rs",
        "eval",
    ] {
        let found = offenders(dir, &["candle"], &[]);
        assert!(found.is_empty(), "{dir} uses candle: {found:?}");
    }
}

#[test]
fn file_access_stays_where_the_map_says() {
    const FS: &[&str] = &["std::fs", "fs::", "File::", "OpenOptions"];
    let found = offenders("metrics", FS, &[]);
    assert!(found.is_empty(), "metrics opens files: {found:?}");
    // The model reads weights (checkpoint/) and configs (config.rs), nothing else.
    let found = offenders("model", FS, &["model/checkpoint", "model/config.rs"]);
    assert!(
        found.is_empty(),
        "model opens files outside checkpoint/config: {found:?}"
    );
}

/// DICOM and NIfTI are read and written in `io`. Two named places outside it use the format
/// crates: `volume` keeps a NIfTI input's header (`nifti::NiftiHeader`) for the label writer,
/// and `phantom`'s DICOM series writer makes test and demo series with dicom-rs.
#[test]
fn file_format_crates_stay_in_io() {
    const DICOM: &[&str] = &[
        "dicom_object",
        "dicom_core",
        "dicom_dictionary_std",
        "dicom_pixeldata",
        "dicom_encoding",
        "dicom_transfer_syntax_registry",
        "jpeg2k",
        "openjpeg_sys",
    ];
    let src = repo().join("src");
    let mut dicom = Vec::new();
    let mut nifti = Vec::new();
    for file in rust_files(&src) {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel.starts_with("io/") {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        let names_crate = |name: &str| {
            code.match_indices(name).any(|(at, _)| {
                let before = code[..at].chars().next_back();
                let after = &code[at + name.len()..];
                !before.is_some_and(|c| is_ident(c) || c == ':')
                    && (after.starts_with("::") || after.starts_with(';'))
            })
        };
        if rel != "phantom/dicom_write.rs" {
            if let Some(c) = DICOM.iter().find(|c| names_crate(c)) {
                dicom.push(format!("{rel} ({c})"));
            }
        }
        if rel == "volume.rs" {
            continue;
        }
        let uses_crate =
            code.contains("use nifti") || (code.contains("nifti::") && !code.contains("io::nifti"));
        if uses_crate {
            nifti.push(rel);
        }
    }
    assert!(dicom.is_empty(), "DICOM crates outside io: {dicom:?}");
    assert!(
        nifti.is_empty(),
        "the nifti crate outside io and volume: {nifti:?}"
    );
}

#[test]
fn the_scanner_sees_grouped_imports_and_ignores_comments() {
    let code = code_only(
        "use crate::{io::{a, b}, model::c};\n// crate::train\n/* crate::phantom */\n\
         let s = \"crate::eval\"; let c = 'x';\nfn f() { crate::metrics::dice(); }\n\
         use super::super::cases::Case;",
    );
    let heads: BTreeSet<String> = crate_paths(&code)
        .into_iter()
        .map(|p| p[0].clone())
        .collect();
    assert_eq!(
        heads,
        ["io", "metrics", "model"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(super_paths(&code), vec![(2, "cases".to_string())]);
    let edges: Edges = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .into_iter()
        .map(|(f, t)| ((f.to_string(), t.to_string()), PathBuf::new()))
        .collect();
    assert_eq!(find_cycle(&edges).unwrap().len(), 3);
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The module a file belongs to, one level below `rel`'s root: `io/dicom/scan.rs` → `io`,
/// `eval.rs` → `eval`; the crate roots (`lib.rs`, `main.rs`) belong to none.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

fn is_module(dir: &Path, name: &str) -> bool {
    dir.join(format!("{name}.rs")).is_file() || dir.join(name).is_dir()
}

/// The source with comments, string and char literals blanked (lengths kept).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.extend(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.extend(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(if b[i] == b'\n' { b'\n' } else { b' ' });
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i + 1..].starts_with(b"\"") || b[i + 1..].starts_with(b"#")) {
            // Raw string r"…" / r#"…"#.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let end: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            i += 2 + hashes;
            out.extend(std::iter::repeat_n(b' ', 2 + hashes));
            while i < b.len() && !b[i..].starts_with(&end) {
                out.push(b' ');
                i += 1;
            }
            i += end.len();
            out.extend(std::iter::repeat_n(b' ', end.len()));
        } else if b[i] == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    out.push(b' ');
                    i += 1;
                }
                out.push(b' ');
                i += 1;
            }
            out.push(b' ');
            i += 1;
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            out.extend(b"   ");
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            // '\n', '\u{..}'
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                out.push(b' ');
                i += 1;
            }
            out.push(b' ');
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every `crate::a::b…` path as its segments (at least the first), with `crate::{…}` groups
/// expanded to each member's leading segments.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(k) = rest.find("crate::") {
        let before = rest[..k].chars().next_back();
        rest = &rest[k + "crate::".len()..];
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            continue;
        }
        out.extend(path_tails(rest));
    }
    out
}

/// Paths that start after `crate::` (or `super::…::`): `a::b`, or a `{…}` group.
fn path_tails(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    if let Some(group) = s.strip_prefix('{') {
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = i;
                break;
            }
        }
        let mut members = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        let inner = &group[..end];
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    members.push(&inner[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        members.push(&inner[start..]);
        return members
            .into_iter()
            .flat_map(path_tails)
            .filter(|p| !p.is_empty() && p[0] != "self")
            .collect();
    }
    let mut segments = Vec::new();
    let mut t = s;
    loop {
        let n = t.find(|c: char| !is_ident(c)).unwrap_or(t.len());
        if n == 0 {
            break;
        }
        segments.push(t[..n].to_string());
        t = &t[n..];
        match t.strip_prefix("::") {
            Some(r) if r.starts_with(|c: char| is_ident(c)) => t = r,
            _ => break,
        }
    }
    if segments.is_empty() {
        vec![]
    } else {
        vec![segments]
    }
}

/// `super::…::x` paths as (number of `super::`, first segment after them).
fn super_paths(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(k) = rest.find("super::") {
        let before = rest[..k].chars().next_back();
        rest = &rest[k..];
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            rest = &rest["super::".len()..];
            continue;
        }
        let mut n = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            n += 1;
            rest = r;
        }
        for p in path_tails(rest) {
            out.push((n, p[0].clone()));
        }
    }
    out
}

/// One cycle of the graph, as its nodes in order, if there is any.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (f, t) in edges.keys() {
        next.entry(f).or_default().push(t);
    }
    // 0 = new, 1 = on the stack, 2 = done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(n, 1);
        stack.push(n);
        for &m in next.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|&s| s == m).unwrap();
                    return Some(stack[at..].iter().map(|s| s.to_string()).collect());
                }
                0 => {
                    if let Some(c) = visit(m, next, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let nodes: Vec<&str> = next.keys().copied().collect();
    for n in nodes {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, &next, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn describe(what: &str, cycle: &[String], edges: &Edges) -> String {
    let mut lines = vec![format!("a cycle among the {what}:")];
    for (i, from) in cycle.iter().enumerate() {
        let to = &cycle[(i + 1) % cycle.len()];
        let file = &edges[&(from.clone(), to.clone())];
        lines.push(format!("  {from} -> {to}   (e.g. src/{})", file.display()));
    }
    lines.push(
        "Move the shared item into the lower module, or invert the dependency (ARCHITECTURE.md)."
            .into(),
    );
    lines.join("\n")
}

/// `SDSEG_PRINT_MODULE_GRAPH=1 cargo test --test it architecture -- --nocapture` prints the graph.
fn print_graph(edges: &Edges) {
    let mut by_from: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (f, t) in edges.keys() {
        by_from.entry(f).or_default().push(t);
    }
    for (f, ts) in by_from {
        println!("  {f} -> {}", ts.join(", "));
    }
}
