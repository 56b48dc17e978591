//! AttnRL / attention-rhythm decision logic against hand-computed values: step bounds → ATB branch points (quantile,
//! earliest-first, distance rules, fill), the entropy baseline, the §2 worked example for two reward assignments,
//! tree invariants (proptest), the trees-per-problem table for n = 6, which responses get branched, the all-correct
//! FCI filter's running mean, the zero-advantage filter, the dynamic batch recurrence, the rhythm γ of all three
//! schemes, and the config tables (rhythm.rs).

mod rhythm;

use arbor::attnrl::adaptive::{
    keep_nonzero_advantage, next_batch_size, question_fci, responses_to_branch, trees_per_problem, AllCorrectFciFilter,
    DynamicBatch,
};
use arbor::attnrl::branch::{atb_branch_points, branch_points, token_branch_points};
use arbor::attnrl::config::{AttnRlConfig, BranchBy, DistanceRule, TreeRounding};
use arbor::attnrl::steps::{response_step_bounds_from_texts, sequence_step_bounds};
use arbor::attnrl::tree::{question_trees, tree_advantages, Continuation, Leaf, ResponseTree, Source, SplitPoint};
use proptest::prelude::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

pub(crate) fn close32(a: f32, b: f64) -> bool {
    (f64::from(a) - b).abs() <= 1e-6 * b.abs().max(1.0)
}

// ---------------------------------------------------------------- steps → branch points

#[test]
fn step_bounds_feed_atb_branch_points() {
    // Steps: "a b \n\n" | "c \n\n" | "d e f \n\n" | "g h" → bounds [0, 3, 5, 9, 11]; prompt of 4 tokens.
    let texts = ["a", "b", "\n\n", "c", "\n\n", "d", "e", "f", "x\n\n", "g", "h"];
    let cfg = AttnRlConfig::default();
    let bounds = response_step_bounds_from_texts(&texts, &cfg.step_separators);
    assert_eq!(bounds, vec![0, 3, 5, 9, 11]);
    assert_eq!(sequence_step_bounds(4, &bounds), vec![0, 4, 7, 9, 13, 15]);
    // y per response step; sorted [0, 0.2, 0.6, 0.7]. Default ρ = 0.2: h = 3·0.8 = 2.4 → θ = 0.6 + 0.4·0.1 = 0.64 →
    // candidates {1} (step 0 never); the fill adds the earliest remaining step 2. Points = step starts 3 and 5.
    let y = [0.0, 0.7, 0.2, 0.6];
    let choice = atb_branch_points(&bounds, &y, cfg.rho, 2, 0, DistanceRule::StepGap).unwrap();
    assert_eq!((choice.points, choice.units, choice.filled), (vec![3, 5], vec![1, 2], 1));
    // ρ = 0.5: h = 1.5 → θ = 0.2 + 0.5·0.4 = 0.4 → candidates {1, 3}, at start tokens 3 and 9.
    let choice = atb_branch_points(&bounds, &y, 0.5, 2, 0, DistanceRule::StepGap).unwrap();
    assert_eq!((choice.points, choice.units, choice.filled), (vec![3, 9], vec![1, 3], 0));
}

