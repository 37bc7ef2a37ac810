//! Forward-mode gradients: the gradient BPTT computes, carried forward in time instead of
//! stored and swept backward. Real-time recurrent learning (RTRL, Williams & Zipser 1989) keeps
//! the influence matrix M_t = ds_t/dθ (S × P, s the state of every layer, θ every parameter):
//!
//! ```text
//! M_t = J_t M_{t−1} + Ī_t          J_t = ∂s_t/∂s_{t−1} (S × S),  Ī_t = ∂s_t/∂θ (S × P, one step)
//! dL/dθ = Σ_t ( ∂L_t/∂θ|step t + (∂L_t/∂s_{t−1}) M_{t−1} )
//! ```
//! exactly BPTT's gradient, at O(S²·P) per step and O(S·P) memory whatever T. UORO (Tallec &
//! Ollivier 2017) keeps M ≈ s̃ θ̃ᵀ, an unbiased rank-one estimate, at BPTT's cost per step; SnAp-1
//! (Menick et al. 2020) keeps only the entries of M that one step can make non-zero (those of Ī),
//! exact where J is diagonal.
//!
//! J_t and Ī_t are not derived again here: row k of both is one vector–Jacobian product of the
//! engine's own one-step pass (`Net::backward_from` with dL/ds_t = e_k and no loss), so these
//! methods rest on the same tested cell code as BPTT. That costs S one-step passes per step and
//! sequence: a tool to measure and teach with at small H, not a fast trainer.

use crate::error::{Error, Result, check_len};
use crate::float::Float;
use crate::net::{Head, Input, InputKind, Net, State, Target, Targets, Workspace};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which forward-mode gradient to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Exact RTRL: the full influence matrix.
    Rtrl,
    /// UORO: a rank-one estimate of the influence matrix, unbiased; random signs from `seed`.
    Uoro {
        /// The seed of the random signs.
        seed: u64,
    },
    /// SnAp-1: the influence entries one step can reach (those of Ī_t), the rest dropped.
    Snap1,
}

/// B sequences of T steps, as [`Net::forward`] reads them: input (T, B, I) or token ids (T, B),
/// targets (T, B) or (T, B, O) with an optional (T, B) mask, and the initial state (zeros if
/// `None`).
#[derive(Clone, Copy, Debug)]
pub struct Sequences<'a, F> {
    pub input: Input<'a, F>,
    pub targets: Targets<'a, F>,
    /// B.
    pub batch: usize,
    pub init: Option<&'a State<F>>,
}

/// The loss (as [`Net::forward`] computes it over the whole sequences) and its gradient by
/// `method`, processing the sequences step by step, each with its own influence state. With
/// [`Method::Rtrl`] the gradient equals [`Net::backward`]'s to rounding; with [`Method::Uoro`]
/// its expectation does.
///
/// Needs a causal net with a per-step head (not bidirectional, not pooled); `grads` (the slab's
/// length) receives the gradient, added to what it holds.
pub fn gradient<F: Float>(
    net: &Net,
    params: &[F],
    method: Method,
    seqs: Sequences<'_, F>,
    grads: &mut [F],
) -> Result<F> {
    Ok(gradient_report(net, params, method, seqs, grads)?.0)
}

