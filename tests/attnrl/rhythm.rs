//! The attention rhythm (γ of the three schemes, top fractions, thresholds) and the `[attnrl]` and
//! `[rhythm]` config tables.

use super::close32;
use arbor::attnrl::config::{AttnRlConfig, DistanceRule, RhythmConfig, RhythmScheme, TreeRounding};
use arbor::attnrl::rhythm::{
    batch_thresholds, rhythm_marks, shape_advantages, top_count, top_fraction_mask, RhythmThresholds,
};

// ---------------------------------------------------------------- attention rhythm

fn rhythm(scheme: RhythmScheme) -> RhythmConfig {
    RhythmConfig { scheme, ..RhythmConfig::default() }
}

#[test]
fn top_fraction_rounding_and_ties() {
    assert_eq!(top_count(5, 0.4), 2);
    assert_eq!(top_count(6, 0.4), 3, "2.4 rounds up");
    assert_eq!(top_count(3, 0.4), 2, "1.2 rounds up");
    assert_eq!(top_count(10, 0.3), 3, "0.3·10 = 3.0000000000000004 counts as 3");
    assert_eq!((top_count(0, 0.4), top_count(7, 0.0), top_count(4, 1.0)), (0, 0, 4));
    assert_eq!(top_fraction_mask(&[1.0, 1.0, 1.0], 0.4), vec![true, true, false], "ties → earlier token");
    assert_eq!(top_fraction_mask(&[0.1, 0.3, 0.3, 0.2, 0.0], 0.4), vec![false, true, true, false, false]);
}

#[test]
fn rhythm_gammas_of_the_three_schemes() {
    // WAAD [0, 1, 1, 4, 4, 2] → Δ = [1, 0, 3, 0, 2]; top ⌈0.4·5⌉ = 2 → pre-plan {2, 4}.
    // FAI: top ⌈0.4·6⌉ = 3 → anchors {3 (0.9), 5 (0.7), 1 (0.5)}.
    let waad = [0.0, 1.0, 1.0, 4.0, 4.0, 2.0];
    let fai = [0.1, 0.5, 0.2, 0.9, 0.3, 0.7];
    let adv = [1.0, -2.0, 0.5, 1.0, 1.0, -1.0];
    let tau = RhythmThresholds { tau_waad: 3.0, tau_delta: 2.0 };
    let local = rhythm_marks(&waad, &fai, &rhythm(RhythmScheme::Local), tau).unwrap();
    assert_eq!(local.preplan, vec![false, false, true, false, true, false]);
    assert_eq!(local.gamma, vec![1.0, 1.0, 1.5, 1.0, 1.5, 1.0]);
    let global = rhythm_marks(&waad, &fai, &rhythm(RhythmScheme::Global), tau).unwrap();
    assert_eq!(global.anchors, vec![false, true, false, true, false, true]);
    assert_eq!(global.gamma, vec![1.0, 1.5, 1.0, 1.5, 1.0, 1.5]);
    assert!(!global.dominated.iter().any(|&d| d) && !local.intro.iter().any(|&d| d));
    // Coupled: anchor 1: WAAD 1 ≤ 3 but window [0, 0] has Δ 1 < 2; anchor 3: WAAD 4 > 3; anchor 5: WAAD 2 ≤ 3 and
    // window [2, 4] has Δ 3, 0, 2 → max 3 ≥ 2 → dominated, intro = token 2.
    let c = rhythm_marks(&waad, &fai, &rhythm(RhythmScheme::Coupled), tau).unwrap();
    assert_eq!(c.dominated, vec![false, false, false, false, false, true]);
    assert_eq!(c.intro, vec![false, false, true, false, false, false]);
    let want = [1.0, 1.5, 1.2, 1.5, 1.0, 1.3];
    assert!(c.gamma.iter().zip(want).all(|(&g, w)| close32(g, w)), "{:?}", c.gamma);
    let shaped = shape_advantages(&c.gamma, &adv).unwrap();
    let want = [1.0, -3.0, 0.6, 1.5, 1.0, -1.3];
    assert!(shaped.iter().zip(want).all(|(&g, w)| close32(g, w)), "{shaped:?}");
    // Batch medians: WAAD values of [this, [3, 5]] sorted [0, 1, 1, 2, 3, 4, 4, 5] → 2.5; Δ values
    // [1, 0, 3, 0, 2] + [2] sorted [0, 0, 1, 2, 2, 3] → 1.5. Same verdicts with those τ's.
    let th = batch_thresholds(&[&waad, &[3.0, 5.0]], &RhythmConfig::default()).unwrap();
    assert_eq!(th, RhythmThresholds { tau_waad: 2.5, tau_delta: 1.5 });
    assert_eq!(rhythm_marks(&waad, &fai, &rhythm(RhythmScheme::Coupled), th).unwrap().gamma, c.gamma);
}

