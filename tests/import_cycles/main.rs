//! No two source files of `src/` depend on each other, directly or through other files.
//!
//! The test reads every `src/**/*.rs` file of the library (not `src/main.rs`, which is a separate
//! binary crate) and builds a graph with one node per file and an edge X → Y when X refers to an
//! item of Y. It then asserts that no strongly connected component holds more than one file.
//!
//! What counts as a reference (comments, doc comments and string literals are skipped first):
//! - every path in a `use` tree (`use crate::a::{b::{c, d}, self}`, `use super::x`, `use self::y`,
//!   and `use child::z` where `child` is a module declared by this file), `pub use` included;
//! - every path in code that starts with `crate::`, `self::`, `super::` or the name of a child
//!   module followed by `::` (`crate::a::b::f(..)`, `super::super::T`, `ops::add(..)`).
//!
//! Resolution: a path is made absolute (relative to the module the text sits in, inline `mod x { }`
//! blocks included) and walked down the module tree as far as a file exists (`src/a/b.rs` or
//! `src/a/b/mod.rs`); `crate::a::b::Item` belongs to the file of module `crate::a::b`. When the
//! first remaining segment is a name that this file re-exports (`pub use path::Item;`, or `as`
//! a new name), resolution continues at the re-exported path, so a user of `crate::a::Item`
//! depends on the file that defines `Item`, not on the `mod.rs` that re-exports it.
//!
//! Not counted: `mod x;` declarations, references of a file to itself, and `pub use` lines of a
//! module file that point into its own descendants (a parent that declares `mod child;` and
//! re-exports `pub use child::X;` does not by that depend on the child; users of `parent::X` are
//! sent to the child by the rule above). A `pub use` of anything else, and a plain `use` of a
//! descendant, are ordinary edges. Not followed: names used bare after a glob import
//! (`use super::*`) or after a `use` of a module (`ops::f` after `use crate::tensor::cpu::ops;`:
//! the `use` line already counts).

mod graph;

use graph::{chain, cycles, graph};
use std::path::{Path, PathBuf};

// ------------------------------------------------------------------------------------ tests

/// Every library source file: (path relative to the crate root, module path, text).
fn source_files() -> Vec<(String, Vec<String>, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    walk(&root.join("src"), &mut paths);
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let rel = path.strip_prefix(root).expect("under the root").to_string_lossy().replace('\\', "/");
        if rel == "src/main.rs" {
            continue;
        }
        let mut module: Vec<String> =
            rel["src/".len()..rel.len() - ".rs".len()].split('/').map(str::to_string).collect();
        if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
            module.pop();
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        files.push((rel, module, text));
    }
    files
}

#[test]
fn no_import_cycles_between_source_files() {
    let files = source_files();
    assert!(files.len() > 50, "found only {} source files", files.len());
    let edges = graph(&files);
    let mut failures = Vec::new();
    for comp in cycles(&edges) {
        failures.push(format!("  {} files: {}\n    e.g. {}", comp.len(), comp.join(", "), chain(&comp, &edges)));
    }
    assert!(failures.is_empty(), "import cycles between source files:\n{}", failures.join("\n"));
}

/// The layering the cycle test cannot see (files of one layer may form no cycle and still reach
/// up): the ops layer (`src/tensor/**`, the CUDA backend's `Backend` implementation and its
/// GEMM) takes plain slices and shapes, never model or training types, and the model imports
/// nothing from training, the CLI or the configuration of a run.
#[test]
fn lower_layers_import_nothing_from_higher_ones() {
    let rules: &[(&str, &[&str])] = &[
        ("src/tensor/", &["src/model/", "src/train/", "src/rollout/", "src/cli/", "src/config/"]),
        ("src/cuda/backend.rs", &["src/model/", "src/train/", "src/rollout/", "src/cli/", "src/config/"]),
        ("src/cuda/gemm.rs", &["src/model/", "src/train/", "src/rollout/", "src/cli/", "src/config/"]),
        ("src/cuda/device.rs", &["src/model/", "src/train/", "src/rollout/", "src/cli/", "src/config/"]),
        ("src/attention/cpu.rs", &["src/model/", "src/train/", "src/rollout/", "src/cli/", "src/config/"]),
        ("src/model/", &["src/train/", "src/rollout/", "src/cli/", "src/config/"]),
        // the run configuration owns its schema: the training loop reads it, never the reverse
        ("src/config/", &["src/train/", "src/cli/"]),
    ];
    let edges = graph(&source_files());
    let mut bad = Vec::new();
    for (file, targets) in &edges {
        for (lower, higher) in rules.iter().filter(|(lower, _)| file.starts_with(lower)) {
            for (target, line) in targets.iter().filter(|(t, _)| higher.iter().any(|h| t.starts_with(h))) {
                bad.push(format!("  {file}:{line} -> {target} (files of {lower} may not use {higher:?})"));
            }
        }
    }
    assert!(bad.is_empty(), "imports against the layering:\n{}", bad.join("\n"));
}

