//! The import rule of `server-lib` (ARCHITECTURE.md, ADR 0009): imports flow only downward,
//! `http → service → storage | clickcache | sink | olap → tls → domain`, with the builder (`lib.rs`,
//! `builder.rs`) on top (`tls`, the backing services' TLS client setup, sits under the stores
//! that use it and imports nothing of the crate); siblings of one layer (`storage`, `clickcache`, `sink`, `olap`) do not import
//! each other; and no two modules import each other in a circle.
//!
//! The test reads every file under `src/`, takes each `crate::…` and `super::…` path outside
//! comments and strings (grouped `use` trees included), resolves it to the deepest module it
//! names, and checks the rule. A module may use its ancestors (a layer's `mod.rs` holds the
//! layer's shared state and error types); those edges are left out of the circle check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Rank of each top-level module; a module may import its own top-level module or a lower rank.
fn rank(top: &str) -> Option<u8> {
    match top {
        "domain" => Some(0),
        "tls" => Some(1),
        "storage" | "clickcache" | "sink" | "olap" => Some(2),
        "service" => Some(3),
        "http" => Some(4),
        // The crate root and the builder compose every layer.
        "" | "builder" => Some(5),
        _ => None,
    }
}

type Module = Vec<String>;

/// The module a source file defines: `src/service/links.rs` → `service::links`,
/// `src/http/dashboard/mod.rs` → `http::dashboard`, `src/lib.rs` → the root.
fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The text with string and char literals and comments blanked out (line structure kept).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if c == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) && !ident_byte(b, i) {
            // Raw string r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                if b[j] == b'\n' {
                    out.push('\n');
                }
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' && (b.get(i + 2) == Some(&b'\'') || (b.get(i + 1) == Some(&b'\\'))) {
            // A char literal ('x' or '\n'); lifetimes ('a) are left alone.
            let mut j = i + 1;
            if b[j] == b'\\' {
                j += 1;
            }
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            i = j + 1;
            out.push_str("' '");
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

/// Whether the byte before `i` continues an identifier (so `r` at `i` is not a raw-string prefix).
fn ident_byte(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// `code` with the whitespace around `::` removed (`crate :: http` is `crate::http`).
fn joined_paths(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("::") {
        out.push_str(rest[..at].trim_end());
        out.push_str("::");
        rest = rest[at + 2..].trim_start();
    }
    out.push_str(rest);
    out
}

/// Every path that starts at `prefix` (`crate` or `super`) in `code`, with grouped `use` trees
/// expanded: `crate::domain::{records::X, reports}` → `domain::records::X`, `domain::reports`.
/// Each path comes with where it stands (a byte offset), for [`inline_modules_at`].
fn paths_after(code: &str, prefix: &str) -> Vec<(usize, Vec<String>)> {
    let b = code.as_bytes();
    let needle = format!("{prefix}::");
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(&needle) {
        let start = from + at;
        from = start + needle.len();
        if ident_byte(b, start) {
            continue;
        }
        let (trees, _) = parse_tree(b, from);
        found.extend(trees.into_iter().map(|t| (start, t)));
    }
    found
}

/// The inline modules (`mod tests { … }`) enclosing each byte offset of `code`, outermost first:
/// `super::` inside one of them starts from that inline module, not from the file's module.
fn inline_modules_at(code: &str) -> impl Fn(usize) -> Vec<String> {
    let b = code.as_bytes();
    // (name, start of its block, end of its block)
    let mut blocks: Vec<(String, usize, usize)> = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("mod ") {
        let start = from + at;
        from = start + 4;
        if ident_byte(b, start) {
            continue;
        }
        let name_end = start + 4 + code[start + 4..].find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(0);
        let name = code[start + 4..name_end].to_owned();
        let rest = code[name_end..].trim_start();
        if name.is_empty() || !rest.starts_with('{') {
            continue;
        }
        let open = code.len() - rest.len();
        let mut depth = 0usize;
        let mut end = code.len();
        for (i, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        blocks.push((name, open, end));
    }
    move |at| blocks.iter().filter(|(_, open, end)| *open < at && at < *end).map(|(n, _, _)| n.clone()).collect()
}

/// Parses a `use` tree starting at `i` (after a `::`): `a::b::c`, `a::{b, c::d}`, `{a, b}`.
fn parse_tree(b: &[u8], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut head = Vec::new();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            let mut all = Vec::new();
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                let (inner, next) = parse_tree(b, i);
                i = next;
                for mut p in inner {
                    let mut full = head.clone();
                    full.append(&mut p);
                    all.push(full);
                }
                // Skip `as alias` and anything else up to the next separator.
                while i < b.len() && b[i] != b',' && b[i] != b'}' {
                    i += 1;
                }
            }
            return (all, i);
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if start == i {
            return (vec![head], i);
        }
        head.push(String::from_utf8_lossy(&b[start..i]).into_owned());
        if b.get(i) == Some(&b':') && b.get(i + 1) == Some(&b':') {
            i += 2;
        } else {
            return (vec![head], i);
        }
    }
}

/// The deepest known module a path names (`domain::records::Campaign` → `domain::records`).
fn resolve(path: &[String], modules: &BTreeSet<Module>) -> Module {
    (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| modules.contains(m)).unwrap_or_default()
}

/// Module → the modules it refers to.
fn graph(files: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules: BTreeSet<Module> = files.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (module, text) in files {
        let code = joined_paths(&code_only(text));
        let mut targets = BTreeSet::new();
        for (_, path) in paths_after(&code, "crate") {
            targets.insert(resolve(&path, &modules));
        }
        let inline = inline_modules_at(&code);
        for (at, path) in paths_after(&code, "super") {
            // `super::super::x` climbs once per `super`, from the inline module it stands in.
            let ups = 1 + path.iter().take_while(|p| *p == "super").count();
            let mut base = module.clone();
            base.extend(inline(at));
            base.truncate(base.len().saturating_sub(ups));
            base.extend(path.into_iter().skip(ups - 1));
            targets.insert(resolve(&base, &modules));
        }
        targets.remove(module);
        edges.insert(module.clone(), targets);
    }
    edges
}

fn top(m: &Module) -> &str {
    m.first().map(String::as_str).unwrap_or("")
}

/// What the pure domain must not name: I/O, HTTP, runtimes, stores, the wall clock (the one
/// system clock behind `Clock` lives in `domain::config`).
const IMPURE: &[&str] = &[
    "tokio::",
    "axum::",
    "reqwest::",
    "rusqlite::",
    "tokio_postgres",
    "redis::",
    "rdkafka",
    "std::fs",
    "std::net::Tcp",
];

/// The rule's violations: upward or sideways imports, unknown top-level modules, aliases of the
/// crate root (which would hide paths from this check), I/O in the domain, circles.
fn violations(files: &BTreeMap<Module, String>) -> Vec<String> {
    let edges = graph(files);
    let name = |m: &Module| if m.is_empty() { "crate".to_owned() } else { m.join("::") };
    let mut found = Vec::new();
    for (module, text) in files {
        let code = joined_paths(&code_only(text));
        let words: Vec<&str> = code.split_whitespace().collect();
        if words.windows(2).any(|w| (w[0] == "crate" || w[0] == "self") && w[1] == "as") {
            found.push(format!("{}: aliases the crate root; import by crate:: paths", name(module)));
        }
        if top(module) == "domain" {
            for word in IMPURE {
                if code.contains(word) {
                    found.push(format!("{}: the domain names {word}", name(module)));
                }
            }
            if code.contains("SystemTime") && module.as_slice() != ["domain", "config"] {
                found.push(format!("{}: the domain reads the wall clock", name(module)));
            }
        }
    }
    for (from, targets) in &edges {
        let Some(own) = rank(top(from)) else {
            found.push(format!("{}: top-level module {:?} belongs to no layer", name(from), top(from)));
            continue;
        };
        for to in targets {
            let Some(theirs) = rank(top(to)) else { continue };
            if top(to) != top(from) && theirs >= own && own != 4 {
                found.push(format!("{} imports {} (a layer that is not below it)", name(from), name(to)));
            }
        }
    }
    // Circles among modules, leaving out edges to a module's own ancestors.
    let is_ancestor = |a: &Module, m: &Module| a.len() < m.len() && m.starts_with(a);
    let mut state: BTreeMap<&Module, u8> = BTreeMap::new(); // 1 = on the stack, 2 = done
    fn visit<'a>(
        m: &'a Module,
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<&'a Module, u8>,
        stack: &mut Vec<&'a Module>,
        is_ancestor: &dyn Fn(&Module, &Module) -> bool,
        found: &mut Vec<Vec<&'a Module>>,
    ) {
        state.insert(m, 1);
        stack.push(m);
        for to in edges.get(m).into_iter().flatten() {
            if is_ancestor(to, m) || !edges.contains_key(to) {
                continue;
            }
            match state.get(to) {
                Some(1) => {
                    let at = stack.iter().position(|s| *s == to).unwrap_or(0);
                    found.push(stack[at..].to_vec());
                }
                Some(_) => {}
                None => visit(to, edges, state, stack, is_ancestor, found),
            }
        }
        stack.pop();
        state.insert(m, 2);
    }
    let mut circles = Vec::new();
    for m in edges.keys() {
        if !state.contains_key(m) {
            visit(m, &edges, &mut state, &mut Vec::new(), &is_ancestor, &mut circles);
        }
    }
    for circle in circles {
        let names: Vec<String> = circle.iter().map(|m| name(m)).collect();
        found.push(format!("import circle: {} → {}", names.join(" → "), names[0]));
    }
    found
}