#[test]
fn coupled_scheme_edge_cases() {
    let coupled = rhythm(RhythmScheme::Coupled);
    // Two dominated anchors (2, 3) whose windows peak at the same token 0 (Δ = [2, 2, 0, 0], tie → earliest):
    // the intro amplification counts once.
    let th = RhythmThresholds { tau_waad: 0.0, tau_delta: 1.0 };
    let m = rhythm_marks(&[0.0, 2.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 1.0, 1.0, 0.0], &coupled, th).unwrap();
    assert_eq!(m.dominated, vec![false, false, true, true, false]);
    assert_eq!(m.intro, vec![true, false, false, false, false]);
    assert!(m.gamma.iter().zip([1.2, 1.0, 1.3, 1.3, 1.0]).all(|(&g, w)| close32(g, w)), "{:?}", m.gamma);
    // Anchors {0, 1, 2} (anchor_frac 0.75 of 4): anchor 0 has an empty window; anchor 1 has WAAD 3 > τ; anchor 2
    // (WAAD 0) has window Δ [3, 3] → intro 0, which is also a plain anchor: 1 + 0.5 + 0.2 = 1.7.
    let cfg = RhythmConfig { anchor_frac: 0.75, ..coupled.clone() };
    let waad = [0.0, 3.0, 0.0, 5.0];
    let fai = [1.0, 0.9, 0.8, 0.0];
    let m = rhythm_marks(&waad, &fai, &cfg, th).unwrap();
    assert!(m.gamma.iter().zip([1.7, 1.5, 1.3, 1.0]).all(|(&g, w)| close32(g, w)), "{:?}", m.gamma);
    // k = 1: anchor 2's window is just token 1 → intro 1 (1.5 + 0.2), token 0 back to 1.5.
    let m = rhythm_marks(&waad, &fai, &RhythmConfig { intro_window: 1, ..cfg }, th).unwrap();
    assert!(m.gamma.iter().zip([1.5, 1.7, 1.3, 1.0]).all(|(&g, w)| close32(g, w)), "{:?}", m.gamma);
    // Degenerate inputs: one token, no tokens, no values for a median.
    let m = rhythm_marks(&[1.0], &[1.0], &coupled, th).unwrap();
    assert_eq!((m.preplan, m.anchors, m.gamma), (vec![false], vec![true], vec![1.5]));
    assert!(rhythm_marks(&[], &[], &coupled, th).unwrap().gamma.is_empty());
    let th = batch_thresholds(&[&[]], &RhythmConfig::default()).unwrap();
    assert!(th.tau_waad == f64::NEG_INFINITY && th.tau_delta == f64::INFINITY);
    let set = RhythmConfig { tau_waad: Some(0.7), tau_delta: Some(0.1), ..RhythmConfig::default() };
    assert_eq!(batch_thresholds(&[&[5.0, 1.0]], &set).unwrap(), RhythmThresholds { tau_waad: 0.7, tau_delta: 0.1 });
    // Errors.
    assert!(rhythm_marks(&[1.0, 2.0], &[1.0], &coupled, th).unwrap_err().to_string().contains("FAI has 1"));
    assert!(rhythm_marks(&[1.0, f32::NAN], &[1.0, 2.0], &coupled, th).is_err());
    assert!(shape_advantages(&[1.0], &[1.0, 2.0]).is_err());
    assert!(batch_thresholds(&[&[f32::INFINITY]], &RhythmConfig::default()).is_err());
}

// ---------------------------------------------------------------- config