#[test]
fn atb_earliest_candidates_under_both_distance_rules() {
    // 8 steps over 40 tokens.
    let bounds = [0, 5, 10, 14, 20, 26, 30, 35, 40];
    let y = [0.0, 0.9, 0.2, 0.8, 0.85, 0.1, 0.95, 0.3];
    // ρ = 0.5: sorted [0, .1, .2, .3, .8, .85, .9, .95], h = 3.5 → 0.3 + 0.5·0.5 = 0.55 → candidates {1, 3, 4, 6}.
    // Step gap, d = 6: step 1 starts at 5 < 6 ✗; step 3 (start 14) ✓; step 4: 20 − end(3) = 0 < 6 ✗;
    // step 6: 30 − 20 = 10 ✓.
    let c = atb_branch_points(&bounds, &y, 0.5, 2, 6, DistanceRule::StepGap).unwrap();
    assert_eq!((c.points.clone(), c.units.clone(), c.filled), (vec![14, 30], vec![3, 6], 0));
    // Branch-point rule, d = 6: step 3 ✓; step 4: 20 − 14 = 6 ✓ → the two earliest admissible.
    let c = atb_branch_points(&bounds, &y, 0.5, 2, 6, DistanceRule::BranchPoint).unwrap();
    assert_eq!((c.points.clone(), c.filled), (vec![14, 20], 0));
    // d = 0: the earliest two candidates, not the top two (top two would be steps 6 and 1).
    let c = atb_branch_points(&bounds, &y, 0.5, 2, 0, DistanceRule::StepGap).unwrap();
    assert_eq!(c.points, vec![5, 14]);
    // ρ = 0.2: h = 5.6 → 0.85 + 0.6·0.05 = 0.88 → candidates {1, 6}; d = 6 rejects step 1, keeps step 6, and the
    // fill adds the earliest remaining step (1) without the distance rule.
    let c = atb_branch_points(&bounds, &y, 0.2, 2, 6, DistanceRule::StepGap).unwrap();
    assert_eq!((c.points.clone(), c.units.clone(), c.filled), (vec![5, 30], vec![1, 6], 1));
    // Nothing admissible: fill with steps 1 and 2.
    let c = atb_branch_points(&bounds, &y, 0.2, 2, 100, DistanceRule::StepGap).unwrap();
    assert_eq!((c.points.clone(), c.filled), (vec![5, 10], 2));
    // N = 3 with ρ = 0.5, d = 0: candidates 1, 3, 4.
    let c = atb_branch_points(&bounds, &y, 0.5, 3, 0, DistanceRule::StepGap).unwrap();
    assert_eq!(c.points, vec![5, 14, 20]);
}

#[test]
fn atb_short_responses_and_bad_input() {
    // Two steps: only step 1 can branch.
    let c = atb_branch_points(&[0, 3, 7], &[0.0, 1.0], 0.2, 2, 0, DistanceRule::StepGap).unwrap();
    assert_eq!((c.points.clone(), c.filled), (vec![3], 0));
    // One step or an empty response: no branch point.
    assert!(atb_branch_points(&[0, 7], &[0.0], 0.2, 2, 0, DistanceRule::StepGap).unwrap().points.is_empty());
    assert!(atb_branch_points(&[0], &[], 0.2, 2, 0, DistanceRule::StepGap).unwrap().points.is_empty());
    // Errors name the problem instead of panicking.
    let e = atb_branch_points(&[0, 3, 7], &[0.0], 0.2, 2, 0, DistanceRule::StepGap).unwrap_err();
    assert!(e.to_string().contains("1 step scores for 2 steps"), "{e}");
    assert!(atb_branch_points(&[0, 3, 3, 7], &[0.0; 3], 0.2, 2, 0, DistanceRule::StepGap).is_err());
    assert!(atb_branch_points(&[1, 3, 7], &[0.0; 2], 0.2, 2, 0, DistanceRule::StepGap).is_err());
    assert!(atb_branch_points(&[], &[], 0.2, 2, 0, DistanceRule::StepGap).is_err());
    assert!(atb_branch_points(&[0, 3, 7], &[0.0, f32::INFINITY], 0.2, 2, 0, DistanceRule::StepGap).is_err());
}

