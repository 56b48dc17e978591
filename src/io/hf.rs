//! Hugging Face model directories: `config.json` + `model.safetensors` (or sharded
//! `model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`), read into and written from
//! arbor's flat [`Params`].

use super::atomic::StagedFiles;
use super::dtype::{decode_into, StoreDtype};
use super::tensor_file::parse_header;
use crate::error::{Error, Result};
use crate::model::{ModelConfig, ParamSpec, Params};
use safetensors::{Dtype, SafeTensors, View};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// File name of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of the shard index (`weight_map`: tensor name → shard file).
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// File name of the model configuration.
pub const CONFIG_FILE: &str = "config.json";

/// How [`save_hf_dir`] stores the weights.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Element type of the stored tensors (f32 is bit-exact; bf16/f16 round to nearest even).
    pub dtype: StoreDtype,
    /// Split into shards of at most this many bytes of tensor data (a larger tensor gets a shard of its own);
    /// `None` writes one `model.safetensors`.
    pub max_shard_bytes: Option<u64>,
    /// An original `config.json` whose keys are kept unless arbor sets them (e.g. `sliding_window`).
    pub base_config: Option<Value>,
}

/// Everything [`load_hf_dir_with_report`] found in a model directory.
#[derive(Debug, Clone)]
pub struct LoadedCheckpoint {
    /// The model configuration from `config.json`.
    pub config: ModelConfig,
    /// The weights, converted to f32.
    pub params: Params,
    /// Tensors present in the files but not part of the layout (ignored), e.g. `rotary_emb.inv_freq`
    /// (see [`may_be_ignored`]; any other tensor of a decoder layer is refused).
    pub ignored: Vec<String>,
    /// The safetensors files read, in order.
    pub files: Vec<PathBuf>,
    /// Stored dtypes and how many tensors had each, e.g. `{"BF16": 290}`.
    pub dtypes: BTreeMap<String, usize>,
}

/// What [`save_hf_dir`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveSummary {
    /// Safetensors file names written, in order.
    pub files: Vec<String>,
    /// Bytes of tensor data written (the index's `total_size`).
    pub tensor_bytes: u64,
    /// Bytes of all files written, headers and config.json included.
    pub file_bytes: u64,
}

/// Read an HF model directory: `config.json`, then `model.safetensors` or the sharded index and its shards.
pub fn load_hf_dir(dir: &Path) -> Result<(ModelConfig, Params)> {
    let loaded = load_hf_dir_with_report(dir)?;
    Ok((loaded.config, loaded.params))
}

