//! The activation-traffic mechanism (issue 22): the training passes' memory-bound activation bytes,
//! `(layer_passes · layers · (17h + 6kv + 5f) + head_passes · 3 · vocab) · 2 B / (G · stream_gb_per_s)`
//! per token, on top of FLOPs / (peak · mfu). Each test asserts something a broken mechanism fails.

use arbor_sim::activation;
use arbor_sim::cost::CostModel;
use arbor_sim::policy_cost::TrainCost;
use arbor_sim::scenario::{Placement, Scenario};
use std::path::Path;

/// A data-parallel training scenario (`tp = pp = 1`): `hardware` and `model` are extra lines of those
/// tables, `phases` the policy's phase list.
fn scenario(hardware: &str, model: &str, phases: &str) -> Scenario {
    let text = format!(
        r#"
name = "act"
steps = 4
warmup_steps = 1
[hardware]
gpus = 16
{hardware}
[model]
params_b = 1.5
kv_bytes_per_token = 28672
layers = 28
{model}
[training]
tp = 1
pp = 1
[workload]
prompts_per_step = 4
responses_per_prompt = 2
prompt_tokens = 8
response_tokens = {{ kind = "constant", value = 10 }}
max_response_tokens = 16
[[policy]]
name = "p"
mode = "async"
placement = "disaggregated"
alpha = 1
{phases}
"#
    );
    Scenario::parse(&text, Path::new(".")).unwrap_or_else(|e| panic!("{e:#}\n{text}"))
}

const ALL_PHASES: &str = "phases = [\"activation_recompute\", \"old_logprob\", \"ref_forward\", \"broadcast\"]";

fn cost(sc: &Scenario, gpus: u32) -> TrainCost {
    TrainCost::new(sc, &sc.policies[0], Placement::Disaggregated, gpus)
}