#[test]
fn config_defaults_keys_and_validation() {
    let a: AttnRlConfig = toml::from_str("").unwrap();
    assert_eq!(a, AttnRlConfig::default());
    assert_eq!(a.step_separators, vec!["\n\n".to_string(), "\n".to_string()]);
    assert_eq!((a.fci_step_gap, a.rho, a.branch_points, a.continuations, a.initial_responses), (4, 0.2, 2, 2, 6));
    assert_eq!(
        (a.tree_rounding, a.distance_rule, a.dynamic_batch_lambda),
        (TreeRounding::Ceil, DistanceRule::StepGap, 0.9)
    );
    assert_eq!(a.min_branch_distance_tokens(8192), 512);
    assert_eq!(a.target_sequences(64), 1920, "64 prompts · 6 trees · 5 leaves");
    assert_eq!(a.dynamic_batch_max(64), 256);
    assert!(a.validate().is_ok());
    let a: AttnRlConfig =
        toml::from_str("step_separators = [\"\\n\"]\nmin_branch_distance = 3\ntree_rounding = \"round\"\nbranch_by = \"entropy\"\ndistance_rule = \"branch-point\"")
            .unwrap();
    assert_eq!(a.step_separators, vec!["\n".to_string()]);
    assert_eq!((a.min_branch_distance_tokens(8192), a.tree_rounding), (3, TreeRounding::Round));
    assert!(toml::from_str::<AttnRlConfig>("rhoo = 0.3").is_err(), "unknown keys are rejected");
    let bad = |f: fn(&mut AttnRlConfig)| {
        let mut c = AttnRlConfig::default();
        f(&mut c);
        c.validate().unwrap_err().key
    };
    assert_eq!(bad(|c| c.rho = 0.0), "rho");
    assert_eq!(bad(|c| c.step_separators = vec![String::new()]), "step_separators");
    assert_eq!(bad(|c| c.branch_points = 0), "branch_points");
    assert_eq!(bad(|c| c.min_branch_distance_frac = 1.5), "min_branch_distance_frac");
    assert_eq!(bad(|c| c.dynamic_batch_lambda = f64::NAN), "dynamic_batch_lambda");
    assert_eq!(bad(|c| c.dynamic_batch_max_factor = 0.5), "dynamic_batch_max_factor");
    assert_eq!(bad(|c| c.target_train_sequences = Some(0)), "target_train_sequences");

    let r: RhythmConfig = toml::from_str("").unwrap();
    assert_eq!(r, RhythmConfig::default());
    assert_eq!(
        (r.scheme, r.preplan_frac, r.anchor_frac, r.gamma_amp, r.alpha),
        (RhythmScheme::Coupled, 0.4, 0.4, 1.5, 0.4)
    );
    assert_eq!((r.intro_window, r.waad_window, r.fai_min_offset, r.fai_max_offset, r.layers), (3, 10, 10, 100, 5));
    assert_eq!((r.tau_waad, r.tau_delta), (None, None));
    assert!(r.validate().is_ok());
    assert!(toml::from_str::<RhythmConfig>("scheme = \"sideways\"").is_err());
    let bad = |f: fn(&mut RhythmConfig)| {
        let mut c = RhythmConfig::default();
        f(&mut c);
        c.validate().unwrap_err().key
    };
    assert_eq!(bad(|c| c.intro_window = 4), "intro_window");
    assert_eq!(bad(|c| c.alpha = -0.1), "alpha");
    assert_eq!(bad(|c| c.gamma_amp = 0.5), "gamma_amp");
    assert_eq!(bad(|c| c.global_head_frac = 0.8), "global_head_frac");
    assert_eq!(bad(|c| c.local_head_frac = 0.0), "local_head_frac", "a head fraction of 0 selects no head");
    assert_eq!(bad(|c| c.global_head_frac = 0.0), "global_head_frac");
    assert_eq!(bad(|c| c.fai_max_offset = 5), "fai_max_offset");
    assert_eq!(bad(|c| c.tau_delta = Some(f64::INFINITY)), "tau_delta");
    // Round trip through TOML.
    let text = toml::to_string(&AttnRlConfig::default()).unwrap();
    assert_eq!(toml::from_str::<AttnRlConfig>(&text).unwrap(), AttnRlConfig::default());
    let text = toml::to_string(&RhythmConfig::default()).unwrap();
    assert_eq!(toml::from_str::<RhythmConfig>(&text).unwrap(), RhythmConfig::default());
}
