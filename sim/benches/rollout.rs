//! Criterion bench: events/s of the queue-scheduling rollout scenario (sim/scenarios/peer-rollout.toml).

use arbor_sim::run::run_scenario;
use arbor_sim::scenario::Scenario;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::Path;

fn rollout(c: &mut Criterion) {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/peer-rollout.toml"));
    let sc = Scenario::load(path).expect("peer-rollout.toml");
    let events = run_scenario(&sc, 1).expect("run").events;
    let mut g = c.benchmark_group("sim");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events));
    g.bench_function("rollout_queue_64gpu_20steps", |b| b.iter(|| run_scenario(&sc, 1).expect("run").events));
    g.finish();
}

criterion_group!(benches, rollout);
criterion_main!(benches);
