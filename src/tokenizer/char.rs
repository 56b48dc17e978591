//! arbor's built-in character tokenizer for synthetic tasks: `<pad>`=0, `<bos>`=1, `<eos>`=2, then one
//! token per character of an alphabet. It is also expressible as an HF `tokenizer.json` (WordLevel model over
//! the characters, a pre-tokenizer isolating every character, a Fuse decoder) that encodes identically.

use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Printable ASCII (space through `~`: digits, operators, punctuation, letters) plus newline and tab: 97 characters.
pub const DEFAULT_ALPHABET: &str = concat!(
    "0123456789",
    "+-*/=()<>[]{}",
    " \n\t",
    ".,:;!?'\"",
    "_%^&|~#@$`\\",
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
);

/// The special tokens in id order: padding, beginning and end of sequence.
pub const SPECIAL_TOKENS: [&str; 3] = ["<pad>", "<bos>", "<eos>"];
/// Id of `<pad>`.
pub const PAD_ID: u32 = 0;
/// Id of `<bos>`.
pub const BOS_ID: u32 = 1;
/// Id of `<eos>`.
pub const EOS_ID: u32 = 2;

/// Pre-tokenizer pattern: any single character, newline included (valid in both Oniguruma and fancy-regex).
const ONE_CHAR_REGEX: &str = r"[\s\S]";

/// Character-level tokenizer: id = 3 + index of the character in the alphabet.
#[derive(Debug, Clone, PartialEq)]
pub struct CharTokenizer {
    alphabet: Vec<char>,
    ids: HashMap<char, u32>,
}

impl Default for CharTokenizer {
    /// The tokenizer over [`DEFAULT_ALPHABET`].
    fn default() -> Self {
        Self::new(DEFAULT_ALPHABET).unwrap_or_else(|_| unreachable!("DEFAULT_ALPHABET has no duplicates"))
    }
}

impl CharTokenizer {
    /// A tokenizer over the characters of `alphabet`, in order; a repeated character is an error.
    pub fn new(alphabet: &str) -> Result<Self> {
        let mut ids = HashMap::new();
        let chars: Vec<char> = alphabet.chars().collect();
        for (i, &c) in chars.iter().enumerate() {
            if ids.insert(c, (i + SPECIAL_TOKENS.len()) as u32).is_some() {
                return Err(Error::Invalid(format!("tokenizer alphabet repeats character {c:?} (at position {i})")));
            }
        }
        Ok(CharTokenizer { alphabet: chars, ids })
    }

    /// The alphabet, in id order.
    pub fn alphabet(&self) -> String {
        self.alphabet.iter().collect()
    }

    /// Number of ids: 3 specials + alphabet length.
    pub fn vocab_size(&self) -> usize {
        SPECIAL_TOKENS.len() + self.alphabet.len()
    }