fn file(path: &str, text: &str) -> (String, Vec<String>, String) {
    let mut module: Vec<String> = path["src/".len()..path.len() - 3].split('/').map(str::to_string).collect();
    if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
        module.pop();
    }
    (path.to_string(), module, text.to_string())
}

#[test]
fn two_files_that_use_each_other_are_a_cycle() {
    let files = [
        file("src/lib.rs", "pub mod a;\npub mod b;\n"),
        file("src/a.rs", "use crate::b::{g, self};\npub fn f() { g() }\n"),
        file(
            "src/b.rs",
            "pub fn g() {}\n// crate::a::f() in a comment is no reference\nfn h() { let s = \"crate::a::f\"; }\n",
        ),
    ];
    assert!(cycles(&graph(&files)).is_empty(), "b refers to a only in a comment and a string");
    let files = [
        file("src/lib.rs", "pub mod a;\npub mod b;\n"),
        file("src/a.rs", "use crate::b::{g, self};\npub fn f() { g() }\n"),
        file("src/b.rs", "pub fn g() {}\nfn h() -> u8 { crate::a::f(); b'x' }\n"),
    ];
    let edges = graph(&files);
    assert_eq!(cycles(&edges), vec![vec!["src/a.rs".to_string(), "src/b.rs".to_string()]]);
    assert_eq!(chain(&["src/a.rs".into(), "src/b.rs".into()], &edges), "src/a.rs:1 -> src/b.rs:2 -> src/a.rs");
}

#[test]
fn parser_follows_nested_use_trees_super_and_reexports() {
    let files = [
        file("src/lib.rs", "pub mod m;\npub mod x;\npub mod y;\n"),
        // A parent that re-exports its child is no cycle with the child using `super::`.
        file("src/m/mod.rs", "mod c;\npub use c::{C, D as E};\npub struct P;\n"),
        file("src/m/c.rs", "use super::P;\npub struct C;\npub struct D;\n"),
        // `crate::m::E` resolves through the re-export to src/m/c.rs.
        file(
            "src/x.rs",
            "use crate::{m::{self, E}, y::{self}};\n#[cfg(test)]\nmod tests { use super::super::y::Y; }\n",
        ),
        file("src/y.rs", "pub struct Y;\nfn f() { let _ = 'a'; let _: &'static str = r#\"crate::x\"#; }\n"),
    ];
    let edges = graph(&files);
    assert!(cycles(&edges).is_empty(), "{edges:?}");
    let x: Vec<&String> = edges["src/x.rs"].keys().collect();
    assert_eq!(x, ["src/m/c.rs", "src/m/mod.rs", "src/y.rs"]);
    assert_eq!(edges["src/m/c.rs"].keys().collect::<Vec<_>>(), ["src/m/mod.rs"]);
    assert!(edges["src/m/mod.rs"].is_empty(), "{:?}", edges["src/m/mod.rs"]);
    assert!(edges["src/y.rs"].is_empty());
    // A plain (non-pub) use of the child from the parent, while the child uses the parent, is one.
    let files = [
        file("src/lib.rs", "pub mod m;\n"),
        file("src/m/mod.rs", "mod c;\nuse c::C;\npub struct P;\nfn f() -> C { C }\n"),
        file("src/m/c.rs", "pub struct C(super::P);\n"),
    ];
    assert_eq!(cycles(&graph(&files)).len(), 1);
}
