//! Text → training data: the train/validation split and the B contiguous streams.
//!
//! Semantics (exact): the last `val_fraction` of the characters (rounded down) is validation,
//! the rest training. The training ids are cut into B contiguous streams of
//! S = ⌊(n_train − 1) / B⌋ steps; stream b covers ids [b·S, (b+1)·S) as inputs and the
//! following ids as targets. Update u of an epoch feeds the k1 steps [u·k1, (u+1)·k1) of every
//! stream; an epoch has ⌊S / k1⌋ updates, and the hidden state is carried from update to update
//! and reset at the start of each epoch. So with B = 1 and no validation the first update
//! trains text[0..k1] → text[1..k1+1].

use crate::error::{Error, Result};

/// Token ids held in the narrowest integer that fits the vocabulary: one byte per character
/// for up to 256 distinct characters, two for up to 65,536, else four. So a corpus costs
/// about its text size in memory (a 1 GB text: 1 GB of ids), not four times it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIds(Store);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Store {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl TokenIds {
    /// Empty ids for a vocabulary of `vocab` tokens, with room for `n`.
    pub fn with_capacity(vocab: usize, n: usize) -> Self {
        TokenIds(if vocab <= 1 << 8 {
            Store::U8(Vec::with_capacity(n))
        } else if vocab <= 1 << 16 {
            Store::U16(Vec::with_capacity(n))
        } else {
            Store::U32(Vec::with_capacity(n))
        })
    }

    /// Appends `id`, which must be below the vocabulary size given at creation.
    pub fn push(&mut self, id: u32) {
        match &mut self.0 {
            Store::U8(v) => v.push(id as u8),
            Store::U16(v) => v.push(id as u16),
            Store::U32(v) => v.push(id),
        }
    }

    /// The id at position `i` (panics past the end, like a slice).
    #[inline]
    pub fn get(&self, i: usize) -> u32 {
        match &self.0 {
            Store::U8(v) => v[i] as u32,
            Store::U16(v) => v[i] as u32,
            Store::U32(v) => v[i],
        }
    }

    /// The number of ids.
    pub fn len(&self) -> usize {
        match &self.0 {
            Store::U8(v) => v.len(),
            Store::U16(v) => v.len(),
            Store::U32(v) => v.len(),
        }
    }

    /// True if there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per id: 1, 2 or 4.
    pub fn id_bytes(&self) -> usize {
        match &self.0 {
            Store::U8(_) => 1,
            Store::U16(_) => 2,
            Store::U32(_) => 4,
        }
    }

    /// The ids in order, as `u32`s.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The ids as `u32`s.
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    /// Splits off the ids from `at` on (allocating only those), like `Vec::split_off`.
    pub fn split_off(&mut self, at: usize) -> TokenIds {
        TokenIds(match &mut self.0 {
            Store::U8(v) => Store::U8(v.split_off(at)),
            Store::U16(v) => Store::U16(v.split_off(at)),
            Store::U32(v) => Store::U32(v.split_off(at)),
        })
    }
}

impl From<&[u32]> for TokenIds {
    /// Ids in the narrowest integer that holds their largest value.
    fn from(ids: &[u32]) -> Self {
        let vocab = ids.iter().max().map_or(0, |&m| m as usize + 1);
        let mut out = TokenIds::with_capacity(vocab, ids.len());
        ids.iter().for_each(|&id| out.push(id));
        out
    }
}

impl From<Vec<u32>> for TokenIds {
    fn from(ids: Vec<u32>) -> Self {
        TokenIds::from(ids.as_slice())
    }
}

/// Training and validation ids.
#[derive(Clone, Debug)]
pub struct Split {
    /// The training part.
    pub train: TokenIds,
    /// The validation part (possibly empty).
    pub val: TokenIds,
}

impl Split {
    /// Splits `ids` with the last `val_fraction` (in [0, 1)) as validation.
    pub fn new(mut ids: TokenIds, val_fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::Config(format!("`val_fraction` must be in [0, 1), got {val_fraction}")));
        }
        let n_val = (ids.len() as f64 * val_fraction) as usize;
        let val = ids.split_off(ids.len() - n_val);
        Ok(Split { train: ids, val })
    }
}

/// The B contiguous streams over a training part, and the chunk of update u.
#[derive(Clone, Debug)]
pub struct Streams {
    batch: usize,
    k1: usize,
    /// S, steps per stream.
    len: usize,
}

impl Streams {
    /// Streams over `n` ids for batch `batch` and `k1` steps per update; an error if not even
    /// one update fits.
    pub fn new(n: usize, batch: usize, k1: usize) -> Result<Self> {
        let len = n.saturating_sub(1) / batch.max(1);
        if batch == 0 || k1 == 0 || len < k1 {
            return Err(Error::Data(format!(
                "the training text ({n} characters) is too short for {batch} streams of at least {k1}+1 \
                 characters: use a longer text, a smaller `batch` or a smaller `seq_len`"
            )));
        }
        Ok(Streams { batch, k1, len })
    }

    /// Updates per epoch, ⌊S / k1⌋.
    pub fn updates_per_epoch(&self) -> usize {
        self.len / self.k1
    }

    /// Fills `x` and `y` (k1, B), time-major, with the inputs and targets of update `u`.
    pub fn chunk(&self, ids: &TokenIds, u: usize, x: &mut [u32], y: &mut [u32]) {
        let (b, k1, s) = (self.batch, self.k1, self.len);
        for t in 0..k1 {
            for j in 0..b {
                let p = j * s + u * k1 + t;
                x[t * b + j] = ids.get(p);
                y[t * b + j] = ids.get(p + 1);
            }
        }
    }
}