    /// Encode text: the literal strings `<pad>`, `<bos>`, `<eos>` become their special ids (as HF does for
    /// special added tokens); every other character must be in the alphabet.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len());
        self.scan(text, |id| out.push(id)).map_err(|(pos, c)| {
            Error::Invalid(format!("character {c:?} at position {pos} of {text:?} is not in the tokenizer's alphabet"))
        })?;
        Ok(out)
    }

    /// The first character of `text` that [`CharTokenizer::encode`] refuses, with its character
    /// position (0-based); `None` when all of `text` encodes.
    pub fn first_unknown(&self, text: &str) -> Option<(usize, char)> {
        self.scan(text, |_| {}).err()
    }

    /// Walk `text` as `encode` does, handing each id to `emit`; stops at the first character
    /// outside the alphabet and returns (character position, character).
    fn scan(&self, text: &str, mut emit: impl FnMut(u32)) -> std::result::Result<(), (usize, char)> {
        let mut rest = text;
        let mut pos = 0usize; // character position, for errors
        while let Some(c) = rest.chars().next() {
            if let Some(id) = SPECIAL_TOKENS.iter().position(|s| rest.starts_with(s)) {
                emit(id as u32);
                let n = SPECIAL_TOKENS[id].len();
                rest = &rest[n..];
                pos += n;
                continue;
            }
            emit(*self.ids.get(&c).ok_or((pos, c))?);
            rest = &rest[c.len_utf8()..];
            pos += 1;
        }
        Ok(())
    }

    /// The text of one id: its character, the special token's name, or "" for an id out of range.
    pub fn token_text(&self, id: u32) -> String {
        let i = id as usize;
        match SPECIAL_TOKENS.get(i) {
            Some(s) => s.to_string(),
            None => self.alphabet.get(i - SPECIAL_TOKENS.len()).map(|c| c.to_string()).unwrap_or_default(),
        }
    }

    /// Decode ids to text, skipping special tokens; an id out of range becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter(|&&id| id as usize >= SPECIAL_TOKENS.len())
            .map(|&id| self.alphabet.get(id as usize - SPECIAL_TOKENS.len()).copied().unwrap_or('\u{FFFD}'))
            .collect()
    }

    /// The HF `tokenizer.json` contents for this tokenizer.
    pub fn to_tokenizer_json(&self) -> Value {
        let mut vocab = Map::new();
        for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
            vocab.insert(s.to_string(), json!(i));
        }
        for (i, c) in self.alphabet.iter().enumerate() {
            vocab.insert(c.to_string(), json!(i + SPECIAL_TOKENS.len()));
        }
        let added: Vec<Value> = SPECIAL_TOKENS
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": true})
            })
            .collect();
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {
                "type": "Split", "pattern": {"Regex": ONE_CHAR_REGEX}, "behavior": "Isolated", "invert": false
            },
            "post_processor": null,
            "decoder": {"type": "Fuse"},
            // No `<unk>` in the vocabulary: an unknown character is an error, as in `encode`.
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
        })
    }

    /// `tokenizer_config.json` for transformers' `AutoTokenizer` (a `PreTrainedTokenizerFast`).
    pub fn tokenizer_config_json(&self) -> Value {
        let decoder: Map<String, Value> = SPECIAL_TOKENS
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let tok = json!({"content": s, "single_word": false, "lstrip": false, "rstrip": false,
                                 "normalized": false, "special": true});
                (i.to_string(), tok)
            })
            .collect();
        json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": decoder,
            "pad_token": SPECIAL_TOKENS[PAD_ID as usize],
            "bos_token": SPECIAL_TOKENS[BOS_ID as usize],
            "eos_token": SPECIAL_TOKENS[EOS_ID as usize],
            "add_bos_token": false,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 1_000_000_000_u64,
        })
    }

    /// `special_tokens_map.json` naming the pad/bos/eos tokens.
    pub fn special_tokens_map_json(&self) -> Value {
        json!({
            "pad_token": SPECIAL_TOKENS[PAD_ID as usize],
            "bos_token": SPECIAL_TOKENS[BOS_ID as usize],
            "eos_token": SPECIAL_TOKENS[EOS_ID as usize],
        })
    }
}

/// The number of tokens [`CharTokenizer::encode`] makes of `text` (for text
/// in its alphabet): one per character, except that a literal special token (`<pad>`, `<bos>`,
/// `<eos>`) is one token. Allocates nothing.
pub fn char_token_count(text: &str) -> usize {
    // Every special token starts with '<' and has no other '<' (a test checks it), so occurrences
    // never overlap and the tokenizer's left-to-right scan takes each one whole: it saves
    // `len - 1` tokens per occurrence. Most texts have no '<' at all.
    let saved: usize = text
        .match_indices('<')
        .filter_map(|(at, _)| SPECIAL_TOKENS.iter().find(|s| text[at..].starts_with(*s)))
        .map(|s| s.len() - 1)
        .sum();
    text.chars().count() - saved
}
