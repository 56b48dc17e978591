//! Distributions for response lengths (tokens) and latencies (seconds), with their own samplers.
//!
//! Every distribution is clamped to `[min, max]` (generation is capped at the maximum length, so
//! the long tail piles up at `max`, as in real RLVR runs).

use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One weighted Gaussian component of a mixture.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Relative weight (normalised over components).
    pub weight: f64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
}

/// A distribution spec as written in a scenario file (`{ kind = "...", ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    /// Always `value`.
    Constant { value: f64 },
    /// `median · exp(sigma · Z)`, clamped to `[min, max]`.
    Lognormal {
        median: f64,
        sigma: f64,
        #[serde(default)]
        min: f64,
        #[serde(default = "inf")]
        max: f64,
    },
    /// `mean + std · Z`, clamped to `[min, max]` (default min 0).
    Gaussian {
        mean: f64,
        std: f64,
        #[serde(default)]
        min: f64,
        #[serde(default = "inf")]
        max: f64,
    },
    /// Pareto type I: `scale · U^(-1/shape)`, clamped to `max`.
    Pareto {
        scale: f64,
        shape: f64,
        #[serde(default = "inf")]
        max: f64,
    },
    /// Mixture of Gaussians, clamped to `[min, max]`.
    GaussianMixture {
        components: Vec<Component>,
        #[serde(default)]
        min: f64,
        #[serde(default = "inf")]
        max: f64,
    },
    /// Uniform draw from the numbers in one column of a CSV file (path relative to the scenario).
    Empirical {
        csv: String,
        #[serde(default)]
        column: usize,
        #[serde(skip)]
        values: Vec<f64>,
    },
}

fn inf() -> f64 {
    f64::INFINITY
}

/// Complementary error function (Numerical Recipes `erfcc`, fractional error < 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// A float as it is written in TOML (`nan`, `inf`, `-inf`, `0.5`), for error messages.
pub fn show(v: f64) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else {
        format!("{v}")
    }
}

/// Refuse `key.field = v` unless `ok`; `what` says what the field must be.
fn need(key: &str, field: &str, v: f64, ok: bool, what: &str) -> Result<()> {
    if !ok {
        bail!("{key}.{field} = {}: must be {what}", show(v));
    }
    Ok(())
}

/// The clamp range of a distribution: `min` finite and >= 0; `max` > 0 and >= `min`, `inf` allowed
/// (a cap of 0 would turn any distribution into a point mass at 0: write `constant` for that).
fn check_bounds(key: &str, min: f64, max: f64) -> Result<()> {
    need(key, "min", min, min.is_finite() && min >= 0.0, "a finite number >= 0")?;
    if !(max > 0.0 && max >= min) {
        bail!("{key}.max = {}: must be > 0 and >= {key}.min ({}) (inf allowed)", show(max), show(min));
    }
    Ok(())
}

