//! Random initialisation (HF convention: normal(0, initializer_range) for matrices, ones for
//! norms, zeros for biases), seeded per tensor so adding a tensor never shifts another's values.

use crate::model::config::ModelConfig;
use crate::model::params::Params;
use crate::rng::Rng;

/// Parameters drawn from `seed` with standard deviation `std` for matrices.
pub fn init_params(cfg: &ModelConfig, seed: u64, std: f64) -> Params {
    let mut p = Params::zeros(cfg);
    for (idx, spec) in p.layout.specs.clone().iter().enumerate() {
        let data = &mut p.data[spec.range()];
        if spec.name.ends_with("norm.weight") {
            data.iter_mut().for_each(|x| *x = 1.0);
        } else if spec.name.ends_with(".bias") {
            data.iter_mut().for_each(|x| *x = 0.0);
        } else {
            let mut rng = Rng::derive(seed, &[idx as u64]);
            data.iter_mut().for_each(|x| *x = (rng.normal() * std) as f32);
        }
    }
    p
}
