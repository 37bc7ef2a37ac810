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
//! sequence: a tool to measure and teach with at small H, not a fast trainer — except SnAp-1 on
//! the plain cells, which `snap` computes per unit at about a forward step's cost (the path a
//! char-LM learning online takes).
//!
//! SnAp-1's pattern, here: each layer's unit k keeps the influence of its own gate rows (of
//! W_ih, W_hh, b_ih, b_hh) on its own h_k and c_k — the entries one step reaches, with the
//! unit's (h_k, c_k) block closed (for the LSTM also the o row's influence on c_k, which
//! arrives through h_k a step later), so it equals RTRL wherever each unit's recurrence is its
//! own (a diagonal W_hh); the embedding, the readout and influence across layers get their
//! one-step gradient only.

mod snap;

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
    /// SnAp-1: the influence of each unit's own gate rows on its own state (h_k, c_k), the
    /// rest dropped (see the module docs).
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
    gradient_by(net, params, method, seqs, grads, true)
}

/// [`gradient_report`]; `fast`: SnAp-1 on the plain cells in its per-unit form (`snap`), else
/// from full RTRL updates masked to its pattern (the reference the per-unit form is tested
/// against).
fn gradient_by<F: Float>(
    net: &Net,
    params: &[F],
    method: Method,
    seqs: Sequences<'_, F>,
    grads: &mut [F],
    fast: bool,
) -> Result<(F, u64)> {
    let Sequences { input, targets, batch: b, init } = seqs;
    let cfg = *net.config();
    supported(net, method)?;
    check_len("parameter slab", net.num_params(), params.len())?;
    check_len("gradient slab", net.num_params(), grads.len())?;
    let rows = check_sizes(net, &seqs)?;
    let steps = rows / b;
    let weight = |k: usize| targets.mask.map_or(F::one(), |m| m[k]);
    let total: f64 = (0..rows).map(|k| weight(k).f64()).sum();
    let mut ws = net.workspace::<F>(1, 1, 1)?;
    let mut row = Row::new(net, method, fast);
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

/// Ok for a net forward-mode methods can follow step by step: causal, with a per-step head;
/// SnAp-1 also needs a state of H units (no projection).
fn supported(net: &Net, method: Method) -> Result<()> {
    let cfg = net.config();
    if method == Method::Snap1 && cfg.proj_size > 0 {
        return Err(Error::Config(
            "SnAp-1 keeps each unit's influence on its own h and c: not with `proj_size` (use RTRL or UORO)".into(),
        ));
    }
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
    streams: u64,
}

impl<F: Float> Learner<F> {
    /// A learner for `net` (causal, per-step head) by `method`; it holds the influence state of
    /// one stream (RTRL and SnAp-1: S·P values, UORO: S + P).
    pub fn new(net: &Net, method: Method) -> Result<Self> {
        supported(net, method)?;
        let (needed, available) = (Self::estimate_bytes(net, method), crate::kernels::machine::available_memory());
        if needed > available {
            let what = format!("the influence state of {method:?} for {} parameters", net.num_params());
            return Err(Error::Memory { what, needed, available });
        }
        let row = Row::new(net, method, true);
        let ws = net.workspace::<F>(1, 1, 1)?;
        Ok(Learner { method, row, ws, grads: vec![F::zero(); net.num_params()], streams: 0 })
    }

    /// Starts a new stream from state `init` (B = 1; zeros if `None`): no influence carried.
    pub fn reset(&mut self, net: &Net, init: Option<&State<F>>) {
        self.streams += 1;
        // (UORO: each stream its own signs, from the seed and the stream's number.)
        let method = match self.method {
            Method::Uoro { seed } => Method::Uoro { seed: seed ^ (self.streams << 32) },
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

    /// The bytes a learner for `net` by `method` holds (f32), computed without allocating: the
    /// influence state, the gradient and one step's workspace.
    pub fn estimate_bytes(net: &Net, method: Method) -> u64 {
        let (s, p) = (state_len(net) as u128, net.num_params() as u128);
        let values = match method {
            Method::Snap1 if snap::Snap::<F>::supports(net.config()) => {
                snap::Snap::<F>::values(net.config()) as u128 + p
            }
            // M, M_{t−1}, Ī and the kept pattern (SnAp-1), J.
            Method::Rtrl | Method::Snap1 => 3 * s * p + s * s + p,
            Method::Uoro { .. } => s * p + s * s + 3 * p,
        };
        let ws = crate::net::Workspace::<F>::estimate_bytes(net.config(), 1, 1) as u128;
        u64::try_from(values * 4 + p * 4 + ws).unwrap_or(u64::MAX)
    }

    /// About the floating-point operations of one step (a forward and backward step costs
    /// about 6 per parameter): SnAp-1 per unit (plain cells) a few per carried value; RTRL, UORO
    /// and SnAp-1's generic form S one-step passes for J and Ī, and RTRL's S²·P product.
    pub fn flops_per_step(net: &Net, method: Method) -> f64 {
        let (s, p) = (state_len(net) as f64, net.num_params() as f64);
        match method {
            Method::Snap1 if snap::Snap::<F>::supports(net.config()) => {
                6.0 * p + 8.0 * snap::Snap::<F>::values(net.config()) as f64
            }
            Method::Rtrl | Method::Snap1 => 6.0 * p * (s + 1.0) + 2.0 * s * s * p,
            Method::Uoro { .. } => 6.0 * p * (s + 1.0) + 4.0 * s * p,
        }
    }

    /// The streams begun so far (each [`Learner::reset`] begins one).
    pub fn streams(&self) -> u64 {
        self.streams
    }

    /// Everything the learner carries from step to step besides [`Learner::streams`], as
    /// named vectors (none empty) — to save a stream mid-way and [`Learner::restore`] it bit
    /// for bit.
    pub fn carried(&self) -> Vec<(String, Vec<F>)> {
        let r = &self.row;
        let mut out = vec![("h".to_string(), r.state.h.clone()), ("c".to_string(), r.state.c.clone())];
        if let Some(s) = &r.snap {
            out.extend(s.tensors().enumerate().map(|(k, t)| (format!("m{k}"), t.clone())));
        } else {
            out.push(("m".into(), r.m.clone()));
            out.push(("s_tilde".into(), r.s_tilde.clone()));
            out.push(("theta_tilde".into(), r.theta_tilde.clone()));
            // UORO's random stream: its position, as four 16-bit pieces (exact in f32).
            let pos = r.rng.get_word_pos();
            out.push(("rng".into(), (0..8).map(|k| F::of(((pos >> (16 * k)) & 0xffff) as f64)).collect()));
        }
        out.retain(|(_, v)| !v.is_empty());
        out
    }

    /// Restores what [`Learner::carried`] gave (and the stream count) into a learner for the
    /// same net and method.
    pub fn restore(&mut self, net: &Net, streams: u64, carried: &[(String, Vec<F>)]) -> Result<()> {
        let mut fresh = Learner::<F>::new(net, self.method)?;
        fresh.streams = streams.saturating_sub(1);
        fresh.reset(net, None);
        let names = fresh.carried();
        if names.len() != carried.len() {
            return Err(Error::Malformed(format!("{} online tensors, expected {}", carried.len(), names.len())));
        }
        for ((name, want), (got_name, got)) in names.iter().zip(carried) {
            if name != got_name || want.len() != got.len() {
                return Err(Error::Malformed(format!(
                    "online tensor '{got_name}' ({} values) does not match '{name}' ({} values)",
                    got.len(),
                    want.len()
                )));
            }
        }
        let value = |name: &str| carried.iter().find(|(n, _)| n == name).map_or(&[][..], |(_, v)| &v[..]);
        let r = &mut fresh.row;
        r.state.h.copy_from_slice(value("h"));
        r.state.c.copy_from_slice(value("c"));
        if let Some(s) = &mut r.snap {
            for (k, t) in s.tensors_mut().enumerate() {
                t.copy_from_slice(value(&format!("m{k}")));
            }
        } else {
            r.m.copy_from_slice(value("m"));
            r.s_tilde.copy_from_slice(value("s_tilde"));
            r.theta_tilde.copy_from_slice(value("theta_tilde"));
            let pos = value("rng").iter().enumerate().map(|(k, v)| (v.f64() as u128) << (16 * k)).sum();
            if !r.s_tilde.is_empty() {
                r.rng.set_word_pos(pos);
            }
        }
        *self = fresh;
        Ok(())
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
    /// SnAp-1 on the plain cells: the per-unit form (then the buffers above are empty), and
    /// its one step's dℓ/dh_{t−1}, dℓ/dc_{t−1}.
    snap: Option<snap::Snap<F>>,
    next: State<F>,
}

impl<F: Float> Row<F> {
    /// A row for `net`; `fast`: SnAp-1 on the plain cells in its per-unit form.
    fn new(net: &Net, method: Method, fast: bool) -> Self {
        let (s, p) = (state_len(net), net.num_params());
        let seed = if let Method::Uoro { seed } = method { seed } else { 0 };
        if fast && method == Method::Snap1 && snap::Snap::<F>::supports(net.config()) {
            let none = Vec::new;
            return Row {
                state: State::zeros(net.config(), 1),
                m: none(),
                m_prev: none(),
                s_tilde: none(),
                theta_tilde: none(),
                kept: Vec::new(),
                j: none(),
                i_bar: none(),
                scratch: vec![F::zero(); p],
                rng: ChaCha8Rng::seed_from_u64(seed),
                snap: Some(snap::Snap::new(net)),
                next: State::zeros(net.config(), 1),
            };
        }
        let full = !matches!(method, Method::Uoro { .. });
        Row {
            state: State::zeros(net.config(), 1),
            m: vec![F::zero(); if full { s * p } else { 0 }],
            m_prev: vec![F::zero(); if full { s * p } else { 0 }],
            s_tilde: vec![F::zero(); if full { 0 } else { s }],
            theta_tilde: vec![F::zero(); if full { 0 } else { p }],
            kept: if method == Method::Snap1 { unit_pattern(net) } else { Vec::new() },
            j: vec![F::zero(); s * s],
            i_bar: vec![F::zero(); s * p],
            scratch: vec![F::zero(); p],
            rng: ChaCha8Rng::seed_from_u64(seed),
            snap: None,
            next: State::zeros(net.config(), 1),
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
        if let Some(snap) = &mut self.snap {
            snap.reset();
        }
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
        let sc = F::of(scale);
        // The loss of this step: its gradient through step t, and dℓ_t/ds_{t−1}.
        let one = [F::one()];
        let targets = Targets { target: data.target, mask: Some(&one) };
        let loss = net.forward(params, ws, data.input, Some(targets), Some(&self.state))?.f64();
        if let Some(snap) = &mut self.snap {
            // (SnAp-1 per unit reads the step's activations before backward overwrites them.)
            snap.capture(net, params, ws, data.input, &self.state);
        }
        self.scratch.fill(F::zero());
        net.backward(params, ws, &mut self.scratch)?;
        for (g, &d) in grads.iter_mut().zip(&self.scratch) {
            *g += sc * d;
        }
        if let Some(snap) = &mut self.snap {
            // SnAp-1 per unit: the influence carried per unit, no J_t or Ī_t built.
            snap.add_gradient(&ws.dh0, &ws.dc0, sc, grads);
            snap.advance(params);
            ws.state_at(1, &mut self.next);
            std::mem::swap(&mut self.state, &mut self.next);
            return Ok(loss);
        }
        let (s, p) = (self.j.len().isqrt(), params.len());
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
        if let Some(s) = &self.snap {
            s.tensors().map(|t| t.len() as u64).sum()
        } else if !self.kept.is_empty() {
            self.kept.iter().filter(|&&k| k).count() as u64
        } else if self.s_tilde.is_empty() {
            self.m.len() as u64
        } else {
            (self.s_tilde.len() + self.theta_tilde.len()) as u64
        }
    }

    /// RTRL: M ← J M + Ī; SnAp-1 the same, keeping only the entries of its pattern.
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
                for (m, &k) in row.iter_mut().zip(&self.kept[a * p..(a + 1) * p]) {
                    if !k {
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

/// SnAp-1's pattern (S × P, see the module docs): entry (s, θ) is kept where θ is a gate-row
/// parameter (W_ih, W_hh, b_ih, b_hh) of the unit whose h or c is s.
fn unit_pattern(net: &Net) -> Vec<bool> {
    let cfg = net.config();
    let (s, p, hp, h) = (state_len(net), net.num_params(), cfg.state_width(), cfg.hidden);
    // The (layer, unit) each parameter's gate row belongs to.
    let mut owner = vec![None; p];
    for k in 0..cfg.layers {
        let lp = net.layer_params(k);
        let gh = cfg.cell.gates() * h;
        for (start, width) in [(lp.w_ih, lp.input), (lp.w_hh, hp), (lp.b_ih, 1), (lp.b_hh, 1)] {
            for (row, o) in owner[start..start + gh * width].chunks_exact_mut(width).enumerate() {
                o.fill(Some((k, row % h)));
            }
        }
    }
    let mut kept = vec![false; s * p];
    let h_len = cfg.layers * hp;
    for (a, row) in kept.chunks_exact_mut(p).enumerate() {
        // State entry a: layer k's h (P wide) then, after every h, each layer's c.
        let unit = if a < h_len { (a / hp, a % hp) } else { ((a - h_len) / h, (a - h_len) % h) };
        for (k, o) in row.iter_mut().zip(&owner) {
            *k = *o == Some(unit);
        }
    }
    kept
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

#[cfg(test)]
mod tests {
    //! SnAp-1's per-unit form (`snap`) against the same pattern kept from full RTRL updates.
    use super::*;
    use crate::cell::CellKind;
    use crate::net::{Head, LossKind, NetConfig, Zoneout};

    fn uniform(rng: &mut ChaCha8Rng, n: usize, a: f64) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-a..a)).collect()
    }

    /// Every cell, 1–2 layers, dense and token input, B = 2 sequences of 6 steps from a random
    /// state, a weighted loss: the two forms' gradients agree to 1e-12 and carry the same number
    /// of values; and they differ from RTRL (the pattern drops something).
    #[test]
    fn snap1_per_unit_equals_snap1_from_rtrl_updates() {
        let mut rng = ChaCha8Rng::seed_from_u64(41);
        for cell in CellKind::ALL {
            for (layers, tokens) in [(1, false), (2, false), (1, true), (2, true)] {
                let input = if tokens {
                    InputKind::Tokens { vocab: 5, embedding_dim: 3 }
                } else {
                    InputKind::Dense { size: 3 }
                };
                let cfg = NetConfig {
                    cell,
                    input,
                    hidden: 4,
                    layers,
                    output: 3,
                    loss: LossKind::CrossEntropy,
                    head: Head::PerStep,
                    bidirectional: false,
                    proj_size: 0,
                    layer_norm: false,
                    zoneout: Zoneout::NONE,
                };
                let net = Net::new(cfg).unwrap();
                let (b, t) = (2, 6);
                let params = uniform(&mut rng, net.num_params(), 0.8);
                let x = uniform(&mut rng, t * b * 3, 1.0);
                let ids: Vec<u32> = (0..t * b).map(|_| rng.random_range(0..5)).collect();
                let y: Vec<u32> = (0..t * b).map(|_| rng.random_range(0..3)).collect();
                let w: Vec<f64> =
                    (0..t * b).map(|k| if k % 5 == 2 { 0.0 } else { rng.random_range(0.5..2.0) }).collect();
                let mut init = State::zeros(&cfg, b);
                init.h = uniform(&mut rng, init.h.len(), 0.5);
                init.c = uniform(&mut rng, init.c.len(), 0.5);
                let input = if tokens { Input::Tokens(&ids) } else { Input::Dense(&x) };
                let seqs = Sequences {
                    input,
                    targets: Targets { target: Target::Classes(&y), mask: Some(&w) },
                    batch: b,
                    init: Some(&init),
                };
                let run = |method, fast| {
                    let mut g = vec![0.0; net.num_params()];
                    let (loss, carried) = gradient_by(&net, &params, method, seqs, &mut g, fast).unwrap();
                    (loss, carried, g)
                };
                let (loss, carried, fast) = run(Method::Snap1, true);
                let (loss_ref, carried_ref, reference) = run(Method::Snap1, false);
                let (_, _, rtrl) = run(Method::Rtrl, false);
                let worst = |a: &[f64], b: &[f64]| {
                    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0.0, f64::max)
                };
                let what = format!("{cell} L={layers} tokens={tokens}");
                assert!((loss - loss_ref).abs() < 1e-14, "{what}: loss {loss} vs {loss_ref}");
                assert_eq!(carried, carried_ref, "{what}: values carried");
                let err = worst(&fast, &reference);
                assert!(err < 1e-12, "{what}: the per-unit form differs by {err:.2e}");
                assert!(worst(&fast, &rtrl) > 1e-6, "{what}: SnAp-1 equals RTRL with a full W_hh");
            }
        }
    }
}
