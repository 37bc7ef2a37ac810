//! Sampling text from a char model, one character at a time, with temperature and top-k.

use crate::charlm::model::CharModel;
use crate::error::{Error, Result};
use crate::net::{Input, State, Workspace};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Steps fed per forward pass when priming.
const PRIME_CHUNK: usize = 256;

/// Generates characters from a model; carries the recurrent state between calls.
pub struct Sampler<'m> {
    model: &'m CharModel,
    ws: Workspace<f32>,
    state: State<f32>,
    /// (V) logits of the last step fed.
    logits: Vec<f32>,
    /// (V) scratch: candidate ids for top-k, probabilities.
    order: Vec<u32>,
    probs: Vec<f64>,
    rng: ChaCha8Rng,
    fed: bool,
}

impl<'m> Sampler<'m> {
    /// The bytes [`Sampler::new`] allocates for `model`, computed without allocating.
    pub fn estimate_bytes(model: &CharModel) -> u64 {
        let scratch = model.vocab.len() as u64 * 16;
        Workspace::<f32>::estimate_bytes(model.net.config(), PRIME_CHUNK, 1).saturating_add(scratch)
    }

    /// A sampler from a zero state, drawing from a ChaCha8 stream seeded with `seed`.
    pub fn new(model: &'m CharModel, seed: u64, threads: usize) -> Result<Self> {
        let v = model.vocab.len();
        Ok(Sampler {
            ws: model.net.workspace(PRIME_CHUNK, 1, threads)?,
            state: State::zeros(model.net.config(), 1),
            logits: vec![0.0; v],
            order: Vec::with_capacity(v),
            probs: Vec::with_capacity(v),
            rng: ChaCha8Rng::seed_from_u64(seed),
            fed: false,
            model,
        })
    }

    /// Feeds `ids` (advancing the state); the next sample continues after them.
    pub fn feed(&mut self, ids: &[u32]) -> Result<()> {
        let v = self.logits.len();
        for chunk in ids.chunks(PRIME_CHUNK) {
            let m = self.model;
            m.net.forward(&m.params, &mut self.ws, Input::Tokens(chunk), None, Some(&self.state))?;
            self.ws.state_at(chunk.len(), &mut self.state);
            self.logits.copy_from_slice(&self.ws.logits()[(chunk.len() - 1) * v..]);
            self.fed = true;
        }
        Ok(())
    }

    /// Draws the next character id and feeds it. `temperature` 0 takes the argmax; otherwise
    /// p ∝ exp(logit / temperature) over the `top_k` most likely ids (all if `None`).
    pub fn next(&mut self, temperature: f64, top_k: Option<usize>) -> Result<u32> {
        if !self.fed {
            return Err(Error::Config("feed at least one character before sampling".into()));
        }
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::Config(format!("`temperature` must be >= 0, got {temperature}")));
        }
        let z = &self.logits;
        if z.iter().any(|v| !v.is_finite()) {
            return Err(Error::Data(
                "the model's outputs are not finite: its weights overflow f32 arithmetic (a corrupt or diverged model)"
                    .into(),
            ));
        }
        let argmax = (0..z.len()).fold(0, |best, k| if z[k] > z[best] { k } else { best }) as u32;
        let id = if temperature == 0.0 {
            argmax
        } else {
            self.order.clear();
            self.order.extend(0..z.len() as u32);
            let k = top_k.unwrap_or(z.len()).clamp(1, z.len());
            if k < z.len() {
                self.order.sort_by(|&a, &b| z[b as usize].total_cmp(&z[a as usize]).then(a.cmp(&b)));
                self.order.truncate(k);
            }
            let max = z[argmax as usize] as f64;
            self.probs.clear();
            self.probs.extend(self.order.iter().map(|&i| ((z[i as usize] as f64 - max) / temperature).exp()));
            let total: f64 = self.probs.iter().sum();
            let mut u = self.rng.random::<f64>() * total;
            let mut pick = self.order[self.order.len() - 1];
            for (&i, &p) in self.order.iter().zip(&self.probs) {
                if u < p {
                    pick = i;
                    break;
                }
                u -= p;
            }
            pick
        };
        self.feed(&[id])?;
        Ok(id)
    }
}
