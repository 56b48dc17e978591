//! Every committed run configuration parses, validates and builds its task.

use arbor::config::RunConfig;

#[test]
fn committed_configs_parse_and_build_their_tasks() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = RunConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let task = cfg.task().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let p = task.problem(arbor::tasks::SPLIT_TRAIN, 0);
            assert!(!p.prompt.is_empty() && p.solution.is_some(), "{}: {p:?}", path.display());
            n += 1;
        }
    }
    assert!(n >= 3, "expected the default, addition-grpo and countdown-grpo configs");
}
