//! The crate's layers point one way. Every `crate::…` path in the library's code (comments, doc
//! links and test modules aside) is read from `src/`, mapped to the unit it names, and checked
//! against the order in docs/ARCHITECTURE.md: a unit may use units of its own layer or below,
//! never above, and the units form no cycle.
//!
//! Units are the top-level modules, with two refinements that follow the code: each component's
//! `config.rs` (or `config/`) belongs to the `config` unit (the configuration is validated section
//! by section beside the component it configures, and the component's runtime builds on it). What
//! a section declares and checks (its types, their parsing from text, pure checks) lives there
//! too, so that validating never reaches into the component's runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top; a unit may depend on its own layer and those listed before it.
const LAYERS: &[&[&str]] = &[
    &["model", "state_file", "logging", "histogram", "clock"],
    // `calc` is pure arithmetic over model types (no I/O, no configuration reader); its section
    // types are part of the configuration.
    &["config", "calc"],
    &["codec", "ledger", "mqtt"],
    &[
        "acquisition",
        "audit",
        "modbus",
        "dlt645",
        "derived",
        "simulator",
        "completeness",
        "history",
        "series",
        "spool",
    ],
    &["uplink", "live"],
    &["fanout", "http", "tail", "broker"],
    &["app", "cli"],
];

/// Uses that still point the wrong way, each with why it stays for now. The tests fail on any
/// other; an entry that no longer matches a use fails too, so the list only shrinks.
const KNOWN: &[(&str, &str, &str)] = &[];

fn known(unit: &str, used: &str) -> bool {
    KNOWN.iter().any(|(u, d, _)| *u == unit && *d == used)
}

fn layer_of(unit: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&unit))
        .unwrap_or_else(|| {
            panic!("unit {unit:?} is in no layer: add it to LAYERS and to docs/ARCHITECTURE.md")
        })
}

/// The unit a file of `src/` belongs to.
fn unit_of_file(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    let top = parts.first()?.clone();
    if top == "lib" || top == "main" {
        return None;
    }
    if parts.len() > 1 && parts[1] == "config" {
        return Some("config".into());
    }
    Some(top)
}

/// The unit a `crate::a::b::…` path names.
fn unit_of_path(segments: &[&str]) -> String {
    match segments {
        [_, "config", ..] => "config".into(),
        [top, ..] => (*top).into(),
        [] => unreachable!("a crate path has a segment"),
    }
}

/// The code of a file without comments, string literals and its inline test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every `crate::` path in `code`, as its segments, with `use crate::{a, b::c}` groups expanded to
/// their first segments.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let inside_a_path = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        rest = after;
        if inside_a_path {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        paths.push(segments(&item));
                        item.clear();
                    }
                    _ => item.push(c),
                }
            }
            paths.push(segments(&item));
        } else {
            paths.push(segments(after));
        }
    }
    paths.retain(|p| !p.is_empty());
    paths
}

fn segments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for seg in s.trim().split("::") {
        let ident: String = seg
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        out.push(ident);
        if !seg.chars().all(|c| c.is_alphanumeric() || c == '_') {
            break;
        }
    }
    out
}

/// `super::` paths of the file at `rel` written as the `crate::` paths they are, so that a
/// component's `config.rs` reaching into its component through `super::` is seen.
fn resolve_super(text: &str, rel: &Path) -> String {
    let mut module: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if module.last().is_some_and(|m| m == "mod") {
        module.pop();
    }
    module.pop();
    let parent = if module.is_empty() {
        "crate::".to_owned()
    } else {
        format!("crate::{}::", module.join("::"))
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("super::") {
        let inside_a_path = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        out.push_str(&rest[..i]);
        out.push_str(if inside_a_path { "super::" } else { &parent });
        rest = &rest[i + "super::".len()..];
    }
    out.push_str(rest);
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("read a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// unit → units it uses, each with one place that shows it.
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src/").to_owned();
        // Test modules kept in files of their own (`mod tests;`).
        if rel
            .file_stem()
            .is_some_and(|s| s == "tests" || s.to_string_lossy().ends_with("_tests"))
        {
            continue;
        }
        let Some(unit) = unit_of_file(&rel) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let text = resolve_super(&text, &rel);
        let deps = graph.entry(unit.clone()).or_default();
        for path in crate_paths(&code_of(&text)) {
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            let used = unit_of_path(&refs);
            // A `super::` inside an inline module resolves one level too high; what it names is
            // then no module of the crate, and it stays within its file's unit.
            if !src.join(refs[0]).is_dir() && !src.join(format!("{}.rs", refs[0])).is_file() {
                continue;
            }
            if used != unit {
                deps.entry(used)
                    .or_insert_with(|| format!("{}: crate::{}", rel.display(), path.join("::")));
            }
        }
    }
    graph
}

#[test]
fn every_unit_uses_only_its_own_layer_and_those_below() {
    let mut wrong = Vec::new();
    for (unit, deps) in graph() {
        for (used, at) in deps {
            if layer_of(&used) > layer_of(&unit) && !known(&unit, &used) {
                wrong.push(format!(
                    "{unit} (layer {}) uses {used} (layer {}): {at}",
                    layer_of(&unit),
                    layer_of(&used)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses that point up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_units_form_no_cycle() {
    let graph = graph();
    // Depth-first search for a back edge; the path to it is the cycle.
    fn visit(
        unit: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|u| u == unit) {
            let mut cycle = path[i..].to_vec();
            cycle.push(unit.to_owned());
            return Some(cycle);
        }
        if done.contains(unit) {
            return None;
        }
        path.push(unit.to_owned());
        for used in graph.get(unit).into_iter().flat_map(|d| d.keys()) {
            if known(unit, used) {
                continue;
            }
            if let Some(cycle) = visit(used, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(unit.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for unit in graph.keys() {
        if let Some(cycle) = visit(unit, &graph, &mut Vec::new(), &mut done) {
            let shown: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], graph[&w[0]][&w[1]]))
                .collect();
            panic!("a cycle between units:\n{}", shown.join("\n"));
        }
    }
}

#[test]
fn the_reader_finds_grouped_and_plain_paths_and_skips_comments() {
    let code = code_of(
        "use crate::config::{Config, Stream};\nuse crate::{model::Record, spool};\n\
         // crate::app::nothing\nlet s = \"crate::http\"; x::crate::no;\n\
         #[cfg(test)]\nmod tests {\n use crate::cli;\n}\n",
    );
    let found: Vec<String> = crate_paths(&code).iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["config", "model::Record", "spool"]);
}

#[test]
fn every_known_exception_is_still_needed() {
    let graph = graph();
    for (unit, used, why) in KNOWN {
        assert!(
            graph.get(*unit).is_some_and(|d| d.contains_key(*used)),
            "{unit} no longer uses {used}: remove it from KNOWN ({why})"
        );
    }
}