#[test]
fn token_baseline_top_scores_with_distance_and_fill() {
    // Token 0 and the last token (11) are never candidates despite their top scores.
    let e = [5.0, 0.1, 0.9, 0.3, 0.9, 0.2, 0.8, 0.1, 0.7, 0.1, 0.6, 9.0];
    // Order: 2, 4 (0.9, tie → earlier first), 6, 8, 10, 3, 5, 1, 7, 9.
    let c = token_branch_points(&e, 2, 0, DistanceRule::StepGap).unwrap();
    assert_eq!((c.points.clone(), c.filled), (vec![2, 4], 0));
    // d = 4, branch points: 2 < 4 ✗; 4 ✓; 6 − 4 = 2 ✗; 8 − 4 = 4 ✓.
    let c = token_branch_points(&e, 2, 4, DistanceRule::BranchPoint).unwrap();
    assert_eq!(c.points, vec![4, 8]);
    // d = 4, step gap (a token is a one-token step): 8 − 5 = 3 ✗; 10 − 5 = 5 ✓.
    let c = token_branch_points(&e, 2, 4, DistanceRule::StepGap).unwrap();
    assert_eq!(c.points, vec![4, 10]);
    // Nothing admissible: the two best tokens.
    let c = token_branch_points(&e, 2, 20, DistanceRule::StepGap).unwrap();
    assert_eq!((c.points.clone(), c.filled), (vec![2, 4], 2));
    assert!(token_branch_points(&[1.0, 2.0], 2, 0, DistanceRule::StepGap).unwrap().points.is_empty());
    // Through the config: d = ⌊0.0625·64⌋ = 4 with the default step-gap rule.
    let cfg = AttnRlConfig { branch_by: BranchBy::Entropy, ..AttnRlConfig::default() };
    assert_eq!(branch_points(&cfg, 64, &[], &[], &e).unwrap().points, vec![4, 10]);
    let cfg = AttnRlConfig { min_branch_distance: Some(0), ..AttnRlConfig::default() };
    let c = branch_points(&cfg, 64, &[0, 5, 10, 14], &[0.0, 0.1, 0.9], &[]).unwrap();
    assert_eq!(c.points, vec![5, 10]);
    assert!(token_branch_points(&[1.0, f32::NAN, 2.0], 2, 0, DistanceRule::StepGap).is_err());
}

// ---------------------------------------------------------------- tree advantages (§2 worked example)

/// Response o of 30 tokens split at t1 = 10 and t2 = 20, continuations of lengths 7, 8 (from t1) and 5, 6 (t2).
fn example_tree(r_o: f32, from_t1: [f32; 2], from_t2: [f32; 2]) -> ResponseTree {
    ResponseTree {
        len: 30,
        reward: r_o,
        splits: vec![
            SplitPoint {
                at: 10,
                continuations: vec![
                    Continuation { len: 7, reward: from_t1[0] },
                    Continuation { len: 8, reward: from_t1[1] },
                ],
            },
            SplitPoint {
                at: 20,
                continuations: vec![
                    Continuation { len: 5, reward: from_t2[0] },
                    Continuation { len: 6, reward: from_t2[1] },
                ],
            },
        ],
    }
}

