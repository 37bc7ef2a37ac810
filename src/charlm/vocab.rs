//! The character vocabulary: distinct characters sorted by code point, ids in that order.

use crate::charlm::data::TokenIds;
use crate::error::{Error, Result};
use std::collections::{BTreeSet, HashMap};

/// A character ↔ id mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    chars: Vec<char>,
    index: HashMap<char, u32>,
    /// Ids of the ASCII characters (`u32::MAX` if absent): the common case without hashing.
    ascii: [u32; 128],
}

impl Vocab {
    /// The distinct characters of `text`, sorted by code point (in memory proportional to the
    /// vocabulary, not the text).
    pub fn from_text(text: &str) -> Result<Self> {
        let mut ascii = [false; 128];
        let mut other = BTreeSet::new();
        for c in text.chars() {
            match ascii.get_mut(c as usize) {
                Some(seen) => *seen = true,
                None => {
                    other.insert(c);
                }
            }
        }
        let chars = (0u8..128).filter(|&b| ascii[b as usize]).map(char::from).chain(other).collect();
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
        let mut ascii = [u32::MAX; 128];
        for (id, &c) in chars.iter().enumerate() {
            if index.insert(c, id as u32).is_some() {
                return Err(Error::Data(format!("the vocabulary lists {} twice", show(c))));
            }
            if let Some(slot) = ascii.get_mut(c as usize) {
                *slot = id as u32;
            }
        }
        Ok(Vocab { chars, index, ascii })
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
        match self.ascii.get(c as usize) {
            Some(&id) => (id != u32::MAX).then_some(id),
            None => self.index.get(&c).copied(),
        }
    }

    /// The character with id `id` (ids come from this vocabulary, so it exists).
    pub fn char(&self, id: u32) -> char {
        self.chars[id as usize]
    }

    /// Maps every character of `text` to its id, stored as compactly as the vocabulary allows
    /// (see [`TokenIds`]); the first unknown character is an error that names it and its position.
    pub fn encode(&self, text: &str) -> Result<TokenIds> {
        let mut ids = TokenIds::with_capacity(self.len(), text.chars().count());
        for (pos, c) in text.chars().enumerate() {
            let id = self.id(c).ok_or_else(|| {
                Error::Data(format!(
                    "character {} at position {pos} is not in the model's vocabulary of {} characters",
                    show(c),
                    self.len()
                ))
            })?;
            ids.push(id);
        }
        Ok(ids)
    }
}

/// A character for an error message: quoted and with its code point, e.g. `'é' (U+00E9)`.
pub fn show(c: char) -> String {
    format!("{:?} (U+{:04X})", c, c as u32)
}
