//! How a run turns a task's text into token ids and back: [`TextCodec`].
//!
//! A run trains with its model's own tokenizer. A fresh model, or a model directory holding
//! arbor's character tokenizer (or no `tokenizer.json` at all: a peer's copy of an arbor model),
//! uses the built-in [`CharTokenizer`]; a directory holding another `tokenizer.json` (a Qwen2 or
//! LLaMA checkpoint from the Hub) uses that tokenizer. Everything that encodes a prompt, decodes a
//! response or decides where a response ends goes through one codec, so that the supervised phase,
//! rollouts, rewards, tree branching, environments and evaluation agree on the ids.
//!
//! - **Prompt**: the task's prompt, put into `prompt_template` (`{prompt}` marks where) when the
//!   run gives one, then encoded as `transformers`' `tokenizer(text)` does: the character tokenizer
//!   puts `<bos>` first; an HF tokenizer adds what its `tokenizer.json` post-processor adds (LLaMA's
//!   `<|begin_of_text|>`, nothing for Qwen2). Special-token strings in the template (`<|im_start|>`)
//!   become their ids, so a chat model's format is written as text.
//! - **End of a response**: the tokenizer's `eos_token`, then every `eos_token_id` of the
//!   directory's `config.json` and `generation_config.json` (an instruct model stops at
//!   `<|im_end|>` and at `<|endoftext|>`). A supervised sequence ends with the first of them.
//! - **Response text** (what rewards read): the response's ids without those stops, decoded with
//!   special tokens skipped.

use super::{CharTokenizer, Tokenizer, BOS_ID, EOS_ID, PAD_ID, TOKENIZER_FILE};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The placeholder of `prompt_template` where the task's prompt goes.
pub const PROMPT_PLACEHOLDER: &str = "{prompt}";

/// Tokenizer files of other formats: a directory with one of them and no `tokenizer.json` cannot
/// be read (arbor reads HF fast tokenizers only).
const OTHER_FORMATS: [&str; 4] = ["tokenizer.model", "vocab.json", "merges.txt", "spiece.model"];

/// A run's tokenizer with its prompt template and the ids that end a response (module doc).
#[derive(Debug, Clone)]
pub struct TextCodec {
    tokenizer: Tokenizer,
    /// Text with one `{prompt}`; `None`: the prompt as it is.
    template: Option<String>,
    /// Ids that end a response, the end-of-sequence token first; never empty.
    stops: Vec<u32>,
}

impl Default for TextCodec {
    /// The built-in character tokenizer over its default alphabet, no template.
    fn default() -> Self {
        TextCodec::char(CharTokenizer::default())
    }
}

impl TextCodec {
    /// A character tokenizer: `<bos>` before a prompt, `<eos>` ends a response.
    pub fn char(tok: CharTokenizer) -> Self {
        TextCodec { tokenizer: Tokenizer::Char(tok), template: None, stops: vec![EOS_ID] }
    }

    /// The codec of a run whose model is loaded from `dir` (`None`: a fresh model), with the
    /// optional prompt template (see the module doc for which tokenizer it takes). Errors name the
    /// file: a tokenizer format arbor cannot read, a `tokenizer.json` the `tokenizers` crate refuses,
    /// an HF tokenizer with no end-of-sequence token anywhere.
    pub fn for_model(dir: Option<&Path>, template: Option<&str>) -> Result<Self> {
        let mut codec = match dir {
            None => TextCodec::default(),
            Some(dir) => Self::from_dir(dir)?,
        };
        if let (Some(t), Some(tok)) = (template, codec.as_char()) {
            if let Some((pos, c)) = tok.first_unknown(t) {
                return Err(Error::Invalid(format!(
                    "model.prompt_template: character {c:?} at position {pos} is not in the alphabet of arbor's \
                     character tokenizer, which encodes this run's prompts (the model is arbor's own, not one with \
                     a tokenizer.json of another kind)"
                )));
            }
        }
        codec.template = template.map(str::to_string);
        Ok(codec)
    }

    fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            // (a misspelt hf_dir would otherwise read as a directory without a tokenizer)
            let e = std::io::Error::new(std::io::ErrorKind::NotFound, "no such model directory");
            return Err(Error::io(dir, e));
        }
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            if let Some(f) = OTHER_FORMATS.iter().map(|f| dir.join(f)).find(|p| p.is_file()) {
                return Err(Error::Format {
                    path: f,
                    msg: "the model directory has a tokenizer in a format arbor does not read, and no \
                          tokenizer.json: save the tokenizer as a fast tokenizer (transformers' \
                          `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)` writes tokenizer.json)"
                        .into(),
                });
            }
            // a peer's copy of an arbor model (weights and config only)
            return Ok(TextCodec::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let theirs: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Format { path: path.clone(), msg: format!("not a tokenizer.json: {e}") })?;
        let ours = CharTokenizer::default();
        if theirs["model"]["vocab"] == ours.to_tokenizer_json()["model"]["vocab"] {
            return Ok(TextCodec::default());
        }
        let tokenizer = Tokenizer::load(&path)?;
        let mut stops: Vec<u32> = tokenizer.eos_id().into_iter().collect();
        for file in ["config.json", "generation_config.json"] {
            for id in eos_ids(&dir.join(file))? {
                if !stops.contains(&id) {
                    stops.push(id);
                }
            }
        }
        if stops.is_empty() {
            return Err(Error::Format {
                path,
                msg: "the tokenizer has no end-of-sequence token (no `eos_token` in tokenizer_config.json, no \
                      `eos_token_id` in config.json or generation_config.json): responses would never end"
                    .into(),
            });
        }
        Ok(TextCodec { tokenizer, template: None, stops })
    }

    /// The tokenizer (saved with every checkpoint).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The character tokenizer, when the run uses one.
    pub fn as_char(&self) -> Option<&CharTokenizer> {
        match &self.tokenizer {
            Tokenizer::Char(t) => Some(t),
            Tokenizer::Hf(_) => None,
        }
    }

    /// Number of ids the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    /// Ids that end a response, the end-of-sequence token first.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stops
    }

    /// The id that ends a supervised sequence.
    pub fn eos_id(&self) -> u32 {
        self.stops[0]
    }

    /// The id padding positions hold (they are masked out of every loss).
    pub fn pad_id(&self) -> u32 {
        match &self.tokenizer {
            Tokenizer::Char(_) => PAD_ID,
            Tokenizer::Hf(_) => self.tokenizer.pad_id().unwrap_or(self.stops[0]),
        }
    }

    /// The prompt in the run's template (the prompt itself without one).
    pub fn prompt_text(&self, prompt: &str) -> String {
        match &self.template {
            Some(t) => t.replacen(PROMPT_PLACEHOLDER, prompt, 1),
            None => prompt.to_string(),
        }
    }

    /// The ids a response is generated after (module doc).
    pub fn prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        let text = self.prompt_text(prompt);
        match &self.tokenizer {
            Tokenizer::Char(t) => {
                let mut ids = Vec::with_capacity(text.len() + 1);
                ids.push(BOS_ID);
                ids.extend(t.encode(&text)?);
                Ok(ids)
            }
            Tokenizer::Hf(t) => t
                .inner
                .encode(text.as_str(), true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::Invalid(format!("tokenizing prompt {text:?}: {e}"))),
        }
    }

    /// Plain text (an environment's observation, a reference solution) as ids: nothing added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    /// A supervised sequence: the prompt's ids, the solution's, the end-of-sequence id; with the
    /// index of the solution's first id.
    pub fn supervised(&self, prompt: &str, solution: &str) -> Result<(Vec<u32>, usize)> {
        let mut ids = self.prompt(prompt)?;
        let start = ids.len();
        ids.extend(self.encode(solution)?);
        ids.push(self.eos_id());
        Ok((ids, start))
    }

    /// The text of a response made of `parts` in order: its stop ids dropped, decoded as one text.
    pub fn response_text(&self, parts: &[&[u32]]) -> String {
        let ids: Vec<u32> = parts.iter().flat_map(|t| t.iter()).copied().filter(|t| !self.stops.contains(t)).collect();
        self.tokenizer.decode(&ids)
    }

    /// The text of one id, special tokens skipped (e.g. to find step separators).
    pub fn piece(&self, id: u32) -> String {
        self.tokenizer.decode(&[id])
    }

    /// How many ids [`TextCodec::prompt`] makes of `prompt`.
    pub fn prompt_len(&self, prompt: &str) -> Result<usize> {
        match &self.tokenizer {
            Tokenizer::Char(_) => Ok(1 + super::char_token_count(&self.prompt_text(prompt))),
            Tokenizer::Hf(_) => self.prompt(prompt).map(|ids| ids.len()),
        }
    }

    /// How many ids [`TextCodec::encode`] makes of `text`.
    pub fn text_len(&self, text: &str) -> Result<usize> {
        match &self.tokenizer {
            Tokenizer::Char(_) => Ok(super::char_token_count(text)),
            Tokenizer::Hf(_) => self.encode(text).map(|ids| ids.len()),
        }
    }

    /// At most how many ids [`TextCodec::prompt`] makes of a prompt of `bytes` bytes, without
    /// encoding it (`None` where no cheap bound is known): the character tokenizer makes at most one
    /// id per byte, plus `<bos>`.
    pub fn prompt_len_bound(&self, bytes: usize) -> Option<usize> {
        let extra = self.template.as_ref().map_or(0, |t| t.len());
        self.as_char().map(|_| bytes + extra + 1)
    }
}

/// The `eos_token_id` of a model's `config.json` / `generation_config.json` (a number or a list
/// of numbers, [`crate::model::config::token_ids`]); none when the file or the key is absent.
fn eos_ids(path: &Path) -> Result<Vec<u32>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let v: Value =
        serde_json::from_str(&text).map_err(|e| Error::Format { path: path.into(), msg: format!("not JSON: {e}") })?;
    crate::model::config::token_ids(&v, "eos_token_id", path)
}