/// [`gradient`], and the values the method carried per sequence from step to step: RTRL S·P
/// (S the state's values, P the parameters), SnAp-1 the influence entries one step reached (the
/// most of any sequence), UORO S + P.
pub fn gradient_report<F: Float>(
    net: &Net,
    params: &[F],
    method: Method,
    seqs: Sequences<'_, F>,
    grads: &mut [F],
) -> Result<(F, u64)> {
    let Sequences { input, targets, batch: b, init } = seqs;
    let cfg = *net.config();
    causal(net)?;
    check_len("parameter slab", net.num_params(), params.len())?;
    check_len("gradient slab", net.num_params(), grads.len())?;
    let rows = check_sizes(net, &seqs)?;
    let steps = rows / b;
    let weight = |k: usize| targets.mask.map_or(F::one(), |m| m[k]);
    let total: f64 = (0..rows).map(|k| weight(k).f64()).sum();
    let mut ws = net.workspace::<F>(1, 1, 1)?;
    let mut row = Row::new(net, method);
    let (mut loss, mut carried) = (0.0f64, 0u64);
    for r in 0..b {
        row.start(net, init, b, r, method);
        for t in 0..steps {
            let k = t * b + r;
            let scale = if total > 0.0 { weight(k).f64() / total } else { 0.0 };
            let step =
                StepData { input: pick_input(&input, &cfg.input, k), target: pick_target(&targets, cfg.output, k) };
            loss += row.step(net, params, &mut ws, step, scale, grads)? * scale;
        }
        carried = carried.max(row.carried());
    }
    Ok((F::of(loss), carried))
}

/// Ok for a net forward-mode methods can follow step by step: causal, with a per-step head.
fn causal(net: &Net) -> Result<()> {
    let cfg = net.config();
    if cfg.bidirectional || cfg.head != Head::PerStep {
        return Err(Error::Config(
            "forward-mode gradients need a causal net with a per-step head (no bidirectional layers, no pooled head)"
                .into(),
        ));
    }
    Ok(())
}

/// Online (real-time) learning on one stream: each step's loss and the method's estimate of its
/// gradient through every earlier step of the stream, with no stored history — so the caller can
/// update the weights after every step, as a learner that must learn while it runs does (then
/// the influence carried is that of the weights of the past steps, as in Williams & Zipser's
/// real-time RTRL). One sequence at a time (B = 1).
///
/// ```text
/// learner.reset(&net, None);                   // a new stream
/// for t in 0..T { learner.step(&net, &params, x_t, y_t, w_t)?;  apply_update(&mut params, learner.grads_mut(), …); }
/// ```
pub struct Learner<F> {
    method: Method,
    row: Row<F>,
    ws: Workspace<F>,
    grads: Vec<F>,
    streams: usize,
}

impl<F: Float> Learner<F> {
    /// A learner for `net` (causal, per-step head) by `method`; it holds the influence state of
    /// one stream (RTRL and SnAp-1: S·P values, UORO: S + P).
    pub fn new(net: &Net, method: Method) -> Result<Self> {
        causal(net)?;
        let row = Row::new(net, method);
        let ws = net.workspace::<F>(1, 1, 1)?;
        Ok(Learner { method, row, ws, grads: vec![F::zero(); net.num_params()], streams: 0 })
    }

    /// Starts a new stream from state `init` (B = 1; zeros if `None`): no influence carried.
    pub fn reset(&mut self, net: &Net, init: Option<&State<F>>) {
        self.streams += 1;
        // (UORO: each stream its own signs, from the seed and the stream's number.)
        let method = match self.method {
            Method::Uoro { seed } => Method::Uoro { seed: seed ^ ((self.streams as u64) << 32) },
            m => m,
        };
        self.row.start(net, init, 1, 0, method);
    }

    /// One step of the stream: input `x` (one row: I values, or one token id) and target `y`
    /// (one class, or O values) with loss weight `weight` (0: no loss at this step). Returns the
    /// step's loss and sets [`Learner::grads`] to `weight` times its gradient estimate; the state
    /// and the influence move on.
    pub fn step(&mut self, net: &Net, params: &[F], x: Input<'_, F>, y: Target<'_, F>, weight: F) -> Result<F> {
        check_len("parameter slab", net.num_params(), params.len())?;
        self.grads.fill(F::zero());
        let step = StepData { input: x, target: y };
        let loss = self.row.step(net, params, &mut self.ws, step, weight.f64(), &mut self.grads)?;
        Ok(F::of(loss))
    }

    /// The gradient estimate of the last step (weighted).
    pub fn grads(&self) -> &[F] {
        &self.grads
    }

