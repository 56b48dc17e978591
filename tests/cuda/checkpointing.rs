//! Gradient checkpointing on the GPU (`[train] gradient_checkpointing`): the backward that
//! recomputes each layer's activations from its saved input gives the bits of the one that kept
//! them, with f32 and with bf16 products (bf16 activation storage), for the policy's loss and a
//! value model's trunk, and the workspace holds less device memory, as much as the device memory
//! plan computes; the CPU's side of the same properties is tests/checkpointing.rs.

use super::common::{perturb_norms, tiny_config};
use super::{batch, gpu};
use arbor::config::Dtype;
use arbor::cuda::GpuModel;
use arbor::model::workspace::{planned_bytes, BufferSizes};
use arbor::model::{init::init_params, Arch, Model, ModelConfig};
use arbor::rng::Rng;

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn checkpointing_on_the_gpu_gives_the_kept_backwards_bits() {
    let Some(g) = gpu() else { return };
    for dtype in [Dtype::F32, Dtype::Bf16] {
        g.set_dtype(dtype);
        for arch in [Arch::Qwen2, Arch::Qwen3] {
            let cfg = ModelConfig { num_layers: 3, head_dim: 8, hidden_size: 32, ..tiny_config(arch, false) };
            let mut params = init_params(&cfg, 5, 0.3);
            perturb_norms(&mut params, 2);
            let model = Model::new(cfg.clone(), params).unwrap();
            let b = batch(&mut Rng::new(3), &[13, 22, 5], cfg.vocab_size as u32);
            let n = b.len();
            let dlogp: Vec<f32> = (0..n).map(|i| ((i % 5) as f32 - 2.0) * 0.1).collect();
            let dent = vec![0.02; n];
            let dv: Vec<f32> = (0..n).map(|i| ((i % 3) as f32 - 1.0) * 0.5).collect();
            let w: Vec<f32> = (0..cfg.hidden_size).map(|k| (k as f32 - 16.0) * 0.05).collect();
            let run = |checkpointing: bool| {
                let mut gm = GpuModel::new(g.clone(), &model).unwrap();
                gm.set_checkpointing(checkpointing);
                let (lp, ent) = gm.forward(&model, &b).unwrap();
                gm.backward(&model, &b, &dlogp, Some(&dent)).unwrap();
                let policy = gm.grads().unwrap();
                let bytes = gm.workspace_bytes();
                // what the device memory plan computes for these buffers (train::memory_plan), but
                // for the one-float placeholder a device buffer of no length holds
                let planned = planned_bytes(&cfg, n, checkpointing, BufferSizes::of(&*g, &cfg, n));
                let extra = bytes as i128 - planned as i128;
                assert!((0..=64).contains(&extra), "{dtype:?} {arch:?}: {bytes} bytes, planned {planned}");
                gm.zero_grads().unwrap();
                let values = gm.trunk_values(&model, &b, &w).unwrap();
                let dw = gm.backward_trunk_head(&model, &b, &w, &dv).unwrap();
                assert_eq!(gm.checkpointing(), checkpointing);
                ([lp, ent, policy, values, dw, gm.grads().unwrap()], bytes)
            };
            let ((want, kept), (got, ckpt)) = (run(false), run(true));
            let names =
                ["log-probs", "entropies", "policy gradients", "values", "value-head gradient", "trunk gradients"];
            for (k, what) in names.iter().enumerate() {
                assert!(want[k].iter().any(|&x| x != 0.0), "{dtype:?} {arch:?}: {what} all zero");
                assert!(bits(&got[k]) == bits(&want[k]), "{dtype:?} {arch:?}: checkpointed {what} differ in bits");
            }
            println!("{dtype:?} {arch:?}: workspace {kept} bytes, checkpointed {ckpt}");
            assert!(ckpt < kept, "{dtype:?} {arch:?}: the checkpointed workspace holds {ckpt} bytes, the plain {kept}");
        }
    }
    g.set_dtype(Dtype::F32);
}
