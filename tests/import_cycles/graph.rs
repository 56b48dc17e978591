//! The file graph of `tests/import_cycles`: a lexer that drops comments and literals, a reader
//! of `use` trees and `crate::`/`self::`/`super::` paths, resolution of paths to files (through
//! re-exports), and strongly connected components.

use std::collections::{BTreeMap, BTreeSet, HashMap};

// ------------------------------------------------------------------------------------ lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

/// Tokens of `text` with their 1-based line numbers; comments, strings, chars and lifetimes
/// are dropped, numbers become `Punct('0')`.
fn lex(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0usize;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&c, i) {
            // r"..", r#".."#, br"..": skip to the quote followed by the same number of '#'.
            i += hashes.0;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '"' && (1..=hashes.1).all(|k| at(i + k) == '#') {
                    i += 1 + hashes.1;
                    break;
                }
                line += usize::from(c[i] == '\n');
                i += 1;
            }
        } else if ch == '"' || (ch == 'b' && at(i + 1) == '"') {
            i += if ch == 'b' { 2 } else { 1 };
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                i += 1;
            }
            i += 1;
        } else if ch == '\'' || (ch == 'b' && at(i + 1) == '\'') {
            let q = if ch == 'b' { i + 1 } else { i };
            if at(q + 1) == '\\' {
                // An escaped char literal: up to the closing quote.
                i = q + 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(q + 2) == '\'' {
                i = q + 3;
            } else {
                // A lifetime or label: drop the quote, the name lexes as an identifier.
                i = q + 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = if ch == 'r' && at(i + 1) == '#' { i + 2 } else { i };
            let mut j = start;
            while j < c.len() && (c[j].is_alphanumeric() || c[j] == '_') {
                j += 1;
            }
            out.push((Tok::Ident(c[start..j].iter().collect()), line));
            i = j;
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.' && at(i + 1).is_ascii_digit()) {
                i += 1;
            }
            out.push((Tok::Punct('0'), line));
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// At a raw string start (`r"`, `r#`+`"`, `br"`...): (characters up to and including the opening
/// quote, number of '#').
fn raw_string_start(c: &[char], i: usize) -> Option<(usize, usize)> {
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some((j + 1 - i, hashes))
}

// ------------------------------------------------------------------------------------ parser

/// One reference of a file: an absolute module/item path, the line, and whether it comes from a
/// `pub use` line.
#[derive(Debug, Clone)]
struct Ref {
    path: Vec<String>,
    line: usize,
    pub_use: bool,
}

/// What one file says: its references and the names it re-exports (name → absolute path).
#[derive(Debug, Default)]
struct Parsed {
    refs: Vec<Ref>,
    reexports: HashMap<String, Vec<String>>,
}

fn ident(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

/// Expand a `use` tree starting at `toks[*i]` (after `use`) into full paths, prefix included.
fn use_tree(toks: &[(Tok, usize)], i: &mut usize, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
    let mut path = prefix.to_vec();
    if toks.get(*i).map(|t| &t.0) == Some(&Tok::PathSep) {
        *i += 1; // a leading `::` (extern crate path)
        path.push("::".into());
    }
    loop {
        match toks.get(*i).map(|t| &t.0) {
            Some(Tok::Ident(s)) if s == "self" && !path.is_empty() => {
                *i += 1;
                let alias = alias(toks, i).unwrap_or_else(|| path.last().cloned().unwrap_or_default());
                out.push((path.clone(), alias));
                return;
            }
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                *i += 1;
                if toks.get(*i).map(|t| &t.0) == Some(&Tok::PathSep) {
                    *i += 1;
                    continue;
                }
                let alias = alias(toks, i).unwrap_or_else(|| path.last().cloned().unwrap_or_default());
                out.push((path, alias));
                return;
            }
            Some(Tok::Punct('*')) => {
                *i += 1;
                out.push((path, "*".into()));
                return;
            }
            Some(Tok::Punct('{')) => {
                *i += 1;
                loop {
                    match toks.get(*i).map(|t| &t.0) {
                        Some(Tok::Punct('}')) => {
                            *i += 1;
                            return;
                        }
                        Some(Tok::Punct(',')) => *i += 1,
                        None => return,
                        _ => use_tree(toks, i, &path, out),
                    }
                }
            }
            _ => return,
        }
    }
}

/// `as name` after a use leaf, if present.
fn alias(toks: &[(Tok, usize)], i: &mut usize) -> Option<String> {
    if ident(toks.get(*i)) == Some("as") {
        let name = ident(toks.get(*i + 1)).map(str::to_string);
        *i += 2;
        return name;
    }
    None
}

/// Make `path` (as written in module `cur`) absolute, without the leading `crate`. `None` for
/// paths into other crates.
fn absolute(path: &[String], cur: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let first = path.first()?;
    match first.as_str() {
        "crate" => Some(path[1..].to_vec()),
        "self" => Some(cur.iter().chain(&path[1..]).cloned().collect()),
        "super" => {
            let mut base = cur.to_vec();
            let mut k = 0;
            while path.get(k).map(String::as_str) == Some("super") {
                base.pop()?;
                k += 1;
            }
            Some(base.into_iter().chain(path[k..].iter().cloned()).collect())
        }
        _ => {
            let mut child = cur.to_vec();
            child.push(first.clone());
            modules.contains(&child).then(|| cur.iter().chain(path).cloned().collect())
        }
    }
}

/// Whether the token before index `i` (a `use`) makes it public: `pub use`, `pub(crate) use`...
fn is_pub(toks: &[(Tok, usize)], i: usize) -> bool {
    let prev = |k: usize| if k == 0 { None } else { toks.get(k - 1) };
    if ident(prev(i)) == Some("pub") {
        return true;
    }
    if prev(i).map(|t| &t.0) == Some(&Tok::Punct(')')) {
        let mut k = i - 1;
        while k > 0 && toks[k].0 != Tok::Punct('(') {
            k -= 1;
        }
        return ident(prev(k)) == Some("pub");
    }
    false
}

/// References of the file of module `module` with text `text`; `modules` are all file modules.
fn parse(text: &str, module: &[String], modules: &BTreeSet<Vec<String>>) -> Parsed {
    let toks = lex(text);
    let mut parsed = Parsed::default();
    // Inline `mod x { .. }` blocks: (name, brace depth inside the block).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let cur: Vec<String> = module.iter().cloned().chain(inline.iter().map(|m| m.0.clone())).collect();
        let prev_sep = i > 0 && toks[i - 1].0 == Tok::PathSep;
        match &toks[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if inline.last().map(|m| m.1) == Some(depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(s) if s == "mod" => {
                if let (Some(name), Some((Tok::Punct('{'), _))) = (ident(toks.get(i + 1)), toks.get(i + 2)) {
                    inline.push((name.to_string(), depth + 1));
                    depth += 1;
                    i += 3;
                    continue;
                }
                i += 2; // `mod x;`: a declaration, not a reference
                continue;
            }
            Tok::Ident(s) if s == "use" && !prev_sep && toks.get(i + 1).map(|t| &t.0) != Some(&Tok::Punct('<')) => {
                let pub_use = is_pub(&toks, i);
                let line = toks[i].1;
                let mut leaves = Vec::new();
                i += 1;
                use_tree(&toks, &mut i, &[], &mut leaves);
                for (path, name) in leaves {
                    let Some(abs) = absolute(&path, &cur, modules) else { continue };
                    if pub_use && name != "*" && inline.is_empty() {
                        parsed.reexports.insert(name, abs.clone());
                    }
                    parsed.refs.push(Ref { path: abs, line, pub_use });
                }
                continue;
            }
            Tok::Ident(s) if !prev_sep && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::PathSep) => {
                let line = toks[i].1;
                let mut path = vec![s.clone()];
                let mut j = i + 1;
                while toks.get(j).map(|t| &t.0) == Some(&Tok::PathSep) {
                    match ident(toks.get(j + 1)) {
                        Some(seg) => path.push(seg.to_string()),
                        None => break,
                    }
                    j += 2;
                }
                if let Some(abs) = absolute(&path, &cur, modules) {
                    parsed.refs.push(Ref { path: abs, line, pub_use: false });
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    parsed
}

// ------------------------------------------------------------------------------------ graph

/// The file graph of a set of files given as (path relative to the crate root, module path,
/// text): for each file, the files it depends on, each with the first line that says so.
pub fn graph(files: &[(String, Vec<String>, String)]) -> BTreeMap<String, BTreeMap<String, usize>> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.1.clone()).collect();
    let file_of: HashMap<&[String], &String> = files.iter().map(|f| (f.1.as_slice(), &f.0)).collect();
    let parsed: HashMap<&String, Parsed> = files.iter().map(|f| (&f.0, parse(&f.2, &f.1, &modules))).collect();
    let resolve = |path: &[String]| -> Option<String> {
        let mut path = path.to_vec();
        for _ in 0..16 {
            let k = (0..=path.len()).rev().find(|&k| file_of.contains_key(&path[..k]))?;
            let file = file_of[&path[..k]];
            match path.get(k).and_then(|name| parsed[file].reexports.get(name)) {
                Some(target) if *target != path[..=k] => {
                    path = target.iter().chain(&path[k + 1..]).cloned().collect();
                }
                _ => return Some(file.clone()),
            }
        }
        None
    };
    let mut edges = BTreeMap::new();
    for (file, module, _) in files {
        let out: &mut BTreeMap<String, usize> = edges.entry(file.clone()).or_default();
        for r in &parsed[file].refs {
            if r.pub_use && r.path.len() > module.len() && r.path.starts_with(module) {
                continue; // a parent re-exporting its own descendants
            }
            if let Some(target) = resolve(&r.path).filter(|t| t != file) {
                out.entry(target).or_insert(r.line);
            }
        }
    }
    edges
}

/// Strongly connected components with more than one node (Tarjan), each sorted.
pub fn cycles(edges: &BTreeMap<String, BTreeMap<String, usize>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, usize>>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
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
        for w in s.edges.get(v).into_iter().flat_map(|m| m.keys()) {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let lw = s.low[w.as_str()];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w.as_str()) {
                let iw = s.index[w.as_str()];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
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
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

/// A cycle through `comp[0]` inside the component, as `a.rs:LINE -> b.rs:LINE -> ... -> a.rs`
/// (each line is where the file on its left refers to the next one).
pub fn chain(comp: &[String], edges: &BTreeMap<String, BTreeMap<String, usize>>) -> String {
    let inside: BTreeSet<&String> = comp.iter().collect();
    let start = &comp[0];
    // Breadth-first from start back to start, within the component.
    let mut prev: HashMap<&String, &String> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    'search: while let Some(v) = queue.pop_front() {
        for w in edges[v].keys().filter(|w| inside.contains(w)) {
            if w == start {
                prev.insert(start, v);
                break 'search;
            }
            if !prev.contains_key(w) {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    let mut path = vec![start];
    let mut v = prev.get(start).copied();
    while let Some(p) = v.filter(|p| *p != start) {
        path.push(p);
        v = prev.get(p).copied();
    }
    path.push(start);
    path.reverse(); // start, ..., start in edge order
    let mut s = String::new();
    for pair in path.windows(2) {
        s += &format!("{}:{} -> ", pair[0], edges[pair[0]][pair[1]]);
    }
    s + start
}
