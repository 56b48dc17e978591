//! Tokenizers: the built-in character tokenizer, and its `tokenizer.json` encoding identically when loaded
//! back through the HF `tokenizers` crate.

use arbor::tokenizer::{CharTokenizer, Tokenizer, BOS_ID, DEFAULT_ALPHABET, EOS_ID, PAD_ID};
use std::str::FromStr;

const SAMPLES: &[&str] = &[
    "12+3=15\n",
    "  leading and trailing spaces  ",
    "(7*8)-(9/3) = 53\n\nstep 2:\tdone.",
    "Countdown: use 25, 50, 75, 100 to make 300!",
    "\n",
    " ",
    "",
    "<bos>1+1=2<eos><pad>",
    "a<b>c<eos",
];

#[test]
fn default_alphabet_is_printable_ascii_plus_newline_and_tab() {
    let tok = CharTokenizer::default();
    assert_eq!(DEFAULT_ALPHABET.chars().count(), 97);
    assert_eq!(tok.vocab_size(), 100);
    for c in (b' '..=b'~').map(char::from).chain(['\n', '\t']) {
        assert!(DEFAULT_ALPHABET.contains(c), "{c:?} missing");
    }
    assert_eq!((PAD_ID, BOS_ID, EOS_ID), (0, 1, 2));
    assert_eq!(tok.encode("0").expect("encode"), [3]);
}

#[test]
fn encode_decode_round_trip_and_specials() {
    let tok = Tokenizer::from(CharTokenizer::default());
    for s in SAMPLES {
        let ids = tok.encode(s).expect("encode");
        let plain = s.replace("<bos>", "").replace("<eos>", "").replace("<pad>", "");
        assert_eq!(tok.decode(&ids), plain, "{s:?}");
    }
    let ids = tok.encode("<bos>1<eos>").expect("encode");
    assert_eq!(ids, [BOS_ID, tok.encode("1").expect("encode")[0], EOS_ID]);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (Some(1), Some(2), Some(0)));
    assert_eq!(tok.token_text(EOS_ID), "<eos>");
    assert_eq!(tok.token_text(tok.encode("\n").expect("encode")[0]), "\n");
    assert_eq!(tok.token_text(10_000), "");
    assert_eq!(tok.decode(&[10_000]), "\u{FFFD}");
}

#[test]
fn unknown_character_error_names_character_and_position() {
    let tok = CharTokenizer::new("0123456789+=").expect("alphabet");
    let msg = tok.encode("1+2=x3").expect_err("x is unknown").to_string();
    assert!(msg.contains("'x'") && msg.contains("position 4"), "{msg}");
    let msg = CharTokenizer::default().encode("π≈3").expect_err("non-ascii").to_string();
    assert!(msg.contains("'π'") && msg.contains("position 0"), "{msg}");
}

#[test]
fn repeated_alphabet_character_is_rejected() {
    let msg = CharTokenizer::new("abca").expect_err("duplicate").to_string();
    assert!(msg.contains("'a'"), "{msg}");
}

#[test]
fn tokenizer_json_encodes_and_decodes_like_the_char_tokenizer() {
    let tok = CharTokenizer::default();
    let json = Tokenizer::from(tok.clone()).to_tokenizer_json().expect("json");
    let hf = tokenizers::Tokenizer::from_str(&json).expect("tokenizers crate loads it");
    assert_eq!(hf.get_vocab_size(true), tok.vocab_size());
    for s in SAMPLES {
        let ours = tok.encode(s).expect("encode");
        let theirs = hf.encode(*s, true).expect("hf encode");
        assert_eq!(theirs.get_ids(), ours.as_slice(), "{s:?}");
        assert_eq!(hf.decode(&ours, true).expect("hf decode"), tok.decode(&ours), "{s:?}");
    }
    assert!(hf.encode("1€", false).is_err(), "an unknown character must not silently map to a token");
}

#[test]
fn saved_char_tokenizer_loads_back_from_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(Tokenizer::from_dir(dir.path()).expect("no tokenizer is fine").is_none());
    let tok = CharTokenizer::new("0123456789+-*/=() \n").expect("alphabet");
    Tokenizer::from(tok.clone()).save_to_dir(dir.path()).expect("save");
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let loaded = Tokenizer::from_dir(dir.path()).expect("load").expect("present");
    assert!(matches!(loaded, Tokenizer::Hf(_)));
    assert_eq!(loaded.vocab_size(), tok.vocab_size());
    assert_eq!((loaded.bos_id(), loaded.eos_id(), loaded.pad_id()), (Some(1), Some(2), Some(0)));
    for s in ["12+3=15\n", "(1 + 2) * 3 = 9\n", "<bos>7-7=0<eos>"] {
        let ids = tok.encode(s).expect("encode");
        assert_eq!(loaded.encode(s).expect("hf encode"), ids, "{s:?}");
        assert_eq!(loaded.decode(&ids), tok.decode(&ids));
    }
    assert_eq!(loaded.token_text(tok.encode("\n").expect("encode")[0]), "\n");

    // Saving the loaded HF tokenizer again keeps its files loadable with the same ids.
    let again = tempfile::tempdir().expect("tempdir");
    loaded.save_to_dir(again.path()).expect("resave");
    let reloaded = Tokenizer::from_dir(again.path()).expect("load").expect("present");
    assert_eq!(reloaded.encode("12+3=15\n").expect("encode"), tok.encode("12+3=15\n").expect("encode"));
    assert_eq!(reloaded.eos_id(), Some(EOS_ID));
}

#[test]
fn invalid_tokenizer_json_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 3}").expect("write");
    let msg = Tokenizer::from_dir(dir.path()).expect_err("invalid").to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");
}
