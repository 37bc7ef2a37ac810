//! The character language model — embedding → L-layer RNN/LSTM/GRU → linear decoder — and its
//! file format: safetensors, f32, with the tensor names of PyTorch's `word_language_model`
//! `RNNModel` and the metadata below, so files move both ways between `bptt` and PyTorch.
//!
//! Metadata (`__metadata__`, all strings): `bptt.format` = `charlm/1`; `cell` = `lstm` | `gru`
//! | `rnn_tanh` | `rnn_relu`; `vocab` = a JSON array of one-character strings in id order;
//! `embedding_dim`, `hidden_size`, `num_layers` as decimal integers, `layer_norm` (`true` or
//! `false`; absent = false), `zoneout_h` and `zoneout_c` (decimal rates in [0, 1); written only
//! when set, absent = 0).

use crate::cell::CellKind;
use crate::charlm::data::TokenIds;
use crate::charlm::vocab::{Vocab, show};
use crate::error::{Error, Result};
use crate::files::{fsio, tensors};
use crate::net::{Head, Input, InputKind, LossKind, Net, NetConfig, State, Targets};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The value of the `bptt.format` metadata key of a model file.
pub const FORMAT: &str = "charlm/1";
/// Bounds on the sizes a model file may declare, checked before anything is allocated.
const MAX_WIDTH: usize = 1 << 16;
const MAX_LAYERS: usize = 64;
const MAX_VOCAB: usize = 1 << 20;
const MAX_PARAMS: usize = 1 << 31;

/// The architecture of a char model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelSpec {
    /// The recurrent cell.
    #[serde(with = "crate::cell::serde_name")]
    pub cell: CellKind,
    /// E.
    pub embedding_dim: usize,
    /// H.
    pub hidden: usize,
    /// L.
    pub layers: usize,
    /// LSTM: the LayerNorm-LSTM (`NetConfig::layer_norm`; absent in older files = false).
    #[serde(default)]
    pub layer_norm: bool,
    /// Zoneout of h and (LSTM) c (`NetConfig::zoneout`; absent in older files = none).
    #[serde(default)]
    pub zoneout: crate::net::Zoneout,
}

impl ModelSpec {
    /// The network config for a vocabulary of `vocab` characters.
    pub fn net_config(&self, vocab: usize) -> NetConfig {
        NetConfig {
            cell: self.cell,
            input: InputKind::Tokens { vocab, embedding_dim: self.embedding_dim },
            hidden: self.hidden,
            layers: self.layers,
            output: vocab,
            loss: LossKind::CrossEntropy,
            head: Head::PerStep,
            bidirectional: false,
            proj_size: 0,
            layer_norm: self.layer_norm,
            zoneout: self.zoneout,
        }
    }

    /// Checks the sizes are positive and within the bounds a model file may declare.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let check = |what: &str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err(Error::Config(format!("{what} must be between 1 and {max}, got {v}")))
            } else {
                Ok(())
            }
        };
        check("embedding dimension", self.embedding_dim, MAX_WIDTH)?;
        check("hidden size", self.hidden, MAX_WIDTH)?;
        check("number of layers", self.layers, MAX_LAYERS)?;
        check("vocabulary size", vocab, MAX_VOCAB)?;
        if vocab < 2 {
            return Err(Error::Config("the text must have at least 2 distinct characters".into()));
        }
        let (g, h, e) = (self.cell.gates() as u128, self.hidden as u128, self.embedding_dim as u128);
        let n = vocab as u128 * e
            + g * h * (e + h + 2)
            + (self.layers as u128 - 1) * g * h * (2 * h + 2)
            + vocab as u128 * (h + 1);
        if n > MAX_PARAMS as u128 {
            return Err(Error::Config(format!("a model of {n} parameters is larger than the {MAX_PARAMS} supported")));
        }
        Ok(())
    }
}

/// A trained (or fresh) character model: layout, f32 parameters and vocabulary.
#[derive(Clone, Debug)]
pub struct CharModel {
    /// The architecture.
    pub spec: ModelSpec,
    /// The vocabulary (V = its length).
    pub vocab: Vocab,
    /// The network layout.
    pub net: Net,
    /// The parameter slab, laid out by `net`.
    pub params: Vec<f32>,
}

/// The result of evaluating a model on a text.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Eval {
    /// Mean cross-entropy in nats per character.
    pub loss: f64,
    /// Bits per character, loss / ln 2.
    pub bits_per_char: f64,
    /// e^loss.
    pub perplexity: f64,
    /// Characters predicted.
    pub tokens: usize,
}