/// Checks every node and every leaf sequence of the example against the §2 closed forms.
fn check_worked_example(q: &arbor::attnrl::tree::QuestionTrees, v_root: f64, v_p: f64, v_m: f64, r: [f64; 5]) {
    let [r_o, c11, c12, c21, c22] = r;
    let a_p = 2.0 * (v_p - v_root) / 5f64.sqrt();
    let a_m = (2.0 * v_m - v_root - v_p) / 3f64.sqrt();
    let a_tail = 2.0 * r_o - v_root - v_m;
    let a_c1 = [2.0 * c11 - v_root - v_p, 2.0 * c12 - v_root - v_p];
    let a_c2 = [2.0 * c21 - v_root - v_m, 2.0 * c22 - v_root - v_m];
    assert!(close(q.root_value, v_root), "{} vs {v_root}", q.root_value);
    let t = &q.trees[0];
    let s = &t.segments;
    assert_eq!(s.len(), 3);
    assert_eq!([(s[0].start, s[0].end), (s[1].start, s[1].end), (s[2].start, s[2].end)], [(0, 10), (10, 20), (20, 30)]);
    assert_eq!([s[0].leaves, s[1].leaves, s[2].leaves], [5, 3, 1]);
    assert!(close(s[0].value, v_p) && close(s[1].value, v_m) && close(s[2].value, r_o));
    assert!(close(s[0].parent_value, v_root) && close(s[1].parent_value, v_p) && close(s[2].parent_value, v_m));
    assert!(close(s[0].advantage, a_p), "A(P) {} vs {a_p}", s[0].advantage);
    assert!(close(s[1].advantage, a_m), "A(M) {} vs {a_m}", s[1].advantage);
    assert!(close(s[2].advantage, a_tail), "A(tail) {} vs {a_tail}", s[2].advantage);
    for c in 0..2 {
        assert!(close(t.continuations[0][c].advantage, a_c1[c]));
        assert!(close(t.continuations[1][c].advantage, a_c2[c]));
        assert_eq!(t.continuations[0][c].leaves, 1);
    }
    // Leaf sequences: o, then two from t1, then two from t2 (only tree 0 is branched).
    let seqs: Vec<_> = q.sequences.iter().filter(|(i, _)| *i == 0).map(|(_, s)| s).collect();
    assert_eq!(q.sequences.len(), 5);
    assert_eq!(seqs[0].leaf, Leaf::Original);
    let spans = |k: usize| -> Vec<(Source, usize, usize)> {
        seqs[k].segments.iter().map(|g| (g.source, g.start, g.end)).collect()
    };
    assert_eq!(spans(0), vec![(Source::Response, 0, 10), (Source::Response, 10, 20), (Source::Response, 20, 30)]);
    assert_eq!(spans(1), vec![(Source::Response, 0, 10), (Source::Continuation { split: 0, index: 0 }, 0, 7)]);
    assert_eq!(spans(2), vec![(Source::Response, 0, 10), (Source::Continuation { split: 0, index: 1 }, 0, 8)]);
    assert_eq!(
        spans(4),
        vec![
            (Source::Response, 0, 10),
            (Source::Response, 10, 20),
            (Source::Continuation { split: 1, index: 1 }, 0, 6)
        ]
    );
    assert_eq!(seqs[3].leaf, Leaf::Continuation { split: 1, index: 0 });
    let adv0 = seqs[0].token_advantages();
    assert_eq!(adv0.len(), 30);
    assert!(close32(adv0[0], a_p) && close32(adv0[9], a_p) && close32(adv0[10], a_m) && close32(adv0[29], a_tail));
    let adv3 = seqs[3].token_advantages();
    assert_eq!(adv3.len(), 25);
    assert!(
        close32(adv3[5], a_p) && close32(adv3[15], a_m) && close32(adv3[20], a_c2[0]) && close32(adv3[24], a_c2[0])
    );
    assert_eq!([seqs[1].reward, seqs[2].reward, seqs[3].reward, seqs[4].reward].map(f64::from), [c11, c12, c21, c22]);
}

#[test]
fn worked_example_first_reward_assignment() {
    // o = 1; from t1: 0, 0; from t2: 1, 0; five unbranched responses with rewards 1, 0, 0, 0, 0.
    let mut trees = vec![example_tree(1.0, [0.0, 0.0], [1.0, 0.0])];
    trees.extend([1.0, 0.0, 0.0, 0.0, 0.0].map(|r| ResponseTree::unbranched(12, r)));
    let q = question_trees(&trees).unwrap();
    // V_root = 3/10, V_P = 2/5, V_M = 2/3.
    check_worked_example(&q, 0.3, 0.4, 2.0 / 3.0, [1.0, 0.0, 0.0, 1.0, 0.0]);
    // Hand arithmetic: A(P) = 0.2/√5, A(M) = (4/3 − 0.7)/√3, A(tail) = 2 − 0.3 − 2/3, A(c) = −0.7 from t1,
    // 2 − 0.3 − 2/3 and −0.3 − 2/3 from t2.
    let s = &q.trees[0].segments;
    assert!((s[0].advantage - 0.089_442_719_1).abs() < 1e-9);
    assert!((s[1].advantage - 0.365_655_170_4).abs() < 1e-9);
    assert!((s[2].advantage - 1.033_333_333_3).abs() < 1e-9);
    let c = &q.trees[0].continuations;
    assert!((c[0][0].advantage + 0.7).abs() < 1e-12 && (c[0][1].advantage + 0.7).abs() < 1e-12);
    assert!((c[1][0].advantage - 1.033_333_333_3).abs() < 1e-9 && (c[1][1].advantage + 0.966_666_666_7).abs() < 1e-9);
    // Unbranched responses: one segment each, A = 2r − 2V_root (V_parent = V_root), no training sequence.
    assert!(close(q.trees[1].segments[0].advantage, 2.0 - 0.6) && close(q.trees[2].segments[0].advantage, -0.6));
    assert!(q.sequences.iter().all(|(i, _)| *i == 0));
}

