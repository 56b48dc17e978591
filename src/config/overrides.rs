//! `--set KEY=VALUE` on the command line: one config key changed without editing the file, as a
//! sweep needs (a Slurm job array, a shell loop over learning rates or losses).
//!
//! The overrides are applied to the file's TOML tree before the typed schema reads it, so a set
//! key is checked exactly as a key written in the file is (its type, unknown keys, every section
//! rule and every rule across sections), and the run records it in its `config.toml` like any
//! other setting (a resume with a different `--set` is a config change, refused without
//! `--allow-config-change`). An error caused by an override names the override, not the file.

use crate::error::{Error, Result};
use std::path::PathBuf;

/// One `--set KEY=VALUE`: a dotted key path and a TOML value.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// As given on the command line (`rl.lr=1e-6`), for messages.
    pub raw: String,
    /// The dotted key, split (`["rl", "lr"]`); never empty.
    pub path: Vec<String>,
    /// The value: `VALUE` read as a TOML value (`1e-6`, `true`, `"123"`, `[1, 2]`, `{ lr = 1e-5 }`),
    /// or, where it is not one, the text itself as a string (`cispo`, `/data/train.jsonl`).
    pub value: toml::Value,
}

impl Override {
    /// Read `KEY=VALUE` (the `value_parser` of every `--set` flag).
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        let (key, text) = raw.split_once('=').ok_or_else(|| "expects KEY=VALUE, e.g. --set rl.lr=1e-6".to_string())?;
        let path: Vec<String> = key.trim().split('.').map(|s| s.trim().to_string()).collect();
        if let Some(bad) =
            path.iter().find(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err(format!(
                "{bad:?} is not a key: a key is dotted names of letters, digits, '_' and '-' (e.g. loss.kind)"
            ));
        }
        Ok(Override { raw: raw.to_string(), path, value: value_of(text.trim()) })
    }

    /// The dotted key (`rl.lr`).
    pub fn key(&self) -> String {
        self.path.join(".")
    }

    /// How errors name this override as their source (in place of a file).
    pub fn source(&self) -> PathBuf {
        PathBuf::from(format!("--set {}", self.raw))
    }

    /// `msg`, an error this override caused, with a hint where a value read as a number or a
    /// boolean was meant as a string.
    pub fn explain(&self, msg: String) -> String {
        if msg.contains("expected a string") && !self.value.is_str() {
            let (key, text) = self.raw.split_once('=').unwrap_or((&self.raw, ""));
            return format!("{msg} (quote a string: --set '{key}=\"{}\"')", text.trim());
        }
        msg
    }
}

/// `text` as a TOML value, else as a string.
fn value_of(text: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        // exactly one key: a value with a newline could otherwise add keys of its own
        Ok(mut t) if t.len() == 1 => t.remove("v").unwrap_or_else(|| toml::Value::String(text.to_string())),
        _ => toml::Value::String(text.to_string()),
    }
}

/// Apply `sets` to `tree` in order (a later one wins): missing tables on a key's path are created;
/// a table value replaces the whole table. Setting a key under a value that is not a table (an
/// array, a number) is an error naming the override.
pub fn apply(tree: &mut toml::Table, sets: &[Override]) -> Result<()> {
    for o in sets {
        let (last, parents) = o.path.split_last().expect("Override::parse never gives an empty path");
        let mut table = &mut *tree;
        for (i, name) in parents.iter().enumerate() {
            let entry = table.entry(name.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(sub) => sub,
                other => {
                    return Err(Error::Config {
                        file: o.source(),
                        key: o.path[..=i].join("."),
                        msg: format!("is {} in the config, not a table, so {} cannot be set", a_type(other), o.key()),
                    })
                }
            };
        }
        table.insert(last.clone(), o.value.clone());
    }
    Ok(())
}

fn a_type(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// The override an error at dotted `key` comes from, if one does: the last that set `key` or a
/// table holding it (`critic` for `critic.lr`), or that created `key`'s table where `original`
/// (the file's tree) had none (`--set async.alpha=1` for an error on the whole `async` table).
pub fn source_of<'a>(sets: &'a [Override], original: &toml::Table, key: &str) -> Option<&'a Override> {
    let key = key.split(" (line ").next().unwrap_or(key);
    let under =
        |k: &str, table: &str| k == table || k.starts_with(&format!("{table}.")) || k.starts_with(&format!("{table}["));
    sets.iter().rev().find(|o| {
        let set = o.key();
        under(key, &set) || (set.starts_with(&format!("{key}.")) && !present(original, key))
    })
}