/// Like [`load_hf_dir`], also reporting ignored tensors, files and stored dtypes.
pub fn load_hf_dir_with_report(dir: &Path) -> Result<LoadedCheckpoint> {
    let config = ModelConfig::from_hf_file(&dir.join(CONFIG_FILE))?;
    // Which file holds each tensor (the index's weight_map, or everything in the single file).
    let (files, location): (Vec<PathBuf>, Option<HashMap<String, PathBuf>>) = if dir.join(SINGLE_FILE).is_file() {
        (vec![dir.join(SINGLE_FILE)], None)
    } else if dir.join(INDEX_FILE).is_file() {
        let map = read_index(&dir.join(INDEX_FILE))?;
        let files: BTreeSet<PathBuf> = map.values().cloned().collect();
        (files.into_iter().collect(), Some(map))
    } else {
        let hint = if dir.join("pytorch_model.bin").exists() {
            " (found pytorch_model.bin: convert it to safetensors first; pickle files are not read)"
        } else {
            ""
        };
        let msg = format!("no {SINGLE_FILE} or {INDEX_FILE} found{hint}");
        return Err(Error::path(dir, std::io::ErrorKind::NotFound, msg));
    };
    // every parameter is stored in at least 2 bytes (f16/bf16): a config.json whose sizes the
    // weights files cannot hold, and whose f32 parameters would take more than 1 GiB, is refused
    // before they are allocated (smaller ones get the reader's precise per-tensor error below)
    let mut stored = 0u64;
    for file in &files {
        stored += std::fs::metadata(file).map_err(|e| Error::io(file, e))?.len();
    }
    let need = (config.num_params() as u64).saturating_mul(2);
    if need > stored && need.saturating_mul(2) > 1 << 30 {
        return Err(Error::Config {
            file: dir.join(CONFIG_FILE),
            key: "hidden_size".into(),
            msg: format!(
                "the dimensions make {} parameters (at least {need} bytes of weights), but the weights files ({}) hold {stored} bytes",
                config.num_params(),
                files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let mut params = Params::zeros(&config);
    if let Some(map) = &location {
        for spec in &params.layout.specs {
            if !map.contains_key(&spec.name) {
                return Err(checkpoint_err(&dir.join(INDEX_FILE), &spec.name, "missing from weight_map"));
            }
        }
    }
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut ignored = Vec::new();
    let mut dtypes = BTreeMap::new();
    for file in &files {
        let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| refused(file, &bytes, &e.to_string()))?;
        let mut names: Vec<&str> = st.names().into_iter().collect();
        names.sort_unstable();
        for name in names {
            let Some(spec) = params.layout.get(name).cloned() else {
                if !may_be_ignored(name) {
                    let msg = "a weight of a decoder layer that arbor's model for this config.json does not have \
                               (e.g. an o_proj or MLP bias): loading without it would compute other logits";
                    return Err(checkpoint_err(file, name, msg));
                }
                ignored.push(name.to_string());
                continue;
            };
            if location.as_ref().is_some_and(|m| m.get(name) != Some(file)) {
                continue; // stale copy in a shard the index does not point to
            }
            let view = st.tensor(name).map_err(|e| checkpoint_err(file, name, &e.to_string()))?;
            copy_tensor(file, &spec, view.dtype(), view.shape(), view.data(), &mut params)?;
            *dtypes.entry(view.dtype().to_string()).or_insert(0) += 1;
            found.insert(spec.name);
        }
    }
    if let Some(spec) = params.layout.specs.iter().find(|s| !found.contains(&s.name)) {
        let file = match &location {
            Some(map) => map.get(&spec.name).cloned().unwrap_or_else(|| dir.join(INDEX_FILE)),
            None => files[0].clone(),
        };
        let msg = format!("missing (expected shape {:?})", spec.shape);
        return Err(checkpoint_err(&file, &spec.name, &msg));
    }
    Ok(LoadedCheckpoint { config, params, ignored, files, dtypes })
}

/// Whether a stored tensor that is not in arbor's layout may be left out: one outside the decoder
/// layers (a tied checkpoint's `lm_head.weight`, ...), or a RoPE table older checkpoints store per
/// layer (`model.layers.N.self_attn.rotary_emb.inv_freq`, `cos_cached`, `sin_cached`: arbor computes
/// its own). Any other tensor of a layer is a weight the model would be computed without.
pub fn may_be_ignored(name: &str) -> bool {
    let Some(in_layer) = name.strip_prefix("model.layers.") else {
        return true;
    };
    ["inv_freq", "cos_cached", "sin_cached"]
        .iter()
        .any(|buffer| in_layer.strip_suffix(buffer).is_some_and(|rest| rest.ends_with(".rotary_emb.")))
}

/// The error for a safetensors file the `safetensors` crate refused with `msg`: what arbor's own
/// header reader finds wrong (the same words `arbor inspect` prints), else the crate's message.
fn refused(file: &Path, bytes: &[u8], msg: &str) -> Error {
    match parse_header(file, bytes) {
        Err(e) => e,
        Ok(h) => match h.load_problems().into_iter().next() {
            Some((tensor, why)) => checkpoint_err(file, &tensor, &why),
            None => Error::format(file, format!("not a valid safetensors file: {msg}")),
        },
    }
}

fn checkpoint_err(file: &Path, tensor: &str, msg: &str) -> Error {
    Error::Checkpoint { file: file.to_path_buf(), tensor: tensor.to_string(), msg: msg.to_string() }
}

/// Check shape and dtype of one stored tensor and convert it into its slot of `params`.
fn copy_tensor(
    file: &Path,
    spec: &ParamSpec,
    dtype: Dtype,
    shape: &[usize],
    data: &[u8],
    params: &mut Params,
) -> Result<()> {
    if shape != spec.shape.as_slice() {
        let msg = format!("shape mismatch: expected {:?}, found {:?}", spec.shape, shape);
        return Err(checkpoint_err(file, &spec.name, &msg));
    }
    let out = &mut params.data[spec.range()];
    decode_into(dtype, data, out).map_err(|msg| checkpoint_err(file, &spec.name, &msg))
}

/// Parse `model.safetensors.index.json` into tensor name → shard path (next to the index).
pub fn read_index(path: &Path) -> Result<HashMap<String, PathBuf>> {
    let bad = |key: &str, msg: String| Error::Config { file: path.into(), key: key.into(), msg };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad("<json>", format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("weight_map", "missing or not an object of tensor name → file".into()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = HashMap::with_capacity(map.len());
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| bad("weight_map", format!("{name}: expected a file name")))?;
        let rel = Path::new(file);
        let plain = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(bad("weight_map", format!("{name}: shard path {file:?} must stay inside the directory")));
        }
        out.insert(name.clone(), dir.join(rel));
    }
    Ok(out)
}

/// One tensor to serialize: f32 values encoded to the store dtype when the writer asks for the bytes.
struct OutTensor<'a> {
    values: &'a [f32],
    shape: &'a [usize],
    dtype: StoreDtype,
}

impl View for OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors_dtype()
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        self.dtype.encode(self.values)
    }
    fn data_len(&self) -> usize {
        self.values.len() * self.dtype.size_bytes()
    }
}