    /// The same, to clip and apply in place (`apply_update`).
    pub fn grads_mut(&mut self) -> &mut [F] {
        &mut self.grads
    }

    /// The stream's state after the last step (B = 1).
    pub fn state(&self) -> &State<F> {
        &self.row.state
    }
}

/// T·B after checking that the input, targets, mask and initial state hold B sequences of T
/// steps.
fn check_sizes<F: Float>(net: &Net, seqs: &Sequences<'_, F>) -> Result<usize> {
    let cfg = net.config();
    let (b, rows) = (seqs.batch, targets_len(&seqs.targets, cfg.output));
    if b == 0 || rows == 0 || !rows.is_multiple_of(b) || seqs.input.len() != rows * cfg.input_width() {
        return Err(Error::Config(format!(
            "{} input values and {rows} target rows are not T steps of {b} sequences",
            seqs.input.len()
        )));
    }
    if let Some(m) = seqs.targets.mask {
        check_len("mask (T·B)", rows, m.len())?;
    }
    if let Some(s) = seqs.init {
        let zero = State::<F>::zeros(cfg, b);
        check_len("initial state h", zero.h.len(), s.h.len())?;
        check_len("initial state c", zero.c.len(), s.c.len())?;
    }
    Ok(rows)
}

/// T·B, the positions the targets cover ((T, B) classes or (T, B, O) values).
fn targets_len<F>(t: &Targets<'_, F>, o: usize) -> usize {
    match t.target {
        Target::Classes(y) => y.len(),
        Target::Values(y) => y.len() / o.max(1),
    }
}

/// One step of one sequence: its input row and target.
struct StepData<'a, F> {
    input: Input<'a, F>,
    target: Target<'a, F>,
}

fn pick_input<'a, F>(input: &Input<'a, F>, kind: &InputKind, k: usize) -> Input<'a, F> {
    match (input, kind) {
        (Input::Dense(x), InputKind::Dense { size }) => Input::Dense(&x[k * size..(k + 1) * size]),
        (Input::Tokens(ids), _) => Input::Tokens(&ids[k..k + 1]),
        (Input::Dense(x), _) => Input::Dense(&x[k..k + 1]),
    }
}

fn pick_target<'a, F>(t: &Targets<'a, F>, o: usize, k: usize) -> Target<'a, F> {
    match t.target {
        Target::Classes(y) => Target::Classes(&y[k..k + 1]),
        Target::Values(y) => Target::Values(&y[k * o..(k + 1) * o]),
    }
}

/// The forward-mode state of one sequence.
struct Row<F> {
    /// s_{t−1}, the state before the next step (B = 1).
    state: State<F>,
    /// RTRL, SnAp-1: the influence matrix (S × P), and the previous step's; UORO: s̃ (S) and
    /// θ̃ (P).
    m: Vec<F>,
    m_prev: Vec<F>,
    s_tilde: Vec<F>,
    theta_tilde: Vec<F>,
    /// SnAp-1: the entries of M kept (those Ī has reached).
    kept: Vec<bool>,
    /// Scratch: J_t (S × S), Ī_t (S × P), and one P-wide row.
    j: Vec<F>,
    i_bar: Vec<F>,
    scratch: Vec<F>,
    rng: ChaCha8Rng,
}

