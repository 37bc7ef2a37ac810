//! The character vocabulary: distinct characters sorted by code point, ids in that order.

use crate::error::{Error, Result};
use std::collections::HashMap;

/// A character ↔ id mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    chars: Vec<char>,
    index: HashMap<char, u32>,
}

impl Vocab {
    /// The distinct characters of `text`, sorted by code point.
    pub fn from_text(text: &str) -> Result<Self> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_chars(chars)
    }

    /// A vocabulary in the given id order; characters must be distinct.
    pub fn from_chars(chars: Vec<char>) -> Result<Self> {
        if chars.is_empty() {
            return Err(Error::Data("the vocabulary is empty: the text has no characters".into()));
        }
        if chars.len() > u32::MAX as usize {
            return Err(Error::Data("the vocabulary is too large".into()));
        }
        let mut index = HashMap::with_capacity(chars.len());
        for (id, &c) in chars.iter().enumerate() {
            if index.insert(c, id as u32).is_some() {
                return Err(Error::Data(format!("the vocabulary lists {} twice", show(c))));
            }
        }
        Ok(Vocab { chars, index })
    }

    /// V, the number of characters.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Never true: a vocabulary has at least one character.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The id of `c`, if it is in the vocabulary.
    pub fn id(&self, c: char) -> Option<u32> {
        self.index.get(&c).copied()
    }

    /// The character with id `id` (ids come from this vocabulary, so it exists).
    pub fn char(&self, id: u32) -> char {
        self.chars[id as usize]
    }

    /// Maps every character of `text` to its id; the first unknown character is an error that
    /// names it and its position.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .enumerate()
            .map(|(pos, c)| {
                self.id(c).ok_or_else(|| {
                    Error::Data(format!(
                        "character {} at position {pos} is not in the model's vocabulary of {} characters",
                        show(c),
                        self.len()
                    ))
                })
            })
            .collect()
    }
}

/// A character for an error message: quoted and with its code point, e.g. `'é' (U+00E9)`.
pub fn show(c: char) -> String {
    format!("{:?} (U+{:04X})", c, c as u32)
}