/// Group tensors (in layout order) into shards of at most `max` bytes; `None` → one shard.
fn plan_shards(specs: &[ParamSpec], dtype: StoreDtype, max: Option<u64>) -> Vec<Vec<&ParamSpec>> {
    let mut shards: Vec<Vec<&ParamSpec>> = vec![Vec::new()];
    let mut bytes = 0u64;
    for spec in specs {
        let n = (spec.numel() * dtype.size_bytes()) as u64;
        let full = max.is_some_and(|m| bytes + n > m);
        if full && !shards.last().is_some_and(Vec::is_empty) {
            shards.push(Vec::new());
            bytes = 0;
        }
        bytes += n;
        if let Some(last) = shards.last_mut() {
            last.push(spec);
        }
    }
    shards
}

/// Whether `name` is a safetensors file of a (possibly sharded) HF checkpoint written by anyone.
fn is_model_file(name: &str) -> bool {
    name == SINGLE_FILE
        || name == INDEX_FILE
        || (name.starts_with("model-") && name.contains("-of-") && name.ends_with(".safetensors"))
}

/// Write `config.json` and the weights as an HF model directory that transformers loads.
///
/// All files are staged under temporary names and renamed into place only once every one was written,
/// so a failure leaves the directory as it was. Stale checkpoint files of an earlier save
/// (`model.safetensors` vs. shards) are removed afterwards so loaders cannot pick up old weights.
pub fn save_hf_dir(dir: &Path, cfg: &ModelConfig, params: &Params, opts: &SaveOptions) -> Result<SaveSummary> {
    if params.data.len() != params.layout.total() {
        return Err(Error::shape(
            format!("save {}", dir.display()),
            format!("params hold {} values but the layout needs {}", params.data.len(), params.layout.total()),
        ));
    }
    let expected = crate::model::ParamLayout::new(cfg);
    if expected.specs != params.layout.specs {
        return Err(Error::shape(format!("save {}", dir.display()), "params do not have the layout of the config"));
    }
    let mut staged = StagedFiles::new(dir)?;
    let shards = plan_shards(&params.layout.specs, opts.dtype, opts.max_shard_bytes);
    let n = shards.len();
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let mut summary = SaveSummary { files: Vec::new(), tensor_bytes: 0, file_bytes: 0 };
    let mut weight_map = Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = if n == 1 { SINGLE_FILE.to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) };
        let tensors = shard.iter().map(|s| {
            let t = OutTensor { values: &params.data[s.range()], shape: &s.shape, dtype: opts.dtype };
            summary.tensor_bytes += t.data_len() as u64;
            weight_map.insert(s.name.clone(), json!(name));
            (s.name.as_str(), t)
        });
        let tmp = staged.temp_path(&name);
        safetensors::serialize_to_file(tensors.collect::<Vec<_>>(), Some(metadata.clone()), &tmp).map_err(|e| {
            Error::io(dir.join(&name), std::io::Error::other(format!("writing safetensors failed: {e}")))
        })?;
        summary.file_bytes += std::fs::metadata(&tmp).map_err(|e| Error::io(&tmp, e))?.len();
        summary.files.push(name);
    }
    if n > 1 {
        let index = json!({"metadata": {"total_size": summary.tensor_bytes}, "weight_map": weight_map});
        let text = pretty(&index)?;
        summary.file_bytes += text.len() as u64;
        staged.write(INDEX_FILE, text.as_bytes())?;
    }
    let config = pretty(&config_json(cfg, opts))?;
    summary.file_bytes += config.len() as u64;
    staged.write(CONFIG_FILE, config.as_bytes())?;
    staged.commit()?;
    remove_stale_model_files(dir, &summary.files, n > 1)?;
    Ok(summary)
}