/// Whether dotted `key` names a value in `tree`.
fn present(tree: &toml::Table, key: &str) -> bool {
    let mut parts = key.split('.');
    let Some(first) = parts.next() else { return false };
    let mut v = tree.get(first);
    for p in parts {
        v = v.and_then(|x| x.as_table()).and_then(|t| t.get(p));
    }
    v.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(raw: &str) -> Override {
        Override::parse(raw).unwrap()
    }

    #[test]
    fn values_are_toml_where_they_parse_and_strings_elsewhere() {
        assert_eq!(set("rl.lr=1e-6").value, toml::Value::Float(1e-6));
        assert_eq!(set("rl.steps = 40").value, toml::Value::Integer(40));
        assert_eq!(set("train.tf=true").value, toml::Value::Boolean(true));
        assert_eq!(set("loss.kind=cispo").value, toml::Value::String("cispo".into()));
        assert_eq!(set("data.path=/d/train-1.jsonl").value, toml::Value::String("/d/train-1.jsonl".into()));
        assert_eq!(set("run.name=\"123\"").value, toml::Value::String("123".into()));
        assert_eq!(set("run.name=").value, toml::Value::String(String::new()));
        // a value may hold '='; a newline cannot smuggle in a second key
        assert_eq!(set("a.b=x=y").value, toml::Value::String("x=y".into()));
        assert_eq!(set("a.b=1\nc = 2").value, toml::Value::String("1\nc = 2".into()));
        let t = set("critic={ lr = 1e-5 }").value;
        assert_eq!(t.get("lr").and_then(|v| v.as_float()), Some(1e-5));
        assert_eq!(set(" rl . lr =2").path, ["rl", "lr"]);
        assert!(Override::parse("rl.lr").unwrap_err().contains("expects KEY=VALUE"));
        for (bad, segment) in
            [("=3", ""), ("rl..lr=1", ""), ("rl.=1", ""), ("r l.x=1", "r l"), ("\"rl\".lr=1", "\"rl\"")]
        {
            let e = Override::parse(bad).unwrap_err();
            assert!(e.starts_with(&format!("{segment:?} is not a key")), "{bad}: {e}");
        }
    }

    #[test]
    fn apply_sets_creates_replaces_and_names_a_path_through_a_value() {
        let mut tree: toml::Table =
            toml::from_str("[rl]\nlr = 1.0\nsteps = 3\n[critic]\nlr = 2.0\nwidth = 4\n").unwrap();
        let sets = [set("rl.lr=0.5"), set("async.alpha=1"), set("critic={ lr = 3.0 }"), set("rl.lr=0.25")];
        apply(&mut tree, &sets).unwrap();
        assert_eq!(tree["rl"]["lr"].as_float(), Some(0.25), "the last wins");
        assert_eq!(tree["rl"]["steps"].as_integer(), Some(3), "the rest of the table stays");
        assert_eq!(tree["async"]["alpha"].as_integer(), Some(1), "a missing table is created");
        assert!(tree["critic"].get("width").is_none(), "a table value replaces the table");
        let e = apply(&mut tree, &[set("rl.lr.x=1")]).unwrap_err().to_string();
        assert!(e.starts_with("--set rl.lr.x=1: key `rl.lr`: is a float"), "{e}");
    }

    #[test]
    fn errors_are_traced_to_the_override_that_caused_them() {
        let original: toml::Table = toml::from_str("[rl]\nlr = 1.0\n").unwrap();
        let sets = [set("rl.lr=2"), set("critic={ lr = 3.0 }"), set("async.alpha=1")];
        let src = |k: &str| source_of(&sets, &original, k).map(|o| o.raw.clone());
        assert_eq!(src("rl.lr").as_deref(), Some("rl.lr=2"));
        assert_eq!(src("rl.lr (line 4)").as_deref(), Some("rl.lr=2"));
        assert_eq!(src("critic.lr").as_deref(), Some("critic={ lr = 3.0 }"));
        assert_eq!(src("async").as_deref(), Some("async.alpha=1"), "the table the override created");
        assert_eq!(src("rl"), None, "rl is the file's table");
        assert_eq!(src("rl.steps"), None);
        assert_eq!(src("rl.lr_x"), None);
    }
}