impl CharModel {
    /// A freshly initialised model (PyTorch-style init from `seed`).
    pub fn new(spec: ModelSpec, vocab: Vocab, seed: u64) -> Result<Self> {
        spec.validate(vocab.len())?;
        let net = Net::new(spec.net_config(vocab.len()))?;
        let params = net.init_params(seed);
        Ok(CharModel { spec, vocab, net, params })
    }

    /// The file's metadata map.
    fn metadata(&self) -> BTreeMap<String, String> {
        let vocab: Vec<String> = self.vocab.chars().iter().map(|c| c.to_string()).collect();
        let mut meta = BTreeMap::from([
            ("bptt.format".to_string(), FORMAT.to_string()),
            ("cell".to_string(), self.spec.cell.name().to_string()),
            ("vocab".to_string(), serde_json::to_string(&vocab).unwrap_or_default()),
            ("embedding_dim".to_string(), self.spec.embedding_dim.to_string()),
            ("hidden_size".to_string(), self.spec.hidden.to_string()),
            ("num_layers".to_string(), self.spec.layers.to_string()),
            ("layer_norm".to_string(), self.spec.layer_norm.to_string()),
        ]);
        // (Only when set: files without zoneout stay as they were.)
        let z = self.spec.zoneout;
        for (key, rate) in [("zoneout_h", z.h), ("zoneout_c", z.c)].into_iter().filter(|(_, r)| *r > 0.0) {
            meta.insert(key.to_string(), rate.to_string());
        }
        meta
    }

    /// The model as safetensors bytes, with `extra` tensors and metadata appended (used by
    /// checkpoints). The bytes depend only on the contents (keys sorted), so equal models give
    /// equal files.
    pub fn to_bytes_with(&self, extra: &[(String, Vec<usize>, &[f32])], meta: &[(String, String)]) -> Result<Vec<u8>> {
        let mut tensors: BTreeMap<String, (Vec<usize>, &[f32])> =
            self.net.params().iter().map(|p| (p.name.clone(), (p.shape.clone(), p.of(&self.params)))).collect();
        tensors.extend(extra.iter().map(|(n, s, v)| (n.clone(), (s.clone(), *v))));
        let mut metadata: BTreeMap<String, String> = self.metadata().into_iter().collect();
        metadata.extend(meta.iter().cloned());
        Ok(tensors::to_bytes(&tensors, &metadata))
    }

    /// Saves the model to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        fsio::write_atomic(path, &self.to_bytes_with(&[], &[])?)
    }

    /// Loads a model file written by `bptt` or by PyTorch with the documented names and
    /// metadata. Every size is checked against sane bounds before anything is allocated.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fsio::read_bounded(path, 8 + tensors::MAX_HEADER + 4 * MAX_PARAMS as u64)?;
        Self::from_bytes(&bytes).map_err(|e| e.in_file(path))
    }

    /// Parses model-file bytes (an [`Error::Malformed`] names what is wrong;
    /// [`Error::in_file`] adds the path).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        ModelFile::parse(bytes).and_then(|file| file.model()).map_err(Error::Malformed)
    }

    /// `bptt eval`: the whole text as one stream from a zero state, `ids[..n-1]` predicting
    /// `ids[1..]` (run in chunks of 1024 steps with the state carried).
    pub fn evaluate_stream(&self, ids: &TokenIds, threads: usize) -> Result<Eval> {
        self.evaluate(ids, 1, 1024, threads)
    }

    /// The bytes [`CharModel::evaluate`] allocates for `n` ids (its workspace and batch),
    /// computed without allocating.
    pub fn evaluate_bytes(&self, n: usize, streams: usize, chunk: usize) -> u64 {
        let b = streams.clamp(1, n.saturating_sub(1).max(1));
        let chunk = chunk.clamp(1, (n.saturating_sub(1) / b).max(1));
        let batch = (chunk * b) as u64 * 8;
        crate::net::Workspace::<f32>::estimate_bytes(self.net.config(), chunk, b).saturating_add(batch)
    }

    /// Mean cross-entropy of predicting `ids[1..]` from `ids[..n-1]`, with the ids cut into
    /// `streams` contiguous streams (1 = the whole text as one stream) each run from a zero
    /// state in chunks of up to `chunk` steps with the state carried.
    pub fn evaluate(&self, ids: &TokenIds, streams: usize, chunk: usize, threads: usize) -> Result<Eval> {
        self.evaluate_with(ids, streams, chunk, threads, &mut |_, _| {})
    }

    /// [`CharModel::evaluate`], telling `progress(done, total)` (characters scored) after each
    /// chunk.
    pub fn evaluate_with(
        &self,
        ids: &TokenIds,
        streams: usize,
        chunk: usize,
        threads: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Eval> {
        if ids.len() < 2 {
            return Err(Error::Data("the text needs at least 2 characters to predict one".into()));
        }
        let b = streams.clamp(1, ids.len() - 1);
        let s = (ids.len() - 1) / b;
        let chunk = chunk.clamp(1, s);
        let mut ws = self.net.workspace::<f32>(chunk, b, threads)?;
        let mut state = State::zeros(self.net.config(), b);
        let (mut x, mut y) = (vec![0u32; chunk * b], vec![0u32; chunk * b]);
        let mut total = 0.0f64;
        let mut start = 0;
        while start < s {
            let t = chunk.min(s - start);
            for k in 0..t {
                for j in 0..b {
                    x[k * b + j] = ids.get(j * s + start + k);
                    y[k * b + j] = ids.get(j * s + start + k + 1);
                }
            }
            let loss = self.net.forward(
                &self.params,
                &mut ws,
                Input::Tokens(&x[..t * b]),
                Some(Targets::classes(&y[..t * b])),
                Some(&state),
            )?;
            total += loss as f64 * (t * b) as f64;
            ws.state_at(t, &mut state);
            start += t;
            progress(start * b, s * b);
        }
        let tokens = s * b;
        let loss = total / tokens as f64;
        if !loss.is_finite() {
            return Err(Error::Data(format!(
                "the model's loss on this text is {loss}: its weights overflow f32 arithmetic (a corrupt or diverged model)"
            )));
        }
        Ok(Eval { loss, bits_per_char: loss / std::f64::consts::LN_2, perplexity: loss.exp(), tokens })
    }
}

