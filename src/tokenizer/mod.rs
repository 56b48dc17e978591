//! Tokenizers: an HF `tokenizer.json` loaded with the `tokenizers` crate, or arbor's built-in
//! [`CharTokenizer`] for synthetic tasks (which is saved as an equivalent `tokenizer.json`).

pub mod char;
pub mod codec;

pub use self::char::{char_token_count, CharTokenizer, BOS_ID, DEFAULT_ALPHABET, EOS_ID, PAD_ID, SPECIAL_TOKENS};
pub use self::codec::TextCodec;

use crate::error::{Error, Result};
use crate::io::atomic::StagedFiles;
use serde_json::Value;
use std::path::Path;
use std::str::FromStr;

/// File name of an HF fast tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// File name of the transformers tokenizer settings (special tokens, class).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// File name of the special-token map.
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";

/// A tokenizer loaded from an HF `tokenizer.json`, with its special-token ids.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    /// The `tokenizers` crate object.
    pub inner: tokenizers::Tokenizer,
    /// `tokenizer_config.json` next to the file, kept to be written back verbatim.
    pub config: Option<Value>,
    /// `special_tokens_map.json` next to the file, kept to be written back verbatim.
    pub special_map: Option<Value>,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
}

/// A text ↔ token-id mapping.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// arbor's character tokenizer.
    Char(CharTokenizer),
    /// An HF fast tokenizer (`tokenizer.json`).
    Hf(Box<HfTokenizer>),
}

impl From<CharTokenizer> for Tokenizer {
    fn from(t: CharTokenizer) -> Self {
        Tokenizer::Char(t)
    }
}

fn json_file(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| Error::Config {
            file: path.into(),
            key: "<json>".into(),
            msg: format!("not valid JSON: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A special token's text from `tokenizer_config.json` / `special_tokens_map.json` (string or `{"content": ..}`).
fn special_text(cfgs: &[&Value], key: &str) -> Option<String> {
    cfgs.iter().find_map(|c| match c.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    })
}

impl Tokenizer {
    /// Load an HF `tokenizer.json`; special tokens come from `tokenizer_config.json` or
    /// `special_tokens_map.json` in the same directory when present. The file's own truncation and
    /// padding are switched off: a prompt or a solution is encoded whole (the run's context checks
    /// decide what fits), never cut or padded to a length the file names.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut inner = tokenizers::Tokenizer::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
        inner
            .with_truncation(None)
            .map_err(|e| Error::format(path, format!("switching off its truncation: {e}")))?
            .with_padding(None);
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = json_file(&dir.join(TOKENIZER_CONFIG_FILE))?;
        let map = json_file(&dir.join(SPECIAL_TOKENS_MAP_FILE))?;
        let cfgs: Vec<&Value> = config.iter().chain(map.iter()).collect();
        let id = |key: &str, fallbacks: &[&str]| -> Option<u32> {
            match special_text(&cfgs, key) {
                Some(t) => inner.token_to_id(&t),
                None => fallbacks.iter().find_map(|t| inner.token_to_id(t)),
            }
        };
        let bos = id("bos_token", &["<bos>", "<s>", "<|begin_of_text|>"]);
        let eos = id("eos_token", &["<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>"]);
        let pad = id("pad_token", &["<pad>"]);
        Ok(Tokenizer::Hf(Box::new(HfTokenizer { inner, config, special_map: map, bos, eos, pad })))
    }

    /// Load `tokenizer.json` from a model directory; `Ok(None)` when the directory has none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(TOKENIZER_FILE);
        if path.is_file() {
            Self::load(&path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Encode text to ids (no special tokens are added; literal special-token strings map to their ids).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Char(t) => t.encode(text),
            Tokenizer::Hf(t) => t
                .inner
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::Invalid(format!("tokenizing {text:?}: {e}"))),
        }
    }

    /// Decode ids to text, skipping special tokens (undecodable ids become U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Char(t) => t.decode(ids),
            Tokenizer::Hf(t) => t.inner.decode(ids, true).unwrap_or_else(|_| "\u{FFFD}".into()),
        }
    }

    /// The text one id stands for (specials by name; "" for an unknown id), e.g. to split steps at "\n".
    pub fn token_text(&self, id: u32) -> String {
        match self {
            Tokenizer::Char(t) => t.token_text(id),
            Tokenizer::Hf(t) => t.inner.decode(&[id], false).unwrap_or_default(),
        }
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char(t) => t.vocab_size(),
            Tokenizer::Hf(t) => t.inner.get_vocab_size(true),
        }
    }

    /// End-of-sequence id, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Char(_) => Some(EOS_ID),
            Tokenizer::Hf(t) => t.eos,
        }
    }

    /// Beginning-of-sequence id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Char(_) => Some(BOS_ID),
            Tokenizer::Hf(t) => t.bos,
        }
    }

    /// Padding id, if the tokenizer has one.
    pub fn pad_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Char(_) => Some(PAD_ID),
            Tokenizer::Hf(t) => t.pad,
        }
    }

    /// The `tokenizer.json` text.
    pub fn to_tokenizer_json(&self) -> Result<String> {
        let text = match self {
            Tokenizer::Char(t) => serde_json::to_string_pretty(&t.to_tokenizer_json()).map_err(|e| e.to_string()),
            Tokenizer::Hf(t) => t.inner.to_string(true).map_err(|e| e.to_string()),
        };
        text.map_err(|e| Error::Invalid(format!("serializing tokenizer.json: {e}")))
    }

    /// Write `tokenizer.json` (+ `tokenizer_config.json`, and for the char tokenizer `special_tokens_map.json`)
    /// into `dir`, atomically.
    pub fn save_to_dir(&self, dir: &Path) -> Result<()> {
        let json = |v: &Value| {
            serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(format!("serializing tokenizer files: {e}")))
        };
        let mut staged = StagedFiles::new(dir)?;
        staged.write(TOKENIZER_FILE, self.to_tokenizer_json()?.as_bytes())?;
        match self {
            Tokenizer::Char(t) => {
                staged.write(TOKENIZER_CONFIG_FILE, json(&t.tokenizer_config_json())?.as_bytes())?;
                staged.write(SPECIAL_TOKENS_MAP_FILE, json(&t.special_tokens_map_json())?.as_bytes())?;
            }
            Tokenizer::Hf(t) => {
                if let Some(map) = &t.special_map {
                    staged.write(SPECIAL_TOKENS_MAP_FILE, json(map)?.as_bytes())?;
                }
                if let Some(cfg) = &t.config {
                    staged.write(TOKENIZER_CONFIG_FILE, json(cfg)?.as_bytes())?;
                } else {
                    let name = |id: Option<u32>| id.and_then(|i| t.inner.id_to_token(i));
                    let cfg = serde_json::json!({
                        "tokenizer_class": "PreTrainedTokenizerFast",
                        "bos_token": name(t.bos), "eos_token": name(t.eos), "pad_token": name(t.pad),
                    });
                    staged.write(TOKENIZER_CONFIG_FILE, json(&cfg)?.as_bytes())?;
                }
            }
        }
        staged.commit()
    }
}

/// Write a tokenizer's files into a model directory (same as [`Tokenizer::save_to_dir`]).
pub fn save_tokenizer(dir: &Path, tokenizer: &Tokenizer) -> Result<()> {
    tokenizer.save_to_dir(dir)
}
