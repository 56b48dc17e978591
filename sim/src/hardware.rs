//! Hardware profiles: per-GPU datasheet figures and inference-engine constants, each with where its
//! value comes from (`[hardware] profile = "h800"`).
//!
//! A profile is the single place a constant of the decode model may be fitted: it is fitted once, on
//! one named target, and then used unchanged by every scenario and every scale that names the
//! profile. Keys a scenario writes explicitly win over the profile (and `arbor sim validate` shows
//! them as the scenario's own).

use anyhow::{bail, Result};
use serde::Serialize;

/// Where a constant's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A vendor datasheet figure (not fitted).
    Datasheet { note: &'static str },
    /// A published engine measurement or a documented engine default (not fitted).
    Engine { note: &'static str },
    /// A published measurement of the device (not fitted).
    Measured { note: &'static str },
    /// Fitted to a published figure. `scenario` and `policy` name the synchronous baseline whose
    /// absolute step time was matched; `case` names a validation case when the fit used a case's
    /// published value instead.
    /// `target` is the published figure (s for a baseline step time).
    Fitted { scenario: &'static str, policy: &'static str, case: Option<&'static str>, target: f64 },
}

impl Source {
    /// True for fitted constants.
    pub fn fitted(&self) -> bool {
        matches!(self, Source::Fitted { .. })
    }

    /// Short text for tables.
    pub fn describe(&self) -> String {
        match self {
            Source::Datasheet { note } => format!("no (datasheet: {note})"),
            Source::Engine { note } => format!("no (engine: {note})"),
            Source::Measured { note } => format!("no (measured: {note})"),
            Source::Fitted { scenario, policy, case: None, .. } => {
                format!("yes, on the synchronous baseline {scenario}/{policy}")
            }
            Source::Fitted { case: Some(c), .. } => format!("yes, on case {c}"),
        }
    }
}

/// One constant of a profile: the dotted scenario key it fills, its value and its source.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Constant {
    pub key: &'static str,
    pub value: f64,
    pub source: Source,
}

/// A named hardware profile: the GPU and node's datasheet constants, then the inference engine's
/// (shared by profiles of the same GPU generation).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Profile {
    pub name: &'static str,
    pub device: &'static [Constant],
    pub engine: &'static [Constant],
}

impl Profile {
    /// Every constant of the profile: the device's, then the engine's.
    pub fn constants(&self) -> impl Iterator<Item = &'static Constant> {
        self.device.iter().chain(self.engine.iter())
    }
}

const fn ds(key: &'static str, value: f64, note: &'static str) -> Constant {
    Constant { key, value, source: Source::Datasheet { note } }
}
const fn meas(key: &'static str, value: f64, note: &'static str) -> Constant {
    Constant { key, value, source: Source::Measured { note } }
}
const fn eng(key: &'static str, value: f64, note: &'static str) -> Constant {
    Constant { key, value, source: Source::Engine { note } }
}

/// The engine constants shared by the Hopper profiles (vLLM/SGLang class engines, bf16).
macro_rules! hopper_engine {
    () => {
        [
            eng("inference.bandwidth_efficiency", 0.7, "decode GEMV/attention kernels reach ~70 % of HBM peak"),
            eng("inference.decode_mfu", 0.5, "batched decode GEMMs reach ~50 % of dense peak"),
            eng("inference.attention_efficiency", 0.3, "paged decode attention reaches ~30 % of dense peak"),
            eng("inference.per_seq_overhead_us", 30.0, "scheduler, sampling and detokenisation per sequence per step"),
            eng("inference.allreduce_latency_us", 8.0, "NCCL all-reduce latency on NVLink, small messages"),
            eng("inference.prefill_mfu", 0.4, "chunked prefill"),
            Constant {
                key: "training.mfu",
                value: 0.3344,
                source: Source::Fitted {
                    scenario: "areal-14b",
                    policy: "async-eta4",
                    case: Some("areal_table1_14b_32nodes"),
                    target: 2.23,
                },
            },
            Constant {
                key: "inference.decode_overhead_ms",
                value: 8.8196,
                source: Source::Fitted {
                    scenario: "roll-flash-env-latency",
                    policy: "sync-lockstep",
                    case: None,
                    target: 892.0,
                },
            },
        ]
    };
}