#[test]
fn worked_example_second_reward_assignment() {
    // o = 0; from t1: 1, 1; from t2: 0, 1; unbranched responses 1, 0, 1.
    let mut trees = vec![example_tree(0.0, [1.0, 1.0], [0.0, 1.0])];
    trees.extend([1.0, 0.0, 1.0].map(|r| ResponseTree::unbranched(9, r)));
    let q = question_trees(&trees).unwrap();
    // V_root = 5/8, V_P = 3/5, V_M = 1/3.
    check_worked_example(&q, 0.625, 0.6, 1.0 / 3.0, [0.0, 1.0, 1.0, 0.0, 1.0]);
    // Hand arithmetic: A(P) = 2(0.6 − 0.625)/√5 = −0.05/√5, A(M) = (2/3 − 1.225)/√3, A(tail) = −0.625 − 1/3,
    // A(c from t1) = 2 − 1.225 = 0.775, A(c from t2) = −0.958333… and 2 − 0.625 − 1/3 = 1.041666….
    let s = &q.trees[0].segments;
    assert!((s[0].advantage + 0.022_360_679_8).abs() < 1e-9);
    assert!((s[1].advantage + 0.322_353_900_3).abs() < 1e-9);
    assert!((s[2].advantage + 0.958_333_333_3).abs() < 1e-9);
    let c = &q.trees[0].continuations;
    assert!((c[0][0].advantage - 0.775).abs() < 1e-12 && (c[0][1].advantage - 0.775).abs() < 1e-12);
    assert!((c[1][0].advantage + 0.958_333_333_3).abs() < 1e-9 && (c[1][1].advantage - 1.041_666_666_7).abs() < 1e-9);
}

#[test]
fn tree_input_errors_name_the_value() {
    let ok = example_tree(1.0, [0.0, 1.0], [1.0, 0.0]);
    let mut t = ok.clone();
    t.splits[0].at = 0;
    assert!(tree_advantages(&t, 0.5).unwrap_err().to_string().contains("split 0 at token 0"));
    let mut t = ok.clone();
    t.splits[1].at = 30;
    assert!(tree_advantages(&t, 0.5).is_err());
    let mut t = ok.clone();
    t.splits[1].at = 10;
    assert!(tree_advantages(&t, 0.5).is_err());
    let mut t = ok.clone();
    t.splits[1].continuations.clear();
    assert!(tree_advantages(&t, 0.5).unwrap_err().to_string().contains("no continuations"));
    let mut t = ok.clone();
    t.splits[0].continuations[1].reward = f32::NAN;
    assert!(tree_advantages(&t, 0.5).is_err());
    assert!(tree_advantages(&ok, f64::NAN).is_err());
    assert!(question_trees(&[]).is_err());
    assert!(question_trees(&[ok.clone(), t]).unwrap_err().to_string().contains("response 1"));
}

fn arb_tree() -> impl Strategy<Value = ResponseTree> {
    (2usize..60, 0usize..4, any::<bool>()).prop_flat_map(|(len, n_splits, r)| {
        let n_splits = n_splits.min(len - 1);
        (
            prop::sample::subsequence((1..len).collect::<Vec<_>>(), n_splits),
            prop::collection::vec(prop::collection::vec((0usize..20, any::<bool>()), 1..4), n_splits),
        )
            .prop_map(move |(ats, conts)| ResponseTree {
                len,
                reward: f32::from(u8::from(r)),
                splits: ats
                    .into_iter()
                    .zip(conts)
                    .map(|(at, cs)| SplitPoint {
                        at,
                        continuations: cs
                            .into_iter()
                            .map(|(len, r)| Continuation { len, reward: f32::from(u8::from(r)) })
                            .collect(),
                    })
                    .collect(),
            })
    })
}

