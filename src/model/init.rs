//! Random initialisation (HF convention: normal(0, initializer_range) for matrices, ones for
//! norms, zeros for biases), seeded per tensor so adding a tensor never shifts another's values.

use crate::model::config::ModelConfig;
use crate::model::params::Params;
use crate::rng::Rng;

/// Parameters drawn from `seed` with standard deviation `std` for matrices. Tensors are drawn in
/// parallel, each from its own stream, so the values do not depend on the thread count (a 0.5B
/// model's half a billion normal draws take seconds instead of tens of seconds).
pub fn init_params(cfg: &ModelConfig, seed: u64, std: f64) -> Params {
    use rayon::prelude::*;
    let mut p = Params::zeros(cfg);
    let specs = p.layout.specs.clone();
    // each tensor's own slice of the flat buffer (the layout places them in order, apart)
    let mut parts = Vec::with_capacity(specs.len());
    let mut rest: &mut [f32] = &mut p.data;
    let mut at = 0;
    for (idx, spec) in specs.iter().enumerate() {
        let r = spec.range();
        assert!(r.start >= at && r.end <= at + rest.len(), "parameter layout out of order at {}", spec.name);
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - at);
        let (mine, tail) = tail.split_at_mut(r.len());
        parts.push((idx, spec, mine));
        (rest, at) = (tail, r.end);
    }
    parts.into_par_iter().for_each(|(idx, spec, data)| {
        if spec.name.ends_with("norm.weight") {
            data.iter_mut().for_each(|x| *x = 1.0);
        } else if spec.name.ends_with(".bias") {
            data.iter_mut().for_each(|x| *x = 0.0);
        } else {
            let mut rng = Rng::derive(seed, &[idx as u64]);
            data.iter_mut().for_each(|x| *x = (rng.normal() * std) as f32);
        }
    });
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;

    /// The parallel draw equals drawing every tensor one after another from its own stream (the
    /// definition), bit for bit, with and without tied embeddings; norms are ones, biases zeros.
    #[test]
    fn tensors_drawn_in_parallel_equal_the_sequential_draw() {
        for tie in [false, true] {
            let cfg = ModelConfig {
                arch: Arch::Qwen2,
                hidden_size: 16,
                intermediate_size: 24,
                num_layers: 3,
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 4,
                rms_norm_eps: 1e-6,
                rope_theta: 10000.0,
                rope_scaling: None,
                vocab_size: 37,
                max_position_embeddings: 32,
                tie_word_embeddings: tie,
                qkv_bias: true,
                bos_token_id: None,
                eos_token_ids: Vec::new(),
            };
            let got = init_params(&cfg, 9, 0.02);
            let mut want = Params::zeros(&cfg);
            for (idx, spec) in want.layout.specs.clone().iter().enumerate() {
                let data = &mut want.data[spec.range()];
                let mut rng = Rng::derive(9, &[idx as u64]);
                for x in data.iter_mut() {
                    *x = match () {
                        _ if spec.name.ends_with("norm.weight") => 1.0,
                        _ if spec.name.ends_with(".bias") => 0.0,
                        _ => (rng.normal() * 0.02) as f32,
                    };
                }
            }
            let bits = |p: &Params| p.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "tie {tie}");
            assert!(got.data.iter().any(|&x| x != 0.0 && x != 1.0), "no random draws");
        }
    }
}