const HOPPER_ENGINE: [Constant; 8] = hopper_engine!();
const H800: [Constant; 9] = [
    ds("hardware.hbm_tb_per_s", 3.35, "H800 SXM HBM3"),
    ds("hardware.peak_tflops", 989.0, "H800 SXM dense bf16"),
    ds("hardware.hbm_gb", 80.0, "H800 SXM"),
    ds("hardware.intra_node_gb_per_s", 200.0, "NVLink 400 GB/s bidirectional"),
    ds("hardware.link_gb_per_s", 25.0, "one 200 Gb/s InfiniBand NIC per GPU"),
    ds("hardware.pcie_gb_per_s", 25.0, "PCIe Gen5 x16, achieved host copies"),
    ds("hardware.allreduce_gb_per_s", 160.0, "NVLink 400 GB/s, NCCL bus bandwidth"),
    ds("hardware.gpus_per_node", 8.0, "HGX H800 node"),
    meas(
        "hardware.stream_gb_per_s",
        3000.0,
        "device-to-device copy / STREAM triad on Hopper HBM3 sustain ~3.0 TB/s, ~90 % of the 3.35 TB/s peak",
    ),
];
const H100: [Constant; 9] = [
    ds("hardware.hbm_tb_per_s", 3.35, "H100 SXM HBM3"),
    ds("hardware.peak_tflops", 989.0, "H100 SXM dense bf16"),
    ds("hardware.hbm_gb", 80.0, "H100 SXM"),
    ds("hardware.intra_node_gb_per_s", 450.0, "NVLink 900 GB/s bidirectional"),
    ds("hardware.link_gb_per_s", 50.0, "one 400 Gb/s InfiniBand NIC per GPU"),
    ds("hardware.pcie_gb_per_s", 25.0, "PCIe Gen5 x16, achieved host copies"),
    ds("hardware.allreduce_gb_per_s", 360.0, "NVLink 900 GB/s, NCCL bus bandwidth"),
    ds("hardware.gpus_per_node", 8.0, "HGX H100 node"),
    meas(
        "hardware.stream_gb_per_s",
        3000.0,
        "device-to-device copy / STREAM triad on Hopper HBM3 sustain ~3.0 TB/s, ~90 % of the 3.35 TB/s peak",
    ),
];

/// Built-in profiles.
pub const PROFILES: &[Profile] = &[
    Profile { name: "h800", device: &H800, engine: &HOPPER_ENGINE },
    Profile { name: "h100", device: &H100, engine: &HOPPER_ENGINE },
];

/// Look up a profile by name; the error lists the known ones.
pub fn profile(name: &str) -> Result<&'static Profile> {
    match PROFILES.iter().find(|p| p.name == name) {
        Some(p) => Ok(p),
        None => {
            let known: Vec<&str> = PROFILES.iter().map(|p| p.name).collect();
            bail!("hardware.profile = {name:?}: unknown profile (known: {})", known.join(", "))
        }
    }
}

/// True when `doc` (a parsed scenario document) spells the dotted `key` itself.
pub fn doc_has(doc: &toml::Table, key: &str) -> bool {
    let mut t = doc;
    let mut parts = key.split('.').peekable();
    while let Some(p) = parts.next() {
        match t.get(p) {
            Some(toml::Value::Table(inner)) if parts.peek().is_some() => t = inner,
            Some(_) if parts.peek().is_none() => return true,
            _ => return false,
        }
    }
    false
}

/// Fill every constant of `sc`'s profile that the document `doc` does not spell; returns the keys
/// filled. Errors name `hardware.profile` for an unknown profile.
pub fn apply_profile(sc: &mut crate::scenario::Scenario, doc: &toml::Table) -> Result<Vec<&'static str>> {
    let Some(name) = sc.hardware.profile.clone() else { return Ok(Vec::new()) };
    let p = profile(&name)?;
    let mut filled = Vec::new();
    for c in p.constants() {
        if doc_has(doc, c.key) {
            continue;
        }
        set_key(sc, c.key, c.value)?;
        filled.push(c.key);
    }
    Ok(filled)
}

/// Set the scenario constant named by the dotted `key` (a key profiles may fill).
pub fn set_key(sc: &mut crate::scenario::Scenario, key: &str, v: f64) -> Result<()> {
    match key {
        "hardware.hbm_tb_per_s" => sc.hardware.hbm_tb_per_s = v,
        "hardware.peak_tflops" => sc.hardware.peak_tflops = v,
        "hardware.hbm_gb" => sc.hardware.hbm_gb = v,
        "hardware.intra_node_gb_per_s" => sc.hardware.intra_node_gb_per_s = v,
        "hardware.link_gb_per_s" => sc.hardware.link_gb_per_s = v,
        "hardware.pcie_gb_per_s" => sc.hardware.pcie_gb_per_s = v,
        "hardware.allreduce_gb_per_s" => sc.hardware.allreduce_gb_per_s = v,
        "hardware.gpus_per_node" => sc.hardware.gpus_per_node = Some(v as u32),
        "hardware.stream_gb_per_s" => sc.hardware.stream_gb_per_s = Some(v),
        "inference.bandwidth_efficiency" => sc.inference.bandwidth_efficiency = v,
        "inference.decode_mfu" => sc.inference.decode_mfu = Some(v),
        "inference.attention_efficiency" => sc.inference.attention_efficiency = Some(v),
        "inference.per_seq_overhead_us" => sc.inference.per_seq_overhead_us = v,
        "inference.allreduce_latency_us" => sc.inference.allreduce_latency_us = v,
        "inference.prefill_mfu" => sc.inference.prefill_mfu = v,
        "inference.decode_overhead_ms" => sc.inference.decode_overhead_ms = v,
        "training.mfu" => sc.training.mfu = v,
        other => bail!("profile constant {other}: not a key profiles may set"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_key_is_unique_and_finite() {
        for p in PROFILES {
            let all: Vec<&Constant> = p.constants().collect();
            assert_eq!(all.len(), 17, "{}", p.name);
            for (i, c) in all.iter().enumerate() {
                assert!(c.value.is_finite() && c.value > 0.0, "{}: {}", p.name, c.key);
                assert!(all[..i].iter().all(|d| d.key != c.key), "{}: {} twice", p.name, c.key);
            }
        }
        assert!(profile("tpu").is_err());
    }
}
