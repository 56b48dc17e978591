//! Which error variant each layer returns: a malformed file is `Format` (or `Io` for a missing
//! one), mismatched sizes are `Shape`, a bad collective or peer message is `Collective` naming the
//! rank, and a context added on the way up keeps the variant.

mod common;

use arbor::attnrl::tree::{question_trees, Continuation, ResponseTree, SplitPoint};
use arbor::io::tensor_file::parse_header;
use arbor::io::{load_hf_dir, save_hf_dir, SaveOptions};
use arbor::model::shard::{gather_params, shard_config, shard_params};
use arbor::model::{Arch, Batch, Params};
use arbor::parallel::{Comm, Local};
use arbor::{Error, Result};
use std::path::Path;

#[test]
fn a_short_safetensors_file_is_a_format_error_naming_it() {
    let e = parse_header(Path::new("w.safetensors"), &[1, 2, 3]).unwrap_err();
    assert!(matches!(&e, Error::Format { path, .. } if path == Path::new("w.safetensors")), "{e:?}");
    assert!(e.to_string().starts_with("w.safetensors: not a valid safetensors file: 3 bytes"), "{e}");
    // a header length past the end of the file
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let e = parse_header(Path::new("w.safetensors"), &bytes).unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(e.to_string().contains("header length 1000"), "{e}");
}

#[test]
fn a_model_directory_without_weights_is_a_not_found_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::tiny_config(Arch::Llama, false);
    save_hf_dir(dir.path(), &cfg, &Params::zeros(&cfg), &SaveOptions::default()).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_hf_dir(dir.path()).unwrap_err();
    match &e {
        Error::Io { path, source } => {
            assert_eq!(path, dir.path());
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
    assert!(e.to_string().contains("no model.safetensors or model.safetensors.index.json found"), "{e}");
}

#[test]
fn saving_params_of_another_layout_is_a_shape_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::tiny_config(Arch::Llama, false);
    let mut params = Params::zeros(&cfg);
    params.data.pop();
    let e = save_hf_dir(dir.path(), &cfg, &params, &SaveOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert!(e.to_string().contains("but the layout needs"), "{e}");
}

#[test]
fn batch_sizes_that_disagree_are_shape_errors() {
    let mut b = Batch::new();
    b.push(&[1, 2], &[2, 3]).unwrap();
    let e = b.push(&[1, 2, 3], &[2]).unwrap_err();
    assert!(matches!(&e, Error::Shape { what, .. } if what == "sequence 1"), "{e:?}");
    assert_eq!(e.to_string(), "sequence 1: 3 tokens but 1 targets");
}

#[test]
fn a_bad_broadcast_root_is_a_collective_error_naming_the_rank() {
    let e = Local.broadcast_bytes(1, &mut Vec::new()).unwrap_err();
    assert!(matches!(&e, Error::Collective { rank: 0, op, .. } if op == "broadcast"), "{e:?}");
    assert_eq!(e.to_string(), "rank 0: broadcast: root 1 out of range for 1 rank");
}

/// Two ranks seen from rank 0: all-gather returns `mine` and a fixed message from rank 1.
struct TwoRanks {
    from_rank1: Vec<u8>,
}

impl Comm for TwoRanks {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        2
    }
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_max_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _root: usize, _buf: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec(), self.from_rank1.clone()])
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn split(&self, _color: usize, _key: usize) -> Result<Box<dyn Comm>> {
        Ok(Box::new(Local))
    }
    fn abort(&self, msg: &str) -> ! {
        panic!("abort: {msg}")
    }
    fn describe(&self) -> String {
        "two ranks (test)".into()
    }
}

#[test]
fn a_short_gather_message_is_a_collective_error_naming_the_sender() {
    let full_cfg = common::tiny_config(Arch::Qwen2, false);
    let local = shard_config(&full_cfg, 2).unwrap();
    let full = Params::zeros(&full_cfg);
    let shard = shard_params(&full, &local, 0).unwrap();
    let whole: Vec<u8> = bytemuck::cast_slice(&shard.data).to_vec();
    // a well-formed message from rank 1 reassembles
    gather_params(&shard, &full_cfg, &TwoRanks { from_rank1: whole.clone() }).unwrap();
    let short = TwoRanks { from_rank1: whole[..whole.len() - 3].to_vec() };
    let e = gather_params(&shard, &full_cfg, &short).unwrap_err();
    assert!(matches!(&e, Error::Collective { rank: 1, .. }), "{e:?}");
    let want = format!("rank 1: tensor-parallel gather: sent {} bytes, expected {}", whole.len() - 3, whole.len());
    assert_eq!(e.to_string(), want);
}

#[test]
fn a_context_added_on_the_way_up_keeps_the_variant() {
    let ok = ResponseTree {
        len: 10,
        reward: 1.0,
        splits: vec![SplitPoint { at: 4, continuations: vec![Continuation { len: 3, reward: 0.0 }] }],
    };
    let mut bad = ok.clone();
    bad.splits[0].at = 0;
    let e = question_trees(&[ok, bad]).unwrap_err();
    assert!(matches!(&e, Error::Shape { what, .. } if what == "response 1: split 0 at token 0"), "{e:?}");
}

/// Answers parsed out of model output: a thousands group that starts with a multi-byte character
/// (`1,ab€`: the group's first 3 bytes end inside the `€`) used to panic on a char boundary.
#[test]
fn a_thousands_group_cut_inside_a_character_is_not_a_number() {
    use arbor::tasks::answer::{check_answer, parse_answer};
    assert_eq!(parse_answer("1,ab€"), None);
    assert_eq!(parse_answer("1,2€3"), None);
    assert!(parse_answer("1,234").is_some());
    let _ = check_answer("so the answer is \\boxed{1,ab€}", "1000");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Every grader of free-form model output returns a verdict on any text, never a panic.
    #[test]
    fn graders_of_model_output_never_panic(
        text in "[0-9,./{}\\\\a-z€é$ -]{0,24}",
        raw in proptest::prelude::any::<String>(),
    ) {
        use arbor::tasks::answer::{check_answer, extract_answer, parse_answer};
        for t in [text.as_str(), raw.as_str()] {
            let _ = parse_answer(t);
            let _ = extract_answer(t);
            let _ = check_answer(t, "12");
            let _ = check_answer(&format!("\\boxed{{{t}}}"), "1/2");
            let _ = arbor::env::guess::first_integer(t);
            let _ = arbor::tasks::rational::parse_expression(t);
            let _ = arbor::tasks::arithmetic::Column::from_prompt(t);
        }
    }
}
