//! RoPE's frequencies rescaled for long contexts, as a model's `config.json` asks:
//! transformers 4 writes `rope_scaling: {rope_type (or type), factor, …}` beside `rope_theta`,
//! transformers 5 `rope_parameters: {rope_type, rope_theta, factor, …}`. arbor computes the
//! default RoPE, `"linear"`, Llama 3.1's `"llama3"` and `"yarn"` (Qwen's long-context setting); the
//! inverse frequencies (and YaRN's attention factor on cos and sin) are computed once, in f32 and
//! in transformers' order of operations, into the model's RoPE table, which both devices read.
//! Other types (`dynamic`, `longrope`, …) are refused by key.

use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

/// How a model rescales RoPE's inverse frequencies (HF's `rope_type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `"linear"`: every inverse frequency divided by `factor` (positions interpolated).
    Linear { factor: f64 },
    /// `"llama3"` (Llama 3.1, 3.2, 3.3): wavelengths longer than
    /// `original_max_position_embeddings / low_freq_factor` divided by `factor`, those shorter than
    /// `original_max_position_embeddings / high_freq_factor` kept, the ones between interpolated.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    /// `"yarn"`: the rotated pairs ramp from extrapolated (the fastest, up to dimension `low` of
    /// the correction range of `beta_fast` rotations over the original context) to interpolated
    /// (÷ `factor`, from dimension `high`, of `beta_slow` rotations); cos and sin are multiplied by
    /// `attention_factor` (0.1·ln(factor) + 1 unless the config gives it). Read with every default
    /// resolved, so written back explicitly.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        attention_factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
    },
}

impl RopeScaling {
    /// The scaling `config.json`'s object `obj` asks for (`None`: default RoPE). A type arbor does
    /// not compute, a parameter missing or out of range, or `rope_scaling` and `rope_parameters`
    /// naming different scalings are errors naming `file` and the key.
    pub fn from_hf(obj: &Map<String, Value>, file: &Path) -> Result<Option<RopeScaling>> {
        let mut found: Option<(&str, RopeScaling)> = None;
        for key in ["rope_parameters", "rope_scaling"] {
            let Some(Value::Object(rs)) = obj.get(key) else { continue };
            let err = |msg: String| Error::Config { file: file.into(), key: key.into(), msg };
            let kind = match rs.get("rope_type").or_else(|| rs.get("type")) {
                Some(Value::String(kind)) => kind.as_str(),
                Some(x) => return Err(err(format!("rope_type {x}: expected a name such as \"default\""))),
                // no type: an object of only rope_theta (and a full partial_rotary_factor, checked
                // by the caller) is default RoPE; any other key (`factor`, ...) asks for a scaling
                // it does not name (transformers 4 fails on it)
                None => match rs.keys().find(|k| *k != "rope_theta" && *k != "partial_rotary_factor") {
                    Some(other) => {
                        return Err(err(format!(
                            "has {other:?} but no rope_type (or type): which RoPE scaling is meant?"
                        )))
                    }
                    None => "default",
                },
            };
            let num = |name: &str| -> Result<f64> {
                match rs.get(name).and_then(Value::as_f64) {
                    Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                    Some(x) => Err(err(format!("{name} = {x}: must be a positive number"))),
                    None => Err(err(format!("rope_type {kind:?} needs a number {name}"))),
                }
            };
            let scaling = match kind {
                "default" => continue,
                "linear" => RopeScaling::Linear { factor: num("factor")? },
                "llama3" => {
                    let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
                    if high <= low {
                        return Err(err(format!("high_freq_factor {high} must exceed low_freq_factor {low}")));
                    }
                    let original = num("original_max_position_embeddings")?;
                    if original.fract() != 0.0 {
                        return Err(err(format!("original_max_position_embeddings = {original}: not a whole number")));
                    }
                    RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: low,
                        high_freq_factor: high,
                        original_max_position_embeddings: original as usize,
                    }
                }
                "yarn" => yarn(obj, rs).map_err(err)?,
                other => {
                    return Err(err(format!(
                        "rope_type {other:?} is not supported (arbor computes \"default\", \"linear\", \"llama3\" and \"yarn\")"
                    )))
                }
            };
            match found {
                Some((first, s)) if s != scaling => {
                    return Err(err(format!("names {scaling:?}, but {first} names {s:?}")));
                }
                _ => found = Some((key, scaling)),
            }
        }
        Ok(found.map(|(_, s)| s))
    }

    /// The `rope_scaling` object of `config.json` for this scaling (transformers 4's spelling,
    /// which transformers 5 reads too).
    pub fn to_hf(&self) -> Value {
        match *self {
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                       "high_freq_factor": high_freq_factor,
                       "original_max_position_embeddings": original_max_position_embeddings})
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                attention_factor,
                beta_fast,
                beta_slow,
                truncate,
            } => {
                json!({"rope_type": "yarn", "factor": factor,
                       "original_max_position_embeddings": original_max_position_embeddings,
                       "attention_factor": attention_factor, "beta_fast": beta_fast, "beta_slow": beta_slow,
                       "truncate": truncate})
            }
        }
    }

    /// What cos and sin are multiplied by (YaRN's attention factor; 1 otherwise).
    pub fn attention_factor(&self) -> f64 {
        match *self {
            RopeScaling::Yarn { attention_factor, .. } => attention_factor,
            _ => 1.0,
        }
    }
}

