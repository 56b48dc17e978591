//! The run config TOML: shipped configs parse, bad values name file, key and value, mutations never panic.

use super::*;

/// The shipped run configs: configs/*.toml (but the `compare-*` presets of `arbor experiment`,
/// which tests/configs.rs covers) and the embedded ones.
fn shipped_configs() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .expect("configs/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("compare-")))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("config is readable");
            (p, text)
        })
        .collect();
    out.sort();
    out.push(("<DEFAULT_CONFIG>".into(), DEFAULT_CONFIG.to_string()));
    out.push(("<ADDITION_CONFIG>".into(), ADDITION_CONFIG.to_string()));
    out
}

fn check_config(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("fuzzed-run.toml");
    if let Err(e) = RunConfig::parse(text, file) {
        let msg = e.to_string();
        prop_assert!(msg.contains("fuzzed-run.toml"), "the error does not name the file: {msg}");
    }
    Ok(())
}

#[test]
fn shipped_configs_parse() {
    let configs = shipped_configs();
    assert!(configs.len() >= 4, "found only {} configs", configs.len());
    for (path, text) in &configs {
        RunConfig::parse(text, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn bad_config_values_name_file_key_and_value() {
    let file = Path::new("run.toml");
    let cases = [
        ("[train]\nlr = -1.0", "train.lr", "-1"),
        ("[parallel]\ntp = 0", "parallel.tp", "0"),
        ("[train]\nbatch_size = \"four\"", "line", "four"),
        ("[data]\nkind = \"chess\"", "line", "chess"),
        ("[train]\nstepz = 3", "line", "stepz"),
        // bf16/tf32 products are a GPU setting: the CPU computes in f32
        ("[train]\ndtype = \"bf16\"", "train.dtype", "bf16"),
        ("[train]\ndtype = \"fp8\"", "line", "fp8"),
    ];
    for (extra, key, value) in cases {
        let text = merge_toml(DEFAULT_CONFIG, extra);
        let msg = RunConfig::parse(&text, file).expect_err(extra).to_string();
        assert!(msg.contains("run.toml") && msg.contains(key) && msg.contains(value), "{extra}: {msg}");
    }
}

/// Every `key = value` line of every shipped config, with every odd value of its type in turn:
/// an exhaustive sweep of single-value edits (the proptest below combines several).
#[test]
fn config_validation_never_panics_on_any_single_odd_value() {
    let mut parsed = 0;
    for (path, text) in shipped_configs() {
        let lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        for i in 0..lines.len() {
            for k in 0..ODD_FLOATS.len().max(ODD_STRINGS.len()).max(ODD_INTEGERS.len()) {
                let mut edited = lines.clone();
                if !retype_line(&mut edited, i, k) {
                    break;
                }
                if let Err(e) = RunConfig::parse(&edited.join("\n"), Path::new("sweep.toml")) {
                    assert!(e.to_string().contains("sweep.toml"), "{}: {e}", path.display());
                }
                parsed += 1;
            }
        }
    }
    assert!(parsed > 1000, "swept only {parsed} edits");
}

#[test]
fn env_ranges_that_overflow_are_errors() {
    // found by config_validation_never_panics_on_odd_values: high − low overflowed i64
    let text = format!(
        "{ADDITION_CONFIG}\n[rl]\nsteps = 1\n\n[env]\nkind = \"guess\"\nlow = -9223372036854775808\nhigh = 9223372036854775807\n"
    );
    let msg = RunConfig::parse(&text, Path::new("env.toml")).expect_err("an i64-wide range").to_string();
    assert!(msg.contains("env.toml") && msg.contains("env.low") && msg.contains("-9223372036854775808"), "{msg}");
}

/// `base` with the keys of `extra` (one table header then `key = value` lines) set in that table.
fn merge_toml(base: &str, extra: &str) -> String {
    let mut doc: toml::Table = toml::from_str(base).expect("base parses");
    let extra: toml::Table = toml::from_str(extra).expect("extra parses");
    for (table, kv) in extra {
        let (Some(dst), toml::Value::Table(kv)) =
            (doc.entry(table).or_insert(toml::Value::Table(Default::default())).as_table_mut(), kv)
        else {
            panic!("extra must be one table");
        };
        dst.extend(kv);
    }
    toml::to_string(&doc).expect("serializes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn config_parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_config(&text)?;
    }

    #[test]
    fn config_parse_never_panics_on_toml_like_text(text in "([a-z_]{1,8} = [-0-9a-z\\[\\]\"., ]{0,12}\n|\\[[a-z.]{1,8}\\]\n){0,12}") {
        check_config(&text)?;
        check_config(&format!("{DEFAULT_CONFIG}\n{text}"))?;
    }

    #[test]
    fn config_parse_never_panics_on_mutated_shipped_configs(pick in any::<Index>(), edits in edits(4)) {
        let configs = shipped_configs();
        let (_, text) = &configs[pick.index(configs.len())];
        check_config(&mutate_text(text, &edits))?;
    }

    #[test]
    fn config_validation_never_panics_on_odd_values(
        pick in any::<Index>(),
        picks in proptest::collection::vec((any::<Index>(), any::<Index>()), 1..4),
    ) {
        let configs = shipped_configs();
        let (_, text) = &configs[pick.index(configs.len())];
        check_config(&retype_values(text, &picks))?;
    }
}