/// A parsed, validated safetensors model file (plus any extra tensors and metadata).
pub(crate) struct ModelFile<'a> {
    pub tensors: SafeTensors<'a>,
    pub metadata: HashMap<String, String>,
    pub spec: ModelSpec,
    pub vocab: Vocab,
}

impl<'a> ModelFile<'a> {
    /// Checks the header size, the metadata, the declared shapes (against the metadata, before
    /// anything is allocated) and the total size, then parses the tensors.
    pub(crate) fn parse(bytes: &'a [u8]) -> std::result::Result<Self, String> {
        let header = tensors::Header::parse(bytes, FORMAT)?;
        let cell: CellKind = header.get("cell")?.parse().map_err(|e: Error| format!("metadata 'cell': {e}"))?;
        let spec = ModelSpec {
            cell,
            embedding_dim: header.num("embedding_dim")?,
            hidden: header.num("hidden_size")?,
            layers: header.num("num_layers")?,
            layer_norm: header.flag("layer_norm")?,
            zoneout: crate::net::Zoneout { h: header.rate("zoneout_h")?, c: header.rate("zoneout_c")? },
        };
        let chars: Vec<String> = serde_json::from_str(header.get("vocab")?)
            .map_err(|_| "metadata 'vocab' is not a JSON array of strings".to_string())?;
        let mut vocab_chars = Vec::with_capacity(chars.len().min(MAX_VOCAB));
        for s in &chars {
            let mut it = s.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => vocab_chars.push(c),
                _ => return Err(format!("vocabulary entry {s:?} is not exactly one character")),
            }
        }
        spec.validate(vocab_chars.len()).map_err(|e| format!("metadata: {e}"))?;
        let vocab = Vocab::from_chars(vocab_chars).map_err(|e| e.to_string())?;
        // Every declared tensor must be f32; those of the model must have the expected shapes.
        let net = Net::new(spec.net_config(vocab.len())).map_err(|e| e.to_string())?;
        let expected: Vec<(&str, &[usize])> = net.params().iter().map(|p| (p.name.as_str(), &p.shape[..])).collect();
        let tensors = header.tensors(bytes, &expected)?;
        Ok(ModelFile { tensors, metadata: header.metadata, spec, vocab })
    }

    /// The f32 values of tensor `name`, checked finite.
    pub(crate) fn floats(&self, name: &str) -> std::result::Result<Vec<f32>, String> {
        tensors::floats(&self.tensors, name)
    }

    /// The model held by the file.
    pub(crate) fn model(&self) -> std::result::Result<CharModel, String> {
        let net = Net::new(self.spec.net_config(self.vocab.len())).map_err(|e| e.to_string())?;
        let mut params = vec![0.0f32; net.num_params()];
        for p in net.params() {
            p.of_mut(&mut params).copy_from_slice(&self.floats(&p.name)?);
        }
        Ok(CharModel { spec: self.spec, vocab: self.vocab.clone(), net, params })
    }
}

/// Describes a character for messages (re-exported for the CLI).
pub fn describe_char(c: char) -> String {
    show(c)
}