/// A `"yarn"` object `rs` of config.json's object `obj`, its defaults resolved as transformers
/// resolves them: the original context from `rs`, else a top-level `original_max_position_embeddings`
/// (which wins where both are), else `max_position_embeddings`; a null factor is the context's
/// growth; the attention factor from `mscale` / `mscale_all_dim` or 0.1·ln(factor) + 1.
fn yarn(obj: &Map<String, Value>, rs: &Map<String, Value>) -> std::result::Result<RopeScaling, String> {
    let positive = |name: &str, x: Option<&Value>| -> std::result::Result<Option<f64>, String> {
        match x {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(f) if f.is_finite() && f > 0.0 => Ok(Some(f)),
                _ => Err(format!("{name} = {v}: must be a positive number")),
            },
        }
    };
    let context = positive("max_position_embeddings", obj.get("max_position_embeddings"))?;
    let original = positive("original_max_position_embeddings", obj.get("original_max_position_embeddings"))?
        .or(positive("original_max_position_embeddings", rs.get("original_max_position_embeddings"))?)
        .or(context)
        .ok_or("rope_type \"yarn\" needs original_max_position_embeddings")?;
    if original.fract() != 0.0 {
        return Err(format!("original_max_position_embeddings = {original}: not a whole number"));
    }
    let factor = match positive("factor", rs.get("factor"))? {
        Some(f) => f,
        None => context.ok_or("rope_type \"yarn\" needs a factor")? / original,
    };
    // (yarn_get_mscale: 1 for a factor ≤ 1)
    let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
    let attention_factor = match positive("attention_factor", rs.get("attention_factor"))? {
        Some(a) => a,
        None => match (positive("mscale", rs.get("mscale"))?, positive("mscale_all_dim", rs.get("mscale_all_dim"))?) {
            (Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
            _ => mscale(factor, 1.0),
        },
    };
    let truncate = match rs.get("truncate") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(format!("truncate = {v}: expected true/false")),
    };
    Ok(RopeScaling::Yarn {
        factor,
        original_max_position_embeddings: original as usize,
        attention_factor,
        beta_fast: positive("beta_fast", rs.get("beta_fast"))?.unwrap_or(32.0),
        beta_slow: positive("beta_slow", rs.get("beta_slow"))?.unwrap_or(1.0),
        truncate,
    })
}