fn phase(c: &TrainCost, name: &str) -> Option<f64> {
    c.phases.iter().find(|p| p.0 == name).map(|p| p.1)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// Without `hardware.stream_gb_per_s` nothing is charged: no phase, and the per-token cost is the
/// FLOPs-only model's to the last bit (older scenario files give the same numbers).
#[test]
fn no_charge_without_the_bandwidth() {
    let sc = scenario("", "hidden = 1536\nffn_hidden = 8960\nvocab = 151936", ALL_PHASES);
    assert_eq!(activation::per_token_s(&sc, 5.0, 4.0, 4), 0.0);
    let c = cost(&sc, 4);
    assert!(phase(&c, "activation_io").is_none(), "{:?}", c.phases);
    let flops = 4.0 * (989.0 * 1e12) * sc.training.mfu;
    let n = 1.5e9;
    // train 6N, then recompute, π_old and reference forward passes (2N each), added in that order.
    let want = 6.0 * n / flops + 2.0 * n / flops + 2.0 * n / flops + 2.0 * n / flops;
    assert_eq!(c.per_token_s.to_bits(), want.to_bits());
}

/// The charge is exactly the documented count: 3 forward-pass equivalents for the training pass,
/// one per further forward pass through the layers (recompute, π_old, reference) and one per
/// π_old/reference pass through the output layer.
#[test]
fn charge_is_the_documented_count() {
    let (h, f, v, layers) = (1536.0, 8960.0, 151936.0, 28.0);
    let kv = 28672.0 / (2.0 * 2.0 * layers);
    assert_eq!(kv, 256.0);
    let model = "hidden = 1536\nffn_hidden = 8960\nvocab = 151936";
    let per_layer = 17.0 * h + 6.0 * kv + 5.0 * f;
    let g = 8.0;
    for (phases, layer_passes, head_passes) in [
        ("phases = [\"broadcast\"]", 3.0, 3.0),
        ("phases = [\"old_logprob\", \"broadcast\"]", 4.0, 4.0),
        ("phases = [\"activation_recompute\", \"broadcast\"]", 4.0, 3.0),
        (ALL_PHASES, 6.0, 5.0),
        // No `phases`: the legacy charge, which still trains (one training pass).
        ("", 3.0, 3.0),
    ] {
        let with = scenario("stream_gb_per_s = 3000.0", model, phases);
        let without = scenario("", model, phases);
        let want = (layer_passes * layers * per_layer + head_passes * 3.0 * v) * 2.0 / (g * 3000e9);
        let (a, b) = (cost(&with, 8), cost(&without, 8));
        assert!(close(a.per_token_s - b.per_token_s, want), "{phases}: {} vs {want}", a.per_token_s - b.per_token_s);
        assert!(close(phase(&a, "activation_io").unwrap_or(0.0), want), "{phases}: {:?}", a.phases);
        assert_eq!(a.fixed_s, b.fixed_s);
        assert_eq!(a.sync_s, b.sync_s);
        assert_eq!(a.per_sq_token_s, b.per_sq_token_s);
    }
}

/// Charge ∝ tokens × hidden / (bandwidth × GPUs): doubling every width doubles it, doubling the
/// bandwidth or the training GPUs halves it; a whole step's training time grows by charge × tokens.
#[test]
fn charge_scales_with_hidden_over_bandwidth() {
    let base = |hw: &str, h: u32| {
        let model = format!("hidden = {h}\nffn_hidden = {}", 4 * h);
        // kv width follows hidden through the KV bytes (2 · layers · kv · 2 B with kv = h / 4).
        let mut sc = scenario(hw, &model, ALL_PHASES);
        sc.model.kv_bytes_per_token = 2.0 * 2.0 * 28.0 * (h / 4) as f64;
        sc
    };
    let act = |sc: &Scenario, g: u32| activation::per_token_s(sc, 6.0, 5.0, g);
    let a = act(&base("stream_gb_per_s = 2000.0", 1024), 8);
    assert!(a > 0.0);
    assert!(close(act(&base("stream_gb_per_s = 2000.0", 2048), 8), 2.0 * a));
    assert!(close(act(&base("stream_gb_per_s = 4000.0", 1024), 8), 0.5 * a));
    assert!(close(act(&base("stream_gb_per_s = 2000.0", 1024), 16), 0.5 * a));
    // The cost model's training time of an update over `tokens` carries it linearly.
    let with = base("stream_gb_per_s = 2000.0", 1024);
    let without = base("", 1024);
    let (cw, co) =
        (CostModel::new(&with, &with.policies[0], 0.25), CostModel::new(&without, &without.policies[0], 0.25));
    let g = cw.train_gpus;
    for tokens in [1_000u64, 250_000] {
        let extra = cw.train_s(tokens) - co.train_s(tokens);
        assert!((extra - act(&with, g) * tokens as f64).abs() <= 1e-9 * extra, "{tokens}: {extra}");
    }
}

/// The vocabulary term: the output layer's traffic grows with `model.vocab` and is absent without it.
#[test]
fn output_layer_term_follows_the_vocabulary() {
    let small = scenario("stream_gb_per_s = 3000.0", "hidden = 1536\nffn_hidden = 8960\nvocab = 32000", ALL_PHASES);
    let large = scenario("stream_gb_per_s = 3000.0", "hidden = 1536\nffn_hidden = 8960\nvocab = 152064", ALL_PHASES);
    let none = scenario("stream_gb_per_s = 3000.0", "hidden = 1536\nffn_hidden = 8960", ALL_PHASES);
    let (s, l, n) = (cost(&small, 8).per_token_s, cost(&large, 8).per_token_s, cost(&none, 8).per_token_s);
    assert!(n < s && s < l, "{n} {s} {l}");
    let want = 5.0 * 3.0 * (152064.0 - 32000.0) * 2.0 / (8.0 * 3000e9);
    assert!(close(l - s, want), "{} vs {want}", l - s);
}

/// Smaller hidden → lower achieved share of peak (model FLOPs / (time · G · peak)) for a family of
/// models with `N = 12 · layers · h²`; without the charge every size achieves exactly `mfu`.
#[test]
fn smaller_models_achieve_a_lower_share_of_peak() {
    let share = |h: u32, hw: &str| {
        let n = 12.0 * 28.0 * (h as f64).powi(2);
        let model = format!("hidden = {h}\nffn_hidden = {}\nvocab = 151936", 4 * h);
        let mut sc = scenario(hw, &model, "phases = [\"broadcast\"]");
        sc.model.params_b = n / 1e9;
        sc.model.kv_bytes_per_token = 2.0 * 2.0 * 28.0 * (h / 8) as f64;
        let c = cost(&sc, 8);
        (6.0 * n / (c.per_token_s * 8.0 * 989e12), sc.training.mfu)
    };
    let mut last = 0.0;
    for h in [1024u32, 1536, 2048, 3584, 5120, 8192] {
        let (s, mfu) = share(h, "stream_gb_per_s = 3000.0");
        assert!(s > last && s < mfu, "hidden {h}: share {s} (previous {last}, mfu {mfu})");
        last = s;
        let (flat, mfu) = share(h, "");
        assert!(close(flat, mfu), "hidden {h}: {flat} vs {mfu}");
    }
}

/// The hardware profiles supply the bandwidth as a measured (not fitted) constant; a file key wins.
#[test]
fn profiles_supply_the_stream_bandwidth() {
    for name in ["h800", "h100"] {
        let p = arbor_sim::hardware::profile(name).expect("profile");
        let c = p.constants().find(|c| c.key == "hardware.stream_gb_per_s").expect("stream constant");
        assert!(!c.source.fitted(), "{name}: {:?}", c.source);
        assert!(c.source.describe().starts_with("no (measured"), "{}", c.source.describe());
        // Sustained streaming bandwidth is below the HBM datasheet peak.
        let peak = p.constants().find(|c| c.key == "hardware.hbm_tb_per_s").expect("hbm").value;
        assert!(c.value > 0.5 * peak * 1e3 && c.value < peak * 1e3, "{name}: {}", c.value);
        let sc = scenario(&format!("profile = \"{name}\""), "hidden = 1536", "");
        assert_eq!(sc.hardware.stream_gb_per_s, Some(c.value));
        let own = scenario(&format!("profile = \"{name}\"\nstream_gb_per_s = 1234.0"), "hidden = 1536", "");
        assert_eq!(own.hardware.stream_gb_per_s, Some(1234.0));
    }
}

/// Out-of-range values are refused with an error naming the key.
#[test]
fn bad_values_are_refused() {
    for (hw, model, key) in [
        ("stream_gb_per_s = 0.0", "", "hardware.stream_gb_per_s = 0"),
        ("stream_gb_per_s = -5.0", "", "hardware.stream_gb_per_s = -5"),
        ("", "ffn_hidden = 0", "model.ffn_hidden = 0"),
        ("", "vocab = 0", "model.vocab = 0"),
    ] {
        let text = format!(
            "name = \"bad\"\nsteps = 2\n[hardware]\ngpus = 8\n{hw}\n[model]\nparams_b = 1.5\nkv_bytes_per_token = 28672\n\
             layers = 28\n{model}\n[workload]\nprompts_per_step = 4\nresponses_per_prompt = 2\nprompt_tokens = 8\n\
             response_tokens = {{ kind = \"constant\", value = 10 }}\nmax_response_tokens = 16\n[[policy]]\nname = \"p\"\nmode = \"sync\"\n"
        );
        let e = match Scenario::parse(&text, Path::new(".")) {
            Ok(_) => panic!("accepted: {hw} {model}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains(key), "{key}: {e}");
    }
}

/// The shipped AReaL scenarios carry the widths, and the 1.5B model spends a larger share of its
/// training time on activation traffic than 14B (the size dependence issue 22 was about).
#[test]
fn shipped_areal_small_model_pays_a_larger_share() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let share = |file: &str| {
        let sc = Scenario::load(&dir.join(file)).expect("load");
        assert!(sc.model.ffn_hidden.is_some() && sc.model.vocab.is_some(), "{file}");
        assert!(sc.hardware.stream_gb_per_s.is_some(), "{file}");
        let pol = sc.policies.last().expect("policy");
        let c = TrainCost::new(&sc, pol, Placement::Disaggregated, 32);
        phase(&c, "activation_io").expect("charged") / c.per_token_s
    };
    let (small, big) = (share("areal-1.5b.toml"), share("areal-14b.toml"));
    assert!(small > 1.5 * big && big > 0.02, "1.5B {small}, 14B {big}");
}