proptest! {
    #[test]
    fn tree_invariants(trees in prop::collection::vec(arb_tree(), 1..5), equal in any::<bool>()) {
        let mut trees = trees;
        if equal {
            // Every leaf of the question gets the same reward: every advantage must be exactly 0.
            for t in &mut trees {
                t.reward = 1.0;
                for s in &mut t.splits { for c in &mut s.continuations { c.reward = 1.0; } }
            }
        }
        let q = question_trees(&trees).unwrap();
        let leaves: usize = trees.iter().map(|t| t.leaf_rewards().count()).sum();
        let branched_leaves: usize = trees.iter().filter(|t| t.is_branched()).map(|t| t.leaf_rewards().count()).sum();
        prop_assert_eq!(q.sequences.len(), branched_leaves);
        let total: f64 = trees.iter().flat_map(|t| t.leaf_rewards()).map(f64::from).sum();
        prop_assert!(close(q.root_value, total / leaves as f64));
        for (i, (t, a)) in trees.iter().zip(&q.trees).enumerate() {
            // The first segment holds every leaf of its tree; the tail holds only o.
            prop_assert_eq!(a.segments[0].leaves, t.leaf_rewards().count());
            prop_assert_eq!(a.segments.last().unwrap().leaves, 1);
            if equal {
                prop_assert!(a.segments.iter().chain(a.continuations.iter().flatten()).all(|n| n.advantage == 0.0));
            }
            for (_, s) in q.sequences.iter().filter(|(k, _)| *k == i) {
                // Response segments are contiguous from 0; the original ends at T, a continuation from split k
                // covers [0, at_k) of the response and then all of its own tokens.
                let mut pos = 0;
                for g in &s.segments {
                    if g.source == Source::Response {
                        prop_assert_eq!(g.start, pos);
                        pos = g.end;
                    }
                }
                match s.leaf {
                    Leaf::Original => prop_assert_eq!(pos, t.len),
                    Leaf::Continuation { split, index } => {
                        prop_assert_eq!(pos, t.splits[split].at);
                        let last = s.segments.last().unwrap();
                        prop_assert_eq!(last.source, Source::Continuation { split, index });
                        prop_assert_eq!((last.start, last.end), (0, t.splits[split].continuations[index].len));
                    }
                }
                prop_assert_eq!(s.token_advantages().len(), s.len());
                if equal {
                    prop_assert!(s.token_advantages().iter().all(|&x| x == 0.0));
                }
            }
        }
    }
}

// ---------------------------------------------------------------- adaptive sampling

#[test]
fn trees_per_problem_table_for_six_responses() {
    // 6·e^(−c/6) for c = 0..6: 6, 5.0789, 4.2992, 3.6392, 3.0805, 2.6076, 2.2073.
    let ceil: Vec<usize> = (0..=6).map(|c| trees_per_problem(6, c, TreeRounding::Ceil)).collect();
    let round: Vec<usize> = (0..=6).map(|c| trees_per_problem(6, c, TreeRounding::Round)).collect();
    assert_eq!(ceil, vec![6, 6, 5, 4, 4, 3, 3]);
    assert_eq!(round, vec![6, 5, 4, 4, 3, 3, 2]);
    assert_eq!(trees_per_problem(0, 0, TreeRounding::Ceil), 0);
    assert_eq!(trees_per_problem(6, 9, TreeRounding::Ceil), 3, "n_correct is clamped to n");
}

fn mask(correct_idx: &[usize]) -> [bool; 6] {
    let mut m = [false; 6];
    for &i in correct_idx {
        m[i] = true;
    }
    m
}

