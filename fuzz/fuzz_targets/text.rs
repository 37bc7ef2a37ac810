//! Fuzzes text decoding and the vocabulary: any bytes give text or an error; text that
//! decodes round-trips through the vocabulary exactly.
#![no_main]

use bptt::charlm::{Vocab, fsio};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = fsio::decode_text(data.to_vec()) {
        let vocab = Vocab::from_text(&text).unwrap();
        let ids = vocab.encode(&text).unwrap();
        let back: String = ids.iter().map(|i| vocab.char(i)).collect();
        assert_eq!(back, text);
        assert!(vocab.chars().windows(2).all(|w| w[0] < w[1]), "vocabulary not sorted and distinct");
    }
});