/// The `config.json` to write: the base config's keys, overridden by arbor's, with `torch_dtype`/`dtype` set.
fn config_json(cfg: &ModelConfig, opts: &SaveOptions) -> Value {
    let mut out = match &opts.base_config {
        Some(Value::Object(base)) => base.clone(),
        _ => Map::new(),
    };
    if let Value::Object(ours) = cfg.to_hf_json() {
        out.extend(ours);
    }
    // transformers < 4.56 reads `torch_dtype`, later versions `dtype`; both are written (as transformers 5 does).
    out.insert("torch_dtype".into(), json!(opts.dtype.torch_name()));
    out.insert("dtype".into(), json!(opts.dtype.torch_name()));
    Value::Object(out)
}

fn pretty(v: &Value) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(format!("serializing JSON: {e}")))
}

/// Delete checkpoint files in `dir` that the save just completed did not write.
fn remove_stale_model_files(dir: &Path, written: &[String], sharded: bool) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = written.contains(&name) || (sharded && name == INDEX_FILE);
        if is_model_file(&name) && !ours {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, n: usize) -> ParamSpec {
        ParamSpec { name: name.into(), shape: vec![n], offset: 0, decay: false }
    }

    #[test]
    fn shards_respect_the_limit_and_oversized_tensors_stand_alone() {
        let specs = [spec("a", 10), spec("b", 10), spec("c", 100), spec("d", 5)];
        let plan = plan_shards(&specs, StoreDtype::F32, Some(80));
        let names: Vec<Vec<&str>> = plan.iter().map(|s| s.iter().map(|p| p.name.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
        assert_eq!(plan_shards(&specs, StoreDtype::F32, None).len(), 1);
    }

    /// Write a tiny Llama (config.json + model.safetensors of zeros) with `extra` tensors added.
    fn llama_dir_with(dir: &Path, extra: &[(&str, usize)]) {
        let cfg = ModelConfig::from_hf_json(
            &json!({"model_type": "llama", "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "vocab_size": 10, "max_position_embeddings": 16,
                    "tie_word_embeddings": true}),
            Path::new("test.json"),
        )
        .unwrap();
        std::fs::write(dir.join(CONFIG_FILE), cfg.to_hf_json().to_string()).unwrap();
        let params = Params::zeros(&cfg);
        let zeros = vec![0.0f32; 64];
        let shapes: Vec<Vec<usize>> = extra.iter().map(|&(_, n)| vec![n]).collect();
        let mut tensors: Vec<(&str, OutTensor)> = params
            .layout
            .specs
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    OutTensor { values: &params.data[s.range()], shape: &s.shape, dtype: StoreDtype::F32 },
                )
            })
            .collect();
        for (&(name, n), shape) in extra.iter().zip(&shapes) {
            tensors.push((name, OutTensor { values: &zeros[..n], shape, dtype: StoreDtype::F32 }));
        }
        safetensors::serialize_to_file(tensors, None, &dir.join(SINGLE_FILE)).unwrap();
    }

    /// A per-layer tensor arbor's layout has no place for (here a Llama `attention_bias = true`
    /// checkpoint's o_proj bias) is refused by file and tensor, not dropped; the RoPE tables old
    /// checkpoints store per layer, and a tied checkpoint's lm_head, are still ignored.
    #[test]
    fn a_layer_weight_outside_the_layout_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let rope = [
            ("lm_head.weight", 8),
            ("model.layers.0.self_attn.rotary_emb.inv_freq", 2),
            ("model.layers.1.self_attn.rotary_emb.cos_cached", 4),
            ("model.layers.1.self_attn.rotary_emb.sin_cached", 4),
        ];
        llama_dir_with(dir.path(), &rope);
        let loaded = load_hf_dir_with_report(dir.path()).unwrap();
        assert_eq!(loaded.ignored, rope.map(|(n, _)| n));
        for name in
            ["model.layers.0.self_attn.o_proj.bias", "model.layers.1.mlp.down_proj.bias", "model.layers.0.rotary_emb"]
        {
            let dir = tempfile::tempdir().unwrap();
            llama_dir_with(dir.path(), &[(name, 8), ("model.layers.0.self_attn.rotary_emb.inv_freq", 2)]);
            let e = load_hf_dir(dir.path()).unwrap_err().to_string();
            let file = dir.path().join(SINGLE_FILE).display().to_string();
            assert!(e.contains(&format!("`{name}`")) && e.contains(&file), "{name}: {e}");
        }
    }

    #[test]
    fn model_file_names_are_recognised() {
        assert!(is_model_file("model-00001-of-00003.safetensors"));
        assert!(is_model_file(INDEX_FILE));
        assert!(!is_model_file("tokenizer.json"));
    }
}
