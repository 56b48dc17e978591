//! Rank-to-rank messages, and checkpoints of non-finite weights.

use super::checkpoints::save_tiny;
use super::safetensors_files::tiny_params;
use super::*;

fn step_sample(i: u32) -> StepSample {
    let n = i as usize % 3;
    StepSample {
        prompt_id: u64::from(i),
        sample_index: i,
        data: Sample {
            prompt: vec![1, 3 + i],
            response: vec![5; n],
            behav_logp: vec![-0.25; n],
            advantages: vec![0.5; n],
            reward: 1.0,
        },
        logp: vec![-0.5; n],
        finish: if i.is_multiple_of(2) { Finish::Stop } else { Finish::Length },
        trace: AttnTrace { branch: (i % 2 == 1).then_some((0, 1)), fci: vec![0.1; n], ..AttnTrace::default() },
        policy_version: i.is_multiple_of(2).then_some(u64::from(i) + 3),
    }
}

#[test]
fn short_and_malformed_messages_say_what_is_wrong() {
    let samples: Vec<StepSample> = (0..3).map(step_sample).collect();
    let bytes = wire::encode(&samples);
    assert_eq!(wire::decode(&bytes).expect("round trip"), samples);
    let msg = wire::decode(&bytes[..bytes.len() - 2]).expect_err("truncated").to_string();
    assert!(msg.contains("gathered samples") && msg.contains("sample 2") && msg.contains("truncated"), "{msg}");
    let msg = wire::decode(&[0xff; 8]).expect_err("absurd count").to_string();
    assert!(msg.contains("`sample count`") && msg.contains("18446744073709551615"), "{msg}");
    let msg = decode_weights(&[0; 12], 1).expect_err("short weights").to_string();
    assert!(msg.contains("weights message of 12 bytes"), "{msg}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn message_decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400), n in 0usize..64) {
        let _ = wire::decode(&bytes);
        let _ = decode_weights(&bytes, n);
    }

    #[test]
    fn message_decoders_never_panic_on_mutated_messages(count in 0u32..5, edits in edits(4)) {
        let samples: Vec<StepSample> = (0..count).map(step_sample).collect();
        let good = wire::encode(&samples);
        let bad = mutate_bytes(&good, &edits);
        if let Err(e) = wire::decode(&bad) {
            prop_assert!(e.to_string().starts_with("gathered samples: malformed message"), "{}", e);
        }
        for cut in [0, good.len() / 3, good.len().saturating_sub(1)] {
            if cut < good.len() {
                prop_assert!(wire::decode(&good[..cut]).is_err(), "a message cut at {} decoded", cut);
            }
        }
    }
}

#[test]
fn a_checkpoint_of_non_finite_weights_is_never_written() {
    let run = tempfile::tempdir().expect("tempdir");
    let (cfg, mut params) = tiny_params();
    params.data[5] = f32::NAN;
    let err = save_tiny(run.path(), &cfg, &params, 4).unwrap_err();
    assert!(err.to_string().contains("non-finite") && err.to_string().contains("element 5"), "{err}");
    assert!(arbor::train::checkpoint::list_checkpoints(run.path()).unwrap().is_empty());
}