/// RoPE's inverse frequencies for heads of `head_dim` values, base `theta`, rescaled by
/// `scaling`, in f32 and in the order transformers computes them (`_compute_llama3_parameters`).
pub fn inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let half = head_dim / 2;
    let base = (0..half).map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32);
    match scaling {
        None => base.collect(),
        Some(&RopeScaling::Linear { factor }) => base.map(|f| f / factor as f32).collect(),
        Some(&RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let (factor, low) = (factor as f32, low_freq_factor as f32);
            let old = original_max_position_embeddings as f32;
            let (low_wavelen, high_wavelen) =
                ((old as f64 / low_freq_factor) as f32, (old as f64 / high_freq_factor) as f32);
            let span = (high_freq_factor - low_freq_factor) as f32;
            base.map(|f| {
                let wavelen = std::f32::consts::TAU / f;
                let scaled = if wavelen > low_wavelen { f / factor } else { f };
                let smooth = (old / wavelen - low) / span;
                let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
                if medium {
                    smoothed
                } else {
                    scaled
                }
            })
            .collect()
        }
        Some(&RopeScaling::Yarn {
            factor, original_max_position_embeddings, beta_fast, beta_slow, truncate, ..
        }) => {
            // the pair index at which `rotations` turns fit in the original context
            let dim = head_dim as f64;
            let at = |rotations: f64| {
                dim * (original_max_position_embeddings as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * theta.ln())
            };
            let (mut low, mut high) = (at(beta_fast), at(beta_slow));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
            if low == high {
                high += 0.001;
            }
            let (low, high) = (low as f32, high as f32);
            base.enumerate()
                .map(|(i, extrapolated)| {
                    let interpolated = extrapolated / factor as f32;
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let keep = 1.0 - ramp;
                    interpolated * (1.0 - keep) + extrapolated * keep
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Option<RopeScaling>> {
        RopeScaling::from_hf(v.as_object().unwrap(), Path::new("c.json"))
    }

    const LLAMA3: RopeScaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };

    /// Both spellings are read (transformers 4's `rope_scaling` with `type` or `rope_type`, 5's
    /// `rope_parameters`), agree when both are there, and are written back as they were read.
    #[test]
    fn both_spellings_are_read_and_written_back() {
        let l3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192});
        assert_eq!(parse(json!({"rope_scaling": l3})).unwrap(), Some(LLAMA3));
        let mut v5 = l3.clone();
        v5["rope_theta"] = json!(500000.0);
        assert_eq!(parse(json!({"rope_parameters": v5, "rope_scaling": l3})).unwrap(), Some(LLAMA3));
        assert_eq!(parse(json!({"rope_scaling": LLAMA3.to_hf()})).unwrap(), Some(LLAMA3));
        let lin = RopeScaling::Linear { factor: 2.0 };
        assert_eq!(parse(json!({"rope_scaling": {"type": "linear", "factor": 2}})).unwrap(), Some(lin));
        assert_eq!(parse(json!({"rope_scaling": lin.to_hf()})).unwrap(), Some(lin));
        assert_eq!(parse(json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})).unwrap(), None);
        assert_eq!(parse(json!({"rope_scaling": null})).unwrap(), None);
    }

    /// What arbor does not compute, a missing or bad parameter, and two keys that disagree are
    /// refused, naming the file and the key.
    #[test]
    fn other_scalings_and_bad_parameters_are_refused_by_key() {
        for (v, key, says) in [
            (
                json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}}),
                "rope_scaling",
                "\"dynamic\" is not supported",
            ),
            (json!({"rope_parameters": {"rope_type": "longrope", "factor": 4.0}}), "rope_parameters", "\"longrope\""),
            (
                json!({"max_position_embeddings": 64, "rope_scaling": {"rope_type": "yarn", "factor": 0}}),
                "rope_scaling",
                "factor = 0",
            ),
            (
                json!({"max_position_embeddings": 64, "rope_scaling": {"rope_type": "yarn", "factor": 2, "truncate": 1}}),
                "rope_scaling",
                "truncate = 1",
            ),
            (json!({"rope_scaling": {"rope_type": "linear"}}), "rope_scaling", "needs a number factor"),
            (json!({"rope_scaling": {"rope_type": "linear", "factor": -1}}), "rope_scaling", "factor = -1"),
            (
                json!({"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1,
                                        "original_max_position_embeddings": 8192}}),
                "rope_scaling",
                "must exceed",
            ),
            (
                json!({"rope_parameters": {"rope_type": "linear", "factor": 2}, "rope_scaling": {"rope_type": "linear", "factor": 4}}),
                "rope_scaling",
                "but rope_parameters names",
            ),
            (json!({"rope_scaling": {"factor": 8.0}}), "rope_scaling", "no rope_type"),
        ] {
            let e = parse(v.clone()).unwrap_err().to_string();
            assert!(e.contains("c.json") && e.contains(&format!("`{key}`")) && e.contains(says), "{v}: {e}");
        }
    }

    /// YaRN's defaults are resolved as transformers resolves them and written back explicitly: the
    /// original context from the object, else the top-level key (which wins), else the context; a
    /// null factor is the context's growth; the attention factor 0.1·ln(factor) + 1, or the ratio of
    /// the two mscales; beta 32 and 1; truncation on.
    #[test]
    fn yarn_defaults_resolve_as_transformers_resolves_them() {
        let y = |v: Value| parse(v).unwrap().unwrap();
        let RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            attention_factor,
            beta_fast,
            beta_slow,
            truncate,
        } = y(json!({"max_position_embeddings": 131072,
                     "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}))
        else {
            panic!("not yarn")
        };
        assert_eq!(
            (factor, original_max_position_embeddings, beta_fast, beta_slow, truncate),
            (4.0, 32768, 32.0, 1.0, true)
        );
        assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
        // a null factor: the context's growth over the original; the top-level original wins
        let s = y(json!({"max_position_embeddings": 4096, "original_max_position_embeddings": 1024,
                         "rope_parameters": {"rope_type": "yarn", "factor": null, "original_max_position_embeddings": 2048}}));
        assert!(
            matches!(s, RopeScaling::Yarn { factor, original_max_position_embeddings: 1024, .. } if factor == 4.0),
            "{s:?}"
        );
        // the two mscales (DeepSeek's), a given attention factor, no truncation
        let s = y(json!({"max_position_embeddings": 4096,
                         "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 0.707}}));
        let want = (0.1 * 40f64.ln() + 1.0) / (0.1 * 0.707 * 40f64.ln() + 1.0);
        assert!((s.attention_factor() - want).abs() < 1e-12, "{s:?}");
        let s =
            y(json!({"rope_scaling": {"rope_type": "yarn", "factor": 2, "attention_factor": 1.5, "truncate": false,
                                          "original_max_position_embeddings": 100, "beta_fast": 16}}));
        assert!(
            matches!(s, RopeScaling::Yarn { attention_factor, truncate: false, beta_fast, .. }
                         if attention_factor == 1.5 && beta_fast == 16.0),
            "{s:?}"
        );
        assert_eq!(parse(json!({"rope_scaling": s.to_hf()})).unwrap(), Some(s), "written back as read");
        assert!(parse(json!({"rope_scaling": {"rope_type": "yarn", "factor": 2}}))
            .unwrap_err()
            .to_string()
            .contains("needs original_max_position_embeddings"));
    }

    /// Llama 3's three bands: the shortest wavelengths kept, the longest divided by the factor,
    /// the ones between interpolated (strictly between the two); linear divides them all.
    #[test]
    fn llama3_keeps_short_wavelengths_scales_long_ones_and_interpolates_between() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        let (plain, scaled) = (inv_freq(16, 500000.0, None), inv_freq(16, 500000.0, Some(&s)));
        let mut bands = [0; 3];
        for (&p, &q) in plain.iter().zip(&scaled) {
            let wavelen = std::f32::consts::TAU / p;
            if wavelen < 16.0 {
                assert_eq!(q, p);
                bands[0] += 1;
            } else if wavelen > 64.0 {
                assert_eq!(q, p / 8.0);
                bands[2] += 1;
            } else {
                assert!(q < p && q > p / 8.0, "{p} → {q}");
                bands[1] += 1;
            }
        }
        assert!(bands.iter().all(|&b| b > 0), "every band is exercised: {bands:?}");
        let lin = inv_freq(16, 500000.0, Some(&RopeScaling::Linear { factor: 4.0 }));
        assert!(lin.iter().zip(&plain).all(|(&l, &p)| l == p / 4.0));
    }
}