impl Dist {
    /// Sample one value.
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        match self {
            Dist::Constant { value } => *value,
            Dist::Lognormal { median, sigma, min, max } => (median * (sigma * rng.normal()).exp()).clamp(*min, *max),
            Dist::Gaussian { mean, std, min, max } => (mean + std * rng.normal()).clamp(*min, *max),
            Dist::Pareto { scale, shape, max } => (scale * rng.uniform_open().powf(-1.0 / shape)).min(*max),
            Dist::GaussianMixture { components, min, max } => {
                let total: f64 = components.iter().map(|c| c.weight).sum();
                let mut u = rng.uniform() * total;
                let mut pick = &components[components.len() - 1];
                for c in components {
                    if u < c.weight {
                        pick = c;
                        break;
                    }
                    u -= c.weight;
                }
                (pick.mean + pick.std * rng.normal()).clamp(*min, *max)
            }
            Dist::Empirical { values, .. } => values[rng.below(values.len() as u64) as usize],
        }
    }

    /// True for the kinds [`Dist::sample_from_normal`] supports.
    pub fn has_normal_quantile(&self) -> bool {
        matches!(self, Dist::Constant { .. } | Dist::Lognormal { .. } | Dist::Gaussian { .. } | Dist::Pareto { .. })
    }

    /// The value at the standard-normal deviate `z` (quantile `Φ(z)`), clamped as [`Dist::sample`]:
    /// with `z` standard normal this has exactly the distribution of [`Dist::sample`]. Lognormal and
    /// Gaussian use `z` directly; Pareto maps it through `Φ`. Other kinds: NaN (refused by the checks).
    pub fn sample_from_normal(&self, z: f64) -> f64 {
        match self {
            Dist::Constant { value } => *value,
            Dist::Lognormal { median, sigma, min, max } => (median * (sigma * z).exp()).clamp(*min, *max),
            Dist::Gaussian { mean, std, min, max } => (mean + std * z).clamp(*min, *max),
            Dist::Pareto { scale, shape, max } => {
                // Upper tail probability Φ(−z) plays the role of the uniform U in U^(−1/shape).
                let u = (0.5 * erfc(z / std::f64::consts::SQRT_2)).max(f64::MIN_POSITIVE);
                (scale * u.powf(-1.0 / shape)).min(*max)
            }
            Dist::GaussianMixture { .. } | Dist::Empirical { .. } => f64::NAN,
        }
    }

    /// Check the parameters (not the CSV of `empirical`); `key` names the scenario key, and an error
    /// names the offending field below it (`workload.response_tokens.sigma = inf: ...`) and its value.
    pub fn check(&self, key: &str) -> Result<()> {
        match self {
            Dist::Constant { value } => {
                need(key, "value", *value, value.is_finite() && *value >= 0.0, "a finite number >= 0")
            }
            Dist::Lognormal { median, sigma, min, max } => {
                need(key, "median", *median, median.is_finite() && *median > 0.0, "a finite number > 0")?;
                need(key, "sigma", *sigma, sigma.is_finite() && *sigma >= 0.0, "a finite number >= 0")?;
                check_bounds(key, *min, *max)
            }
            Dist::Gaussian { mean, std, min, max } => {
                need(key, "mean", *mean, mean.is_finite(), "a finite number")?;
                need(key, "std", *std, std.is_finite() && *std >= 0.0, "a finite number >= 0")?;
                check_bounds(key, *min, *max)
            }
            Dist::Pareto { scale, shape, max } => {
                need(key, "scale", *scale, scale.is_finite() && *scale > 0.0, "a finite number > 0")?;
                need(key, "shape", *shape, shape.is_finite() && *shape > 0.0, "a finite number > 0")?;
                if max.is_nan() || max < scale {
                    bail!("{key}.max = {}: must be >= {key}.scale ({}) (inf allowed)", show(*max), show(*scale));
                }
                Ok(())
            }
            Dist::GaussianMixture { components, min, max } => {
                if components.is_empty() {
                    bail!("{key}.components: a gaussian_mixture needs at least one component");
                }
                for (i, c) in components.iter().enumerate() {
                    let k = format!("{key}.components[{i}]");
                    need(&k, "weight", c.weight, c.weight.is_finite() && c.weight >= 0.0, "a finite number >= 0")?;
                    need(&k, "mean", c.mean, c.mean.is_finite(), "a finite number")?;
                    need(&k, "std", c.std, c.std.is_finite() && c.std >= 0.0, "a finite number >= 0")?;
                }
                let total: f64 = components.iter().map(|c| c.weight).sum();
                if !(total.is_finite() && total > 0.0) {
                    bail!(
                        "{key}.components[..].weight: the weights sum to {}; the total must be finite and > 0",
                        show(total)
                    );
                }
                check_bounds(key, *min, *max)
            }
            Dist::Empirical { .. } => Ok(()),
        }
    }

    /// Check parameters and load CSV data; `key` names the scenario key for error messages.
    pub fn prepare(&mut self, key: &str, base_dir: &Path) -> Result<()> {
        self.check(key)?;
        if let Dist::Empirical { csv, column, values } = self {
            let path = base_dir.join(&*csv);
            *values = read_csv_column(&path, *column).with_context(|| format!("{key}: csv = {csv:?}"))?;
        }
        Ok(())
    }

    /// Mean estimated from 20k draws of a fixed stream (used for reporting and bounds).
    pub fn mean_estimate(&self) -> f64 {
        let mut rng = Rng::new(0xD15);
        let n = 20_000;
        (0..n).map(|_| self.sample(&mut rng)).sum::<f64>() / n as f64
    }
}

/// Read one numeric column of a CSV file; a non-numeric first row is taken as a header.
pub fn read_csv_column(path: &Path, column: usize) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut values = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(cell) = line.split(',').nth(column) else {
            bail!("{}:{}: no column {column}", path.display(), i + 1);
        };
        match cell.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => values.push(v),
            Ok(_) => bail!("{}:{}: value {cell:?} must be finite and >= 0", path.display(), i + 1),
            Err(_) if values.is_empty() && i == 0 => continue,
            Err(_) => bail!("{}:{}: {cell:?} is not a number", path.display(), i + 1),
        }
    }
    if values.is_empty() {
        bail!("{}: no values in column {column}", path.display());
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lognormal_median_and_cap() {
        let d = Dist::Lognormal { median: 100.0, sigma: 1.0, min: 0.0, max: 1000.0 };
        let mut r = Rng::new(3);
        let mut v: Vec<f64> = (0..20001).map(|_| d.sample(&mut r)).collect();
        v.sort_by(f64::total_cmp);
        assert!((v[10000] - 100.0).abs() < 5.0, "median {}", v[10000]);
        assert_eq!(v[20000], 1000.0);
    }

    #[test]
    fn parses_tagged_and_rejects_unknown_keys() {
        #[derive(Deserialize)]
        struct W {
            d: Dist,
        }
        let w: W = toml::from_str("d = { kind = \"pareto\", scale = 2.0, shape = 1.5 }").unwrap();
        assert!(matches!(w.d, Dist::Pareto { .. }));
        assert!(toml::from_str::<W>("d = { kind = \"pareto\", scale = 2.0, shape = 1.5, bogus = 1 }").is_err());
    }
}
