//! Gradient checkpointing (`[train] gradient_checkpointing`, `model::workspace`): the backward
//! that recomputes every layer's activations from its saved input gives the bits of the one that
//! kept them, on every architecture, for the policy's loss (with the entropy term) and a value
//! model's trunk, in a workspace that switches modes; the workspace then holds a fraction of the
//! activations; a training job's weights and metrics do not depend on it, and a resume may switch
//! it without being a change of the run.

mod common;
use arbor::model::init::init_params;
use arbor::model::{Arch, Batch, Model, ModelConfig, Workspace};
use arbor::rng::Rng;

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|f| f.to_bits()).collect()
}

/// A 4-layer model of `arch` with norms and biases away from their initial values.
fn model(arch: Arch) -> Model {
    let cfg = ModelConfig { num_layers: 4, ..common::tiny_config(arch, arch == Arch::Llama) };
    let mut params = init_params(&cfg, 3, 0.4);
    common::perturb_norms(&mut params, 8);
    Model::new(cfg, params).unwrap()
}

fn packed(v: u32) -> Batch {
    let mut rng = Rng::new(6);
    let mut b = Batch::new();
    for len in [7usize, 19, 3, 11] {
        let t: Vec<u32> = (0..len).map(|_| rng.below(v as u64) as u32).collect();
        b.push_lm(&t, 1).unwrap();
    }
    b
}

/// (log-probs, entropies, gradients) of L = Σ w·logp + Σ u·H in workspace `ws`.
fn policy_pass(m: &Model, b: &Batch, ws: &mut Workspace) -> [Vec<f32>; 3] {
    m.forward(b, ws).unwrap();
    let n = b.len();
    let w: Vec<f32> = (0..n).map(|i| ((i * 7) % 5) as f32 * 0.1 - 0.2).collect();
    let u: Vec<f32> = (0..n).map(|i| ((i * 3) % 4) as f32 * 0.01).collect();
    let (lp, ent) = (ws.logprobs[..n].to_vec(), ws.entropy[..n].to_vec());
    let mut grads = vec![0.0; m.params.data.len()];
    m.backward_with_entropy(b, &w, Some(&u), ws, &mut grads).unwrap();
    [lp, ent, grads]
}

/// (normed final states, trunk gradients) of a value head's loss Σ_i d_i · lnf_i,k·h_k.
fn trunk_pass(m: &Model, b: &Batch, ws: &mut Workspace) -> [Vec<f32>; 2] {
    m.forward_trunk(b, ws).unwrap();
    let (n, c) = (b.len(), m.cfg.hidden_size);
    let lnf = ws.lnf[..n * c].to_vec();
    for i in 0..n * c {
        ws.dln[i] = ((i % 11) as f32 - 5.0) * 0.03;
    }
    let mut grads = vec![0.0; m.params.data.len()];
    m.backward_trunk(b, ws, &mut grads).unwrap();
    [lnf, grads]
}

#[test]
fn the_recomputed_backward_gives_the_kept_backwards_bits() {
    for arch in [Arch::Qwen2, Arch::Llama, Arch::Qwen3, Arch::Mistral] {
        let m = model(arch);
        let b = packed(m.cfg.vocab_size as u32);
        let mut plain = Workspace::new(&m.cfg, 0);
        let want = policy_pass(&m, &b, &mut plain);
        let want_trunk = trunk_pass(&m, &b, &mut plain);
        assert!(want[2].iter().all(|g| g.is_finite()) && want[2].iter().any(|&g| g != 0.0));

        // one workspace through both modes and back: each pass in its mode
        let mut ws = Workspace::new(&m.cfg, 0);
        for round in 0..2 {
            ws.set_checkpointing(true);
            assert!(ws.checkpointing());
            let got = policy_pass(&m, &b, &mut ws);
            for (k, what) in ["log-probs", "entropies", "gradients"].iter().enumerate() {
                assert!(bits(&got[k]) == bits(&want[k]), "{arch:?} round {round}: checkpointed {what} differ");
            }
            let got = trunk_pass(&m, &b, &mut ws);
            assert!(bits(&got[0]) == bits(&want_trunk[0]), "{arch:?}: checkpointed trunk outputs differ");
            assert!(bits(&got[1]) == bits(&want_trunk[1]), "{arch:?}: checkpointed trunk gradients differ");
            assert_eq!(ws.layers.len(), 1, "{arch:?}: one set of layer activations");
            ws.set_checkpointing(false);
            let got = policy_pass(&m, &b, &mut ws);
            assert!(bits(&got[2]) == bits(&want[2]), "{arch:?} round {round}: gradients after switching back");
            assert_eq!(ws.layers.len(), m.cfg.num_layers);
        }
    }
}

#[test]
fn a_checkpointed_workspace_holds_one_layers_activations_and_every_layers_input() {
    let cfg = ModelConfig { num_layers: 8, ..common::tiny_config(Arch::Qwen2, false) };
    let n = 200;
    let plain = Workspace::new(&cfg, n);
    let mut ckpt = Workspace::default();
    ckpt.set_checkpointing(true);
    ckpt.ensure(&cfg, n);
    let (c, i, qkv, hd, h) = (cfg.hidden_size, cfg.intermediate_size, cfg.qkv_dim(), cfg.attn_dim(), cfg.num_heads);
    // a layer's saved activations besides its input: ln1, qkv, att, lse, resid_mid, ln2, gate|up,
    // act and the two 1/rms rows
    let layer = 4 * n * (c + qkv + hd + h + c + c + 2 * i + i + 2);
    let saved = plain.bytes() - ckpt.bytes();
    assert_eq!(saved, (cfg.num_layers - 1) * layer, "the other layers' activations go");
    assert_eq!(ckpt.resid_in.len(), cfg.num_layers);
    assert!(ckpt.capacity() >= n);
    println!("8 layers, {n} tokens: {} bytes kept, {} checkpointed", plain.bytes(), ckpt.bytes());
}

