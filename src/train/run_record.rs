//! What a run directory records about its own configuration: `config.toml` is the resolved config
//! the steps ran with. A resume compares the config it is given against it; a change of any
//! setting (other than where the run lives and how many threads it uses, which change no result)
//! is refused unless `--allow-config-change` is given, and then the change is recorded: the
//! previous config is kept as `config.until-step-N.toml`, `config-history.jsonl` gains a line, and
//! metrics.jsonl an `event` line at the step where the change took effect.

use crate::error::{Error, Result};
use crate::train::metrics::ConfigChangeLine;
use crate::train::run_dir::read_if_present;
use std::collections::BTreeMap;
use std::path::Path;

/// Settings that may differ on a resume without being a change of the run (where it lives, how
/// many threads compute it, whether the backward recomputes activations, whether the optimizer's
/// state is sharded: docs/config.md's resume into another `run.name` or `--out-dir`).
const NOT_A_CHANGE: [&str; 6] = [
    "run.name",
    "run.out_dir",
    "run.threads",
    "run.tensorboard",
    "train.gradient_checkpointing",
    "parallel.shard_optimizer",
];

/// One changed setting: dotted key, value recorded by the run, value given now (`None` = absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: String,
    pub was: Option<String>,
    pub now: Option<String>,
}

/// Every leaf of a TOML tree by dotted key (array elements as `key[i]`), values in TOML syntax.
fn leaves(v: &toml::Value, path: String, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, x) in t {
                leaves(x, if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out);
            }
        }
        toml::Value::Array(a) if a.iter().any(|x| x.is_table() || x.is_array()) => {
            for (i, x) in a.iter().enumerate() {
                leaves(x, format!("{path}[{i}]"), out);
            }
        }
        // an f32 setting widened to f64 by the serializer reads as the f32 it is (0.001, not 0.0010000000474974513)
        toml::Value::Float(f) if (*f as f32) as f64 == *f => {
            out.insert(path, format!("{}", *f as f32));
        }
        other => {
            out.insert(path, other.to_string());
        }
    }
}

