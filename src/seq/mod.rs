//! Your own sequences: a dataset of variable-length multivariate sequences with class labels or
//! target values, read from files (`ts`: the UEA/UCR `.ts` format), and cut into time-major
//! padded batches with per-sequence lengths for [`crate::Workspace::set_lengths`].

pub mod csv;
pub mod fit;
pub mod forecast;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod ts;

pub use fit::{FitConfig, Fitter};
pub use model::{SeqModel, SeqSpec, Task};

/// Reads a dataset by its file's extension: `.ts` (UEA/UCR), `.csv` (long form, see [`csv`]),
/// `.npz` / `.npy` (NumPy, see [`npy`]); `columns` names the CSV's columns and says whether
/// labels are values.
pub fn read(path: &std::path::Path, columns: &csv::Columns) -> crate::Result<Dataset> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "ts" => ts::read(path),
        "csv" => csv::read(path, columns),
        "npz" | "npy" => npy::read(path, columns.values),
        _ => Err(crate::Error::Format {
            path: path.display().to_string(),
            msg: "unknown data format: give a .ts (UEA/UCR), .csv (long form: id, features, label) or .npz (X, y, \
                  lengths) file"
                .into(),
        }),
    }
}

/// The labels of a dataset's sequences.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// None (data to predict on).
    None,
    /// A class per sequence: `ids[i]` indexes `names`.
    Classes {
        /// The class names, in the file's order.
        names: Vec<String>,
        /// Each sequence's class.
        ids: Vec<usize>,
    },
    /// O real targets per sequence, N·O values (regression; O > 1 for a forecast's horizon).
    Values(Vec<f32>),
    /// A class per step (labelling): `ids` holds every sequence's steps back to back.
    Steps {
        /// The class names.
        names: Vec<String>,
        /// Each step's class, sequence after sequence.
        ids: Vec<usize>,
    },
}

/// Variable-length sequences of `features` values per step, stored back to back.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// F, values per step.
    pub features: usize,
    /// Each sequence's number of steps (≥ 1).
    pub lengths: Vec<usize>,
    /// All sequences' steps back to back, each step F values.
    pub values: Vec<f32>,
    /// The labels.
    pub labels: Labels,
}

impl Dataset {
    /// The number of sequences.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// True if there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The longest sequence's length.
    pub fn max_len(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }

    /// The sequences `which` (in that order), with their labels, as a dataset of their own.
    pub fn subset(&self, which: &[usize]) -> Dataset {
        let starts = self.starts();
        let f = self.features;
        let mut values = Vec::with_capacity(which.iter().map(|&i| self.lengths[i] * f).sum());
        for &i in which {
            values.extend_from_slice(&self.values[starts[i]..starts[i] + self.lengths[i] * f]);
        }
        let labels = match &self.labels {
            Labels::None => Labels::None,
            Labels::Classes { names, ids } => {
                Labels::Classes { names: names.clone(), ids: which.iter().map(|&i| ids[i]).collect() }
            }
            Labels::Steps { names, ids } => {
                let mut at = 0;
                let starts: Vec<usize> = self
                    .lengths
                    .iter()
                    .map(|&l| {
                        let s = at;
                        at += l;
                        s
                    })
                    .collect();
                let ids =
                    which.iter().flat_map(|&i| ids[starts[i]..starts[i] + self.lengths[i]].iter().copied()).collect();
                Labels::Steps { names: names.clone(), ids }
            }
            Labels::Values(v) => {
                // O values per sequence (a forecast's horizon).
                let o = v.len() / self.len().max(1);
                Labels::Values(which.iter().flat_map(|&i| v[i * o..(i + 1) * o].iter().copied()).collect())
            }
        };
        Dataset { features: f, lengths: which.iter().map(|&i| self.lengths[i]).collect(), values, labels }
    }

    /// Where each sequence starts in `values`.
    pub fn starts(&self) -> Vec<usize> {
        let mut at = 0;
        self.lengths
            .iter()
            .map(|&len| {
                let s = at;
                at += len * self.features;
                s
            })
            .collect()
    }

    /// Sequence `i` as (steps, F) values.
    pub fn sequence(&self, i: usize) -> &[f32] {
        let start: usize = self.lengths[..i].iter().sum::<usize>() * self.features;
        &self.values[start..start + self.lengths[i] * self.features]
    }

    /// The sequences `which` as a time-major padded batch for a network: `x` (T, B, F) with
    /// T = their longest length and zeros after each sequence's end, and their lengths.
    pub fn batch(&self, which: &[usize]) -> (Vec<f32>, Vec<usize>) {
        let (b, f) = (which.len(), self.features);
        let lengths: Vec<usize> = which.iter().map(|&i| self.lengths[i]).collect();
        let t = lengths.iter().copied().max().unwrap_or(0);
        let mut starts = Vec::with_capacity(self.len());
        self.lengths.iter().fold(0, |at, &len| {
            starts.push(at);
            at + len * f
        });
        let mut x = vec![0.0; t * b * f];
        for (j, &i) in which.iter().enumerate() {
            let seq = &self.values[starts[i]..starts[i] + self.lengths[i] * f];
            for (s, step) in seq.chunks_exact(f).enumerate() {
                x[(s * b + j) * f..(s * b + j + 1) * f].copy_from_slice(step);
            }
        }
        (x, lengths)
    }
}
