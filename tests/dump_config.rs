//! The `config` attribute of a run's trajectory dump is the config the run is going with: written
//! when the dump is created, and replaced when a resumed run (possibly with `--allow-config-change`)
//! reopens it.

#[cfg(feature = "hdf5")]
#[test]
fn a_resumed_dump_holds_the_config_it_resumed_with() {
    use arbor::config::RunConfig;
    use arbor::io::trajectories::read_trajectories;
    use arbor::train::dump::{Dump, DUMP_FILE};
    let d = tempfile::tempdir().unwrap();
    let first = RunConfig::default_job();
    assert!(first.rl.as_ref().is_some_and(|rl| rl.dump_trajectories));
    drop(Dump::open(d.path(), &first, 0).unwrap());
    let path = d.path().join(DUMP_FILE);
    assert_eq!(read_trajectories(&path).unwrap().config, first.to_toml().unwrap());
    let mut changed = first.clone();
    if let Some(rl) = changed.rl.as_mut() {
        rl.lr *= 2.0;
    }
    let (was, now) = (first.to_toml().unwrap(), changed.to_toml().unwrap());
    assert_ne!(was, now);
    drop(Dump::open(d.path(), &changed, 3).unwrap());
    let config = read_trajectories(&path).unwrap().config;
    assert!(config == now, "the resumed dump still holds the config it was created with: {}", config == was);
}