#[test]
fn which_responses_are_branched() {
    let ceil = TreeRounding::Ceil;
    let go = |m: &[bool], r: TreeRounding, kept: bool, id: u64| responses_to_branch(m, r, kept, 7, 3, id);
    // acc = 0: all six.
    assert_eq!(go(&mask(&[]), ceil, true, 0), vec![0, 1, 2, 3, 4, 5]);
    // acc = 1/6: ⌈5.08⌉ = 6 trees → the correct one + all 5 incorrect; under "round", 5: the correct + 4 of 5.
    assert_eq!(go(&mask(&[2]), ceil, true, 0), vec![0, 1, 2, 3, 4, 5]);
    let r = go(&mask(&[2]), TreeRounding::Round, true, 0);
    assert!(r.len() == 5 && r.contains(&2), "{r:?}");
    // acc = 2/6: 5 trees → both correct + 3 of the 4 incorrect.
    let r = go(&mask(&[1, 4]), ceil, true, 0);
    assert!(r.len() == 5 && r.contains(&1) && r.contains(&4) && r.windows(2).all(|w| w[0] < w[1]), "{r:?}");
    // acc = 3/6 (≥ 0.5): 4 trees → all 3 incorrect + 1 of the correct.
    let r = go(&mask(&[0, 1, 2]), ceil, true, 0);
    assert!(r.len() == 4 && [3, 4, 5].iter().all(|i| r.contains(i)), "{r:?}");
    // acc = 5/6: 3 trees → the incorrect one + 2 of the 5 correct.
    let r = go(&mask(&[0, 1, 2, 4, 5]), ceil, true, 0);
    assert!(r.len() == 3 && r.contains(&3), "{r:?}");
    // acc = 1: the first 3 if the problem passed the filter (2 under "round"), else none.
    assert_eq!(go(&mask(&[0, 1, 2, 3, 4, 5]), ceil, true, 0), vec![0, 1, 2]);
    assert_eq!(go(&mask(&[0, 1, 2, 3, 4, 5]), TreeRounding::Round, true, 0), vec![0, 1]);
    assert!(go(&mask(&[0, 1, 2, 3, 4, 5]), ceil, false, 0).is_empty());
    assert!(responses_to_branch(&[], ceil, true, 1, 2, 3).is_empty());
}

#[test]
fn branch_draws_are_seeded_by_coordinates_and_uniform() {
    let m = mask(&[0, 1, 2]); // draws 1 correct of {0, 1, 2}
    let a = responses_to_branch(&m, TreeRounding::Ceil, true, 11, 5, 42);
    assert_eq!(a, responses_to_branch(&m, TreeRounding::Ceil, true, 11, 5, 42), "same coordinates, same draw");
    let mut counts = [0usize; 3];
    for id in 0..3000 {
        let r = responses_to_branch(&m, TreeRounding::Ceil, true, 11, 5, id);
        counts[r[0]] += 1;
    }
    for c in counts {
        assert!((850..=1150).contains(&c), "each correct response drawn ≈ 1/3 of the time: {counts:?}");
    }
    // The step coordinate changes the draw too.
    let per_step: std::collections::HashSet<Vec<usize>> =
        (0..20).map(|s| responses_to_branch(&m, TreeRounding::Ceil, true, 11, s, 42)).collect();
    assert!(per_step.len() > 1);
}

