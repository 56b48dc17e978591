//! The attention statistics pass never materialises a T×T attention map: a counting global
//! allocator records the largest single allocation and the peak of live bytes while the pass
//! runs on one 1024-token sequence of the bench-tiny model (4 layers × 4 heads, all of them
//! feeding FCI, two of them rhythm layers).

use arbor::attention::stats::{attention_stats, SeqSteps, StatsConfig};
use arbor::model::init::init_params;
use arbor::model::{Batch, Model, ModelConfig, Workspace};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn statistics_pass_memory_is_linear_in_sequence_length() {
    let cfg_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/models/bench-tiny/config.json");
    let cfg = ModelConfig::from_hf_file(&cfg_path).unwrap();
    let model = Model::new(cfg.clone(), init_params(&cfg, 7, 0.02)).unwrap();
    let t = 1024usize;
    let toks: Vec<u32> = (0..t as u32).map(|i| (i * 37 + 11) % cfg.vocab_size as u32).collect();
    let mut batch = Batch::new();
    batch.push_lm(&toks, 0).unwrap();
    let prompt = 100;
    let mut bounds: Vec<usize> = vec![0];
    bounds.extend((prompt..t).step_by(16));
    bounds.push(t);
    let steps = vec![SeqSteps { bounds, response_start: prompt, end_of_thinking: None }];
    let mut ws = Workspace::new(&cfg, t);
    model.forward(&batch, &mut ws).unwrap();
    let stats_cfg = StatsConfig { keep_head_partials: true, ..StatsConfig::default() };
    // A fixed pool: every running task holds one score tile, so the peak depends on threads.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    let (peak, largest) = pool.install(|| {
        attention_stats(&model, &batch, &ws, &steps, &stats_cfg).unwrap(); // warm-up
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        LARGEST.store(0, Ordering::Relaxed);
        let stats = attention_stats(&model, &batch, &ws, &steps, &stats_cfg).unwrap();
        let measured = (PEAK.load(Ordering::Relaxed) - base, LARGEST.load(Ordering::Relaxed));
        assert_eq!(stats[0].waad.len(), t - prompt);
        measured
    });

    let map_bytes = t * t * 4; // one head's T×T f32 attention map: 4 MiB
    let heads = cfg.num_layers * cfg.num_heads;
    println!("largest allocation {largest} B, peak extra live {peak} B; one T×T map {map_bytes} B, {heads} heads");
    // The largest block is a 64 × 256 score tile (64 KiB, fixed) or a per-sequence
    // [rhythm heads, T] partial (8 floats per token): below half of the forward's own
    // 64-row × T scratch block, and 1/64 of a single head's T×T map.
    assert!(largest < t * 64 * 4 / 2, "largest allocation {largest} B: not far below 64 rows × T floats");
    // Everything alive at once (4 threads' tiles, every per-head partial, the results) stays
    // below a quarter of ONE head's map, where the naive pass would hold all 16 heads' maps.
    assert!(peak < map_bytes / 4, "peak extra memory {peak} B is not far below one T×T map ({map_bytes} B)");
}