#[test]
fn the_attention_statistics_pass_reads_every_layer_from_a_checkpointing_engine() {
    use arbor::attention::stats::{SeqSteps, StatsConfig};
    use arbor::train::engine::Engine;
    let m = model(Arch::Qwen2);
    let b = packed(m.cfg.vocab_size as u32);
    let steps: Vec<SeqSteps> = (0..b.num_seqs())
        .map(|s| {
            let len = b.seq_starts[s + 1] - b.seq_starts[s];
            let mut bounds: Vec<usize> = [0].into_iter().chain((1..len).step_by(2)).chain([len]).collect();
            bounds.dedup();
            SeqSteps { bounds, response_start: 1, end_of_thinking: None }
        })
        .collect();
    let cfg = StatsConfig { fci_layers: vec![0, 3], ..StatsConfig::default() };
    let run = |checkpointing: bool| {
        let (mut e, mut ws) = (Engine::cpu(), Workspace::default());
        e.set_checkpointing(checkpointing);
        // a training forward first leaves the workspace checkpointed
        e.forward(&m, &b, &mut ws).unwrap();
        assert_eq!(ws.checkpointing(), checkpointing);
        e.attention_stats(&m, &b, &mut ws, &steps, &cfg).unwrap()
    };
    let (want, got) = (run(false), run(true));
    assert_eq!(format!("{want:?}"), format!("{got:?}"));
    assert!(format!("{want:?}").len() > 40);
}

/// SFT then PPO with two critics, a KL reference, mini-batches and micro-batches (every engine
/// the run makes: the policy's, its frozen reference, the critics' siblings).
fn job_config(out: &std::path::Path, checkpointing: bool) -> arbor::config::RunConfig {
    let text = common::small_addition(2)
        + "checkpoint_every = 1\nkeep_checkpoints = 20\n"
        + "\n[rl]\nsteps = 3\nprompts_per_step = 4\nsamples_per_prompt = 4\nmax_new_tokens = 5\n"
        + "eval_problems = 8\neval_samples = 2\neval_every = 2\nlog_every = 1\nfilter_zero_std = false\n"
        + "mini_batches = 2\nmicro_batch = 3\nepochs = 2\nlr = 1e-3\n"
        + "\n[loss]\nkind = \"ppo\"\nkl_coef = 0.01\nentropy_coef = 0.01\n"
        + "\n[critic]\ncount = 2\nlr = 1e-3\n";
    let mut c = arbor::config::RunConfig::parse(&text, std::path::Path::new("ckpt.toml")).unwrap();
    c.run.out_dir = out.to_path_buf();
    c.train.gradient_checkpointing = checkpointing;
    c
}

#[test]
fn a_checkpointing_run_ends_with_the_plain_runs_bits_and_may_resume_without_it() {
    use arbor::train::job;
    use common::metrics_without_clock as metrics;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let plain = job::run(&job_config(a.path(), false), None, &mut Vec::new()).unwrap();
    let ckpt = job::run(&job_config(b.path(), true), None, &mut Vec::new()).unwrap();
    assert!(bits(&plain.final_params) == bits(&ckpt.final_params), "weights differ with checkpointing");
    let (run_a, run_b) = (a.path().join("addition-sft"), b.path().join("addition-sft"));
    assert_eq!(metrics(&run_a), metrics(&run_b), "metrics differ with checkpointing");
    // the recorded config says which mode ran; a resume in the other mode is not a change of the run
    let recorded = std::fs::read_to_string(run_b.join("config.toml")).unwrap();
    assert!(recorded.contains("gradient_checkpointing = true"), "{recorded}");
    let mut log = Vec::new();
    let resumed = job::run(&job_config(b.path(), false), Some(&run_b.join("checkpoints/step-3")), &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(!log.contains("gradient_checkpointing"), "{log}");
    assert!(bits(&plain.final_params) == bits(&resumed.final_params), "weights differ after the resume");
    assert_eq!(metrics(&run_a), metrics(&run_b), "metrics differ after the resume");
}

#[test]
fn the_planned_workspace_size_is_what_the_workspace_holds() {
    use arbor::model::workspace::{planned_bytes, BufferSizes};
    for arch in [Arch::Qwen2, Arch::Qwen3] {
        for (layers, vocab) in [(3, 13), (5, 70_000)] {
            let cfg = ModelConfig { num_layers: layers, vocab_size: vocab, ..common::tiny_config(arch, false) };
            for n in [1, 37, 400] {
                for checkpointing in [false, true] {
                    let mut ws = Workspace::default();
                    ws.set_checkpointing(checkpointing);
                    ws.ensure(&cfg, n);
                    let what = format!("{arch:?} {layers} layers, vocabulary {vocab}, {n} tokens, {checkpointing}");
                    let sizes = BufferSizes::of(&arbor::tensor::Cpu, &cfg, n);
                    assert_eq!(planned_bytes(&cfg, n, checkpointing, sizes), ws.bytes() as u128, "{what}");
                }
            }
        }
    }
}