/// The settings that differ between two resolved configs (TOML texts), by dotted key.
pub fn diff(recorded: &str, now: &str, file: &Path) -> Result<Vec<Change>> {
    let parse = |text: &str| -> Result<BTreeMap<String, String>> {
        let v: toml::Value = toml::from_str(text).map_err(|e| Error::Config {
            file: file.into(),
            key: "<toml>".into(),
            msg: format!("the run's recorded config does not parse: {}", e.message()),
        })?;
        let mut out = BTreeMap::new();
        leaves(&v, String::new(), &mut out);
        Ok(out)
    };
    let (a, b) = (parse(recorded)?, parse(now)?);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    Ok(keys
        .into_iter()
        .filter(|k| !NOT_A_CHANGE.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .map(|k| Change { key: k.clone(), was: a.get(k).cloned(), now: b.get(k).cloned() })
        .collect())
}

fn show(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(absent)")
}

/// What a resume changes, checked before the run directory is touched: the resolved config `now`
/// of a run resumed after global step `step`, compared with `recorded` (the config the
/// checkpoint's steps ran with: its `run_config.toml`, else the `config.toml` of the run that
/// wrote it; None where there is neither: nothing to compare). A change is refused unless `allow`;
/// nothing is written either way.
pub fn check_resume_config(recorded: Option<&Path>, now: &str, step: u64, allow: bool) -> Result<ConfigResume> {
    let Some(path) = recorded else { return Ok(ConfigResume { recorded: String::new(), changes: Vec::new() }) };
    // (none there: a run killed before it wrote its config, nothing recorded to compare with)
    let recorded = read_if_present(path, |p| std::fs::read_to_string(p))?.unwrap_or_default();
    let changes = if recorded.is_empty() { Vec::new() } else { diff(&recorded, now, path)? };
    if !changes.is_empty() && !allow {
        return Err(Error::Config {
            file: path.to_path_buf(),
            key: changes[0].key.clone(),
            msg: format!(
                "the resume changes {} setting(s) the run's steps 1..{step} used ({}); resume with the recorded \
                 config (the same file and --set flags), or pass --allow-config-change to continue with the new one (the change is then recorded \
                 in config-history.jsonl and metrics.jsonl)",
                changes.len(),
                listed(&changes)
            ),
        });
    }
    Ok(ConfigResume { recorded, changes })
}

/// A resume's config, checked ([`check_resume_config`]) and not yet recorded.
#[derive(Debug, Clone)]
pub struct ConfigResume {
    recorded: String,
    changes: Vec<Change>,
}

impl ConfigResume {
    /// The settings the resume changes (`key: was → now; …`), if any.
    pub fn describe(&self) -> Option<String> {
        (!self.changes.is_empty()).then(|| listed(&self.changes))
    }
}

fn listed(changes: &[Change]) -> String {
    let l: Vec<String> = changes.iter().map(|c| format!("{}: {} → {}", c.key, show(&c.was), show(&c.now))).collect();
    l.join("; ")
}

/// Record a checked resume in `run_dir` (after the run directory is prepared): `config.toml`
/// becomes `now`, and the file it replaces, where that differs in a setting, is kept as
/// `config.until-step-N.toml` (the first free `.K` suffix after that: no earlier record is
/// overwritten); an allowed change also adds a `config-history.jsonl` line. Returns the
/// metrics.jsonl event line of an allowed change.
pub fn record_resume_config(
    run_dir: &Path,
    checked: ConfigResume,
    now: &str,
    step: u64,
) -> Result<Option<ConfigChangeLine>> {
    let path = run_dir.join("config.toml");
    let ConfigResume { recorded, changes } = checked;
    // the file this resume replaces, when it differs in a setting (a rollback past a change back to
    // the config of the checkpoint's time replaces the newer one): kept, like a changed config
    let current = read_if_present(&path, |p| std::fs::read_to_string(p))?;
    let differs = |c: &str| diff(c, now, &path).map(|d| !d.is_empty());
    let kept_text = match current {
        Some(c) if differs(&c)? => c,
        _ if !changes.is_empty() => recorded,
        _ => {
            crate::io::atomic::write_atomic(&path, now.as_bytes())?;
            return Ok(None);
        }
    };
    let kept = crate::train::run_dir::free_file(&run_dir.join(format!("config.until-step-{step}.toml")));
    crate::io::atomic::write_atomic(&kept, kept_text.as_bytes())?;
    if changes.is_empty() {
        crate::io::atomic::write_atomic(&path, now.as_bytes())?;
        return Ok(None);
    }
    let entries: serde_json::Map<String, serde_json::Value> =
        changes.iter().map(|c| (c.key.clone(), serde_json::json!({"was": c.was, "now": c.now}))).collect();
    let event = ConfigChangeLine { step, event: "config_change", changes: entries };
    let history = run_dir.join("config-history.jsonl");
    let mut text = read_if_present(&history, |p| std::fs::read_to_string(p))?.unwrap_or_default();
    text.push_str(&format!("{}\n", serde_json::json!({"from_step": step + 1, "previous": kept.file_name().map(|n| n.to_string_lossy().into_owned()), "changes": event.changes})));
    crate::io::atomic::write_atomic(&history, text.as_bytes())?;
    crate::io::atomic::write_atomic(&path, now.as_bytes())?;
    Ok(Some(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_changed_added_and_removed_keys_but_not_the_location() {
        let a = "[run]\nname = \"x\"\nout_dir = \"a\"\nthreads = 1\n[rl]\nlr = 1e-4\nsteps = 3\n";
        let b =
            "[run]\nname = \"x\"\nout_dir = \"b\"\nthreads = 2\ntensorboard = true\n[rl]\nlr = 2e-4\nsteps = 3\n[loss]\nkl_coef = 0.0\n";
        let d = diff(a, b, Path::new("c.toml")).unwrap();
        let keys: Vec<&str> = d.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["loss.kl_coef", "rl.lr"]);
        assert_eq!(d[1].was.as_deref(), Some("0.0001"));
        assert_eq!(d[0].was, None);
        assert!(diff(a, a, Path::new("c.toml")).unwrap().is_empty());
    }
}