fn read_tree(root: &Path) -> BTreeMap<Module, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    files
        .into_iter()
        .map(|p| (module_of(p.strip_prefix(root).unwrap()), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

#[test]
fn imports_flow_only_downward_and_never_in_a_circle() {
    let files = read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(files.len() > 40, "read only {} files", files.len());
    // Every layer is there and was parsed.
    for layer in ["domain", "storage", "clickcache", "sink", "olap", "service", "http"] {
        assert!(files.keys().any(|m| top(m) == layer), "no module under src/{layer}");
    }
    let edges = graph(&files);
    assert!(
        edges[&vec!["http".to_owned(), "ingest".to_owned()]].contains(&vec!["service".to_owned(), "ingest".to_owned()]),
        "the scan must see http::ingest use service::ingest"
    );
    let found = violations(&files);
    assert!(found.is_empty(), "the import rule is broken:\n{}", found.join("\n"));
}

fn tree(files: &[(&str, &str)]) -> BTreeMap<Module, String> {
    files.iter().map(|(path, text)| (module_of(Path::new(path)), text.to_string())).collect()
}

#[test]
fn the_check_catches_upward_imports_and_circles() {
    let ok = [
        ("lib.rs", "pub mod domain; pub mod service; pub mod http;"),
        ("domain/mod.rs", "pub mod records;"),
        ("domain/records.rs", "pub struct A;"),
        ("service/mod.rs", "use crate::domain::records::A; pub mod a; pub mod b;"),
        ("service/a.rs", "use super::{b::f, Services};"),
        ("service/b.rs", "pub fn f() {}"),
        ("http/mod.rs", "use crate::{service::a, domain::{records::A}};"),
    ];
    assert_eq!(violations(&tree(&ok)), Vec::<String>::new());

    let mut upward = ok.to_vec();
    upward.push(("domain/bad.rs", "// crate::http in a comment is fine\nuse crate::http::X;"));
    assert_eq!(violations(&tree(&upward)), vec!["domain::bad imports http (a layer that is not below it)"]);

    let mut grouped = ok.to_vec();
    grouped.push(("service/c.rs", "use crate::{domain::records::A, http::{X, Y}};"));
    assert_eq!(violations(&tree(&grouped)), vec!["service::c imports http (a layer that is not below it)"]);

    let mut sideways = ok.to_vec();
    sideways.extend([("storage/mod.rs", "let s = \"crate::sink\";"), ("sink/mod.rs", "use crate::storage::S;")]);
    assert_eq!(violations(&tree(&sideways)), vec!["sink imports storage (a layer that is not below it)"]);

    let mut circle = ok.to_vec();
    circle[5] = ("service/b.rs", "pub fn f() { super::a::g() }");
    assert_eq!(violations(&tree(&circle)), vec!["import circle: service::a → service::b → service::a"]);

    // Forms that try to hide a path from the scan.
    let mut climbing = ok.to_vec();
    climbing.push(("domain/deep/mod.rs", "fn f() { super::super::http::X::new() }"));
    assert_eq!(violations(&tree(&climbing)), vec!["domain::deep imports http (a layer that is not below it)"]);
    let mut spaced = ok.to_vec();
    spaced.push(("domain/spaced.rs", "use crate ::\n    http :: X;"));
    assert_eq!(violations(&tree(&spaced)), vec!["domain::spaced imports http (a layer that is not below it)"]);
    let mut aliased = ok.to_vec();
    aliased.push(("domain/alias.rs", "use crate as root;\nuse root::http::X;"));
    assert_eq!(violations(&tree(&aliased)), vec!["domain::alias: aliases the crate root; import by crate:: paths"]);
    let mut inline = ok.to_vec();
    inline.push(("sink/mod.rs", "pub mod prelude { pub use super::Sink; }\nmod tests { use super::super::http::X; }"));
    assert_eq!(violations(&tree(&inline)), vec!["sink imports http (a layer that is not below it)"]);
    let mut impure = ok.to_vec();
    impure.push(("domain/io.rs", "fn f() { let _ = std::fs::read(\"x\"); tokio::spawn(async {}); }"));
    assert_eq!(
        violations(&tree(&impure)),
        vec!["domain::io: the domain names tokio::", "domain::io: the domain names std::fs"]
    );
}