#[test]
fn all_correct_fci_filter_keeps_problems_above_the_running_mean() {
    // Question FCI = mean over responses of the mean step y: (0.5 + 0.125)/2; an empty response counts 0.
    assert_eq!(question_fci(&[&[0.0, 0.5, 1.0], &[0.0, 0.25]]).unwrap(), 0.3125);
    assert_eq!(question_fci(&[&[0.0, 0.75], &[]]).unwrap(), 0.1875);
    assert!(question_fci(&[]).is_err());
    assert!(question_fci(&[&[0.0, f32::NAN]]).is_err());

    let mut f = AllCorrectFciFilter::default();
    // Batch 1: mean (0.25 + 0.75)/2 = 0.5 first, then compare.
    assert_eq!(f.update_and_filter(&[0.25, 0.75]).unwrap(), vec![false, true]);
    assert_eq!((f.mean, f.count), (0.5, 2));
    // Batch 2: (0.5·2 + 1)/3 = 2/3.
    assert_eq!(f.update_and_filter(&[1.0]).unwrap(), vec![true]);
    assert!(close(f.mean, 2.0 / 3.0) && f.count == 3);
    // Batch 3: (2 + 0.5 + 0.5)/5 = 0.6; 0.5 is below.
    assert_eq!(f.update_and_filter(&[0.5, 0.5]).unwrap(), vec![false, false]);
    assert!(close(f.mean, 0.6));
    // An empty batch changes nothing; a NaN is an error and changes nothing.
    assert!(f.update_and_filter(&[]).unwrap().is_empty());
    assert!(f.update_and_filter(&[f64::NAN]).is_err());
    assert_eq!(f.count, 5);
    // Checkpoint round trip.
    let s = serde_json::to_string(&f).unwrap();
    assert_eq!(serde_json::from_str::<AllCorrectFciFilter>(&s).unwrap(), f);
    // Strictly greater: a lone first problem equals the mean and is dropped.
    assert_eq!(AllCorrectFciFilter::default().update_and_filter(&[0.3]).unwrap(), vec![false]);
}

#[test]
fn zero_advantage_filter() {
    assert!(!keep_nonzero_advantage(&[0.0, 0.0, 0.0]));
    assert!(!keep_nonzero_advantage(&[1.0, 1.0]));
    assert!(!keep_nonzero_advantage(&[]));
    assert!(keep_nonzero_advantage(&[0.0, 1.0, 1.0]));
    // equal rewards other than 0 and 1 (all malformed under a format penalty) train nothing either
    assert!(!keep_nonzero_advantage(&[-0.5, -0.5, -0.5]), "equal rewards give zero advantages");
    assert!(keep_nonzero_advantage(&[-0.5, 0.0]));
}

#[test]
fn dynamic_batch_recurrence_by_hand() {
    // B′ = 1920, cap 256. B_0 = 64.
    // B″ = 1500: ⌊64·1920/1500⌋ = ⌊81.92⌋ = 81 → ⌈8.1 + 57.6⌉ = ⌈65.7⌉ = 66.
    assert_eq!(next_batch_size(64, 1920, 1500, 0.9, 256), 66);
    // B″ = 1800: ⌊66·1920/1800⌋ = ⌊70.4⌋ = 70 → ⌈7 + 59.4⌉ = 67.
    assert_eq!(next_batch_size(66, 1920, 1800, 0.9, 256), 67);
    // B″ = 2100: ⌊67·1920/2100⌋ = ⌊61.26⌋ = 61 → ⌈6.1 + 60.3⌉ = ⌈66.4⌉ = 67.
    assert_eq!(next_batch_size(67, 1920, 2100, 0.9, 256), 67);
    // B″ = 0: the target is the cap: ⌈25.6 + 60.3⌉ = 86 (no panic, no division by zero).
    assert_eq!(next_batch_size(67, 1920, 0, 0.9, 256), 86);
    // Tiny B″: ⌊64·1920/10⌋ = 12288 capped at 256 → ⌈25.6 + 57.6⌉ = 84.
    assert_eq!(next_batch_size(64, 1920, 10, 0.9, 256), 84);
    // Exact integers stay exact: 0.1·100 + 0.9·100 = 100, not 101.
    assert_eq!(next_batch_size(100, 1000, 1000, 0.9, 400), 100);
    assert_eq!(next_batch_size(1, 10, 1000, 0.9, 4), 1);
    // The same through the checkpointable state.
    let mut d = DynamicBatch::new(64);
    let seq: Vec<usize> = [(1500, 66), (1800, 67), (2100, 67), (0, 86)]
        .iter()
        .map(|&(kept, want)| {
            let b = d.update(1920, kept, 0.9, 256);
            assert_eq!(b, want);
            b
        })
        .collect();
    assert_eq!(seq, vec![66, 67, 67, 86]);
    let s = serde_json::to_string(&d).unwrap();
    assert_eq!(serde_json::from_str::<DynamicBatch>(&s).unwrap(), d);
}