impl<F: Float> Row<F> {
    fn new(net: &Net, method: Method) -> Self {
        let (s, p) = (state_len(net), net.num_params());
        let full = !matches!(method, Method::Uoro { .. });
        let seed = if let Method::Uoro { seed } = method { seed } else { 0 };
        Row {
            state: State::zeros(net.config(), 1),
            m: vec![F::zero(); if full { s * p } else { 0 }],
            m_prev: vec![F::zero(); if full { s * p } else { 0 }],
            s_tilde: vec![F::zero(); if full { 0 } else { s }],
            theta_tilde: vec![F::zero(); if full { 0 } else { p }],
            kept: vec![false; if method == Method::Snap1 { s * p } else { 0 }],
            j: vec![F::zero(); s * s],
            i_bar: vec![F::zero(); s * p],
            scratch: vec![F::zero(); p],
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A fresh sequence: row `r` of `init` (of `b` rows), zero influence.
    fn start(&mut self, net: &Net, init: Option<&State<F>>, b: usize, r: usize, method: Method) {
        let cfg = net.config();
        let (hp, h) = (cfg.state_width(), cfg.hidden);
        self.state = State::zeros(cfg, 1);
        if let Some(s) = init {
            for l in 0..cfg.layers {
                self.state.h[l * hp..(l + 1) * hp].copy_from_slice(&s.h[(l * b + r) * hp..(l * b + r + 1) * hp]);
                if !s.c.is_empty() {
                    self.state.c[l * h..(l + 1) * h].copy_from_slice(&s.c[(l * b + r) * h..(l * b + r + 1) * h]);
                }
            }
        }
        self.m.fill(F::zero());
        self.s_tilde.fill(F::zero());
        self.theta_tilde.fill(F::zero());
        self.kept.fill(false);
        if let Method::Uoro { seed } = method {
            // Each sequence its own signs, from the seed and its row.
            self.rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ r as u64);
        }
    }

    /// One step: the loss ℓ_t (unscaled) and `scale` · its gradient into `grads`; the state and
    /// the influence carried on.
    fn step(
        &mut self,
        net: &Net,
        params: &[F],
        ws: &mut Workspace<F>,
        data: StepData<'_, F>,
        scale: f64,
        grads: &mut [F],
    ) -> Result<f64> {
        let (s, p) = (self.j.len().isqrt(), params.len());
        let sc = F::of(scale);
        // The loss of this step: its gradient through step t, and dℓ_t/ds_{t−1}.
        let one = [F::one()];
        let targets = Targets { target: data.target, mask: Some(&one) };
        let loss = net.forward(params, ws, data.input, Some(targets), Some(&self.state))?.f64();
        self.scratch.fill(F::zero());
        net.backward(params, ws, &mut self.scratch)?;
        for (g, &d) in grads.iter_mut().zip(&self.scratch) {
            *g += sc * d;
        }
        let next = ws.final_state();
        let ds_prev = flat(&ws.initial_state_grad());
        // J_t and Ī_t, row by row: dL/ds_t = e_k, no loss.
        let zero = [F::zero()];
        let quiet = Targets { target: data.target, mask: Some(&zero) };
        let mut e = State::zeros(net.config(), 1);
        for k in 0..s {
            set_unit(&mut e, k, F::one());
            net.forward(params, ws, data.input, Some(quiet), Some(&self.state))?;
            let row = &mut self.i_bar[k * p..(k + 1) * p];
            row.fill(F::zero());
            net.backward_from(params, ws, row, Some(&e))?;
            self.j[k * s..(k + 1) * s].copy_from_slice(&flat(&ws.initial_state_grad()));
            set_unit(&mut e, k, F::zero());
        }
        // dℓ_t/dθ through the earlier steps: (dℓ_t/ds_{t−1}) M_{t−1}, then M_t.
        if self.s_tilde.is_empty() {
            for (a, &c) in ds_prev.iter().enumerate() {
                let m_row = &self.m[a * p..(a + 1) * p];
                for (g, &m) in grads.iter_mut().zip(m_row) {
                    *g += sc * c * m;
                }
            }
            self.advance_full(s, p);
        } else {
            let c: F = ds_prev.iter().zip(&self.s_tilde).map(|(&a, &b)| a * b).sum();
            for (g, &th) in grads.iter_mut().zip(&self.theta_tilde) {
                *g += sc * c * th;
            }
            self.advance_uoro(s, p);
        }
        self.state = next;
        Ok(loss)
    }

    /// The values this sequence carried from step to step (see [`gradient_report`]).
    fn carried(&self) -> u64 {
        if !self.kept.is_empty() {
            self.kept.iter().filter(|&&k| k).count() as u64
        } else if self.s_tilde.is_empty() {
            self.m.len() as u64
        } else {
            (self.s_tilde.len() + self.theta_tilde.len()) as u64
        }
    }

    /// RTRL: M ← J M + Ī; SnAp-1 the same, keeping only the entries Ī has reached.
    fn advance_full(&mut self, s: usize, p: usize) {
        let snap = !self.kept.is_empty();
        let mut next = std::mem::take(&mut self.scratch);
        std::mem::swap(&mut self.m, &mut self.m_prev);
        let old = &self.m_prev;
        for a in 0..s {
            next.copy_from_slice(&self.i_bar[a * p..(a + 1) * p]);
            for bidx in 0..s {
                let jab = self.j[a * s + bidx];
                if jab != F::zero() {
                    for (n, &m) in next.iter_mut().zip(&old[bidx * p..(bidx + 1) * p]) {
                        *n += jab * m;
                    }
                }
            }
            let row = &mut self.m[a * p..(a + 1) * p];
            row.copy_from_slice(&next);
            if snap {
                let kept = &mut self.kept[a * p..(a + 1) * p];
                for ((m, k), &ib) in row.iter_mut().zip(kept.iter_mut()).zip(&self.i_bar[a * p..(a + 1) * p]) {
                    *k |= ib != F::zero();
                    if !*k {
                        *m = F::zero();
                    }
                }
            }
        }
        self.scratch = next;
    }

    /// UORO: with random signs ν, s̃ ← ρ₀ J s̃ + ρ₁ ν and θ̃ ← θ̃/ρ₀ + (νᵀĪ)/ρ₁, the ρ balancing
    /// the norms (ρ₀ = √(|θ̃|/|J s̃|), ρ₁ = √(|νᵀĪ|/|ν|)) so the estimate's variance stays small.
    fn advance_uoro(&mut self, s: usize, p: usize) {
        let nu: Vec<F> = (0..s).map(|_| if self.rng.random::<bool>() { F::one() } else { -F::one() }).collect();
        let js: Vec<F> = (0..s).map(|a| (0..s).map(|b| self.j[a * s + b] * self.s_tilde[b]).sum()).collect();
        let nu_i = &mut self.scratch;
        nu_i.fill(F::zero());
        for (a, &n) in nu.iter().enumerate() {
            for (o, &v) in nu_i.iter_mut().zip(&self.i_bar[a * p..(a + 1) * p]) {
                *o += n * v;
            }
        }
        let norm = |v: &[F]| v.iter().map(|x| x.f64() * x.f64()).sum::<f64>().sqrt();
        let eps = 1e-7;
        let rho0 = ((norm(&self.theta_tilde) + eps) / (norm(&js) + eps)).sqrt();
        let rho1 = ((norm(nu_i) + eps) / (norm(&nu) + eps)).sqrt();
        for ((st, &j), &n) in self.s_tilde.iter_mut().zip(&js).zip(&nu) {
            *st = F::of(rho0) * j + F::of(rho1) * n;
        }
        for (th, &v) in self.theta_tilde.iter_mut().zip(nu_i.iter()) {
            *th = *th / F::of(rho0) + v / F::of(rho1);
        }
    }
}

/// S: the values of one sequence's state (every layer's h, then every layer's c).
fn state_len(net: &Net) -> usize {
    let cfg = net.config();
    cfg.layers * (cfg.state_width() + if cfg.cell.has_cell_state() { cfg.hidden } else { 0 })
}

/// A state (B = 1) as one vector, h then c.
fn flat<F: Copy>(s: &State<F>) -> Vec<F> {
    s.h.iter().chain(&s.c).copied().collect()
}

/// Sets entry k of a state (B = 1) seen as one vector, h then c.
fn set_unit<F: Copy>(s: &mut State<F>, k: usize, v: F) {
    let n = s.h.len();
    if k < n { s.h[k] = v } else { s.c[k - n] = v }
}
