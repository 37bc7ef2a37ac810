//! SnAp-1 for the plain cells at about a forward step's cost: each layer's unit k carries only
//! the influence of its own gate rows on its own state (h_k, and the LSTM's c_k), the entries
//! of M one step can reach within a layer — so J_t shrinks to a 2×2 (or 1×1) block per unit and
//! Ī_t to one coefficient per gate times the row's inputs z = [x_t; h_{t−1}; 1; 1]:
//!
//! ```text
//! a_{g,k} = W_ih[g,k]·x_t + b_ih[g,k] + W_hh[g,k]·h_{t−1} + b_hh[g,k]      (z the row's inputs)
//! M_t[s_k; g,k,·] = Σ_{s'∈{h_k,c_k}} ∂s_k/∂s'_{t−1} · M_{t−1}[s'; g,k,·] + ∂s_k/∂a_{g,k} · z
//! dℓ_t/dθ      ⊇ Σ_k Σ_{s∈{h_k,c_k}} ∂ℓ_t/∂s_{t−1} · M_{t−1}[s; g,k,·]
//! ```
//! (the GRU's n row reads r_k ⊙ h_{t−1} and r_k·b_hn: its recurrent side is scaled by r_k). The
//! step's own gradient (through every layer, the embedding and the readout) comes from the
//! engine's one-step backward pass, as for the other methods. The derivatives are the cells'
//! (`cell/`), read from the activations the forward pass cached; `online::tests` checks this
//! path against the generic one (the same pattern kept from full RTRL updates) to rounding.
//!
//! Memory: L·H·G·(I + H + 2) values per state kind — about the recurrent parameters' count (×2
//! for the LSTM) — against RTRL's S·P.

use crate::cell::CellKind;
use crate::float::Float;
use crate::net::{Input, InputKind, LayerParams, Net, NetConfig, State, Workspace};

/// SnAp-1 in the per-unit form (see the module docs) for a net [`Snap::supports`].
pub(crate) struct Snap<F> {
    cell: CellKind,
    hidden: usize,
    layers: Vec<Layer<F>>,
}

/// One layer's influence and the values of the step being taken.
struct Layer<F> {
    params: LayerParams,
    /// I, the layer's input width; W = I + H + 2 the row's inputs.
    input: usize,
    /// (H, G, W): ∂h_k/∂θ_{g,k,·} and (LSTM) ∂c_k/∂θ_{g,k,·}.
    m_h: Vec<F>,
    m_c: Vec<F>,
    /// The step's z = [x_t; h_{t−1}; 1; 1] (W), activated gates (G·H), c_{t−1} (LSTM), and
    /// tanh c_t (LSTM), h_n (GRU) or h_t (RNN) (H).
    z: Vec<F>,
    gates: Vec<F>,
    c_prev: Vec<F>,
    aux: Vec<F>,
}

/// One unit's step: the 2×2 block of J_t (rows and columns h, c) and, per gate, ∂s/∂a_{g,k}
/// for the input side (x_t, b_ih) and the recurrent side (h_{t−1}, b_hh) of the row.
struct Unit<F> {
    j: [[F; 2]; 2],
    dx: [[F; 4]; 2],
    dh: [[F; 4]; 2],
}

impl<F: Float> Snap<F> {
    /// True for the nets this form covers: causal, without layer norm, projection or zoneout
    /// (their steps mix units or hold them).
    pub(crate) fn supports(cfg: &NetConfig) -> bool {
        !cfg.bidirectional && !cfg.layer_norm && cfg.proj_size == 0 && cfg.zoneout.is_none()
    }

    /// The values it carries for `cfg` (without allocating).
    pub(crate) fn values(cfg: &NetConfig) -> u64 {
        let (g, h) = (cfg.cell.gates() as u64, cfg.hidden as u64);
        let kinds = if cfg.cell.has_cell_state() { 2 } else { 1 };
        (0..cfg.layers)
            .map(|k| {
                let i = if k == 0 { cfg.input_width() as u64 } else { h };
                kinds * h * g * (i + h + 2)
            })
            .sum()
    }

    pub(crate) fn new(net: &Net) -> Self {
        let cfg = net.config();
        let (g, h) = (cfg.cell.gates(), cfg.hidden);
        let lstm = cfg.cell.has_cell_state();
        let layers = (0..cfg.layers)
            .map(|k| {
                let params = *net.layer_params(k);
                let input = params.input;
                let n = h * g * (input + h + 2);
                Layer {
                    params,
                    input,
                    m_h: vec![F::zero(); n],
                    m_c: vec![F::zero(); if lstm { n } else { 0 }],
                    z: vec![F::zero(); input + h + 2],
                    gates: vec![F::zero(); g * h],
                    c_prev: vec![F::zero(); if lstm { h } else { 0 }],
                    aux: vec![F::zero(); h],
                }
            })
            .collect();
        Snap { cell: cfg.cell, hidden: h, layers }
    }

    /// A new sequence: no influence carried.
    pub(crate) fn reset(&mut self) {
        for l in &mut self.layers {
            l.m_h.fill(F::zero());
            l.m_c.fill(F::zero());
        }
    }

    /// The influence, layer by layer (h, then c), to save and restore.
    pub(crate) fn tensors(&self) -> impl Iterator<Item = &Vec<F>> {
        self.layers.iter().flat_map(|l| [&l.m_h, &l.m_c])
    }

    pub(crate) fn tensors_mut(&mut self) -> impl Iterator<Item = &mut Vec<F>> {
        self.layers.iter_mut().flat_map(|l| [&mut l.m_h, &mut l.m_c])
    }

    /// Reads what the step needs from its forward pass (B = 1, one step): every layer's input
    /// row, previous state and activations. `x` is the step's input, `prev` s_{t−1}.
    pub(crate) fn capture(&mut self, net: &Net, params: &[F], ws: &Workspace<F>, x: Input<'_, F>, prev: &State<F>) {
        let cfg = net.config();
        let h = self.hidden;
        for (k, layer) in self.layers.iter_mut().enumerate() {
            let i = layer.input;
            let (xs, rest) = layer.z.split_at_mut(i);
            match (k, x, cfg.input) {
                (0, Input::Tokens(ids), InputKind::Tokens { embedding_dim: e, .. }) => {
                    let table = net.encoder_offset().unwrap_or(0);
                    let at = table + ids[0] as usize * e;
                    xs.copy_from_slice(&params[at..at + e]);
                }
                (0, Input::Dense(row), _) => xs.copy_from_slice(&row[..i]),
                (0, Input::Tokens(_), _) => unreachable!("token input to a dense net was refused by forward"),
                _ => xs.copy_from_slice(&ws.layers[k - 1].hs[h..2 * h]),
            }
            rest[..h].copy_from_slice(&prev.h[k * h..(k + 1) * h]);
            rest[h] = F::one();
            rest[h + 1] = F::one();
            let cache = &ws.layers[k];
            let n = layer.gates.len();
            layer.gates.copy_from_slice(&cache.gates[..n]);
            match self.cell {
                CellKind::Lstm => {
                    layer.c_prev.copy_from_slice(&prev.c[k * h..(k + 1) * h]);
                    layer.aux.copy_from_slice(&cache.aux[..h]);
                }
                CellKind::Gru => layer.aux.copy_from_slice(&cache.aux[..h]),
                CellKind::RnnTanh | CellKind::RnnRelu => layer.aux.copy_from_slice(&cache.hs[h..2 * h]),
            }
        }
    }

    /// dℓ_t/dθ through the earlier steps, `scale` times, into `grads`: dℓ_t/ds_{t−1} (`dh0`,
    /// `dc0`: (L, H) each) times the influence carried so far.
    pub(crate) fn add_gradient(&self, dh0: &[F], dc0: &[F], scale: F, grads: &mut [F]) {
        let (g, h) = (self.cell.gates(), self.hidden);
        for (k, layer) in self.layers.iter().enumerate() {
            let (i, w) = (layer.input, layer.input + h + 2);
            let p = layer.params;
            for u in 0..h {
                let dh = scale * dh0[k * h + u];
                let dc = if layer.m_c.is_empty() { F::zero() } else { scale * dc0[k * h + u] };
                for gate in 0..g {
                    let row = gate * h + u;
                    let at = (u * g + gate) * w;
                    let mh = &layer.m_h[at..at + w];
                    let mc = if layer.m_c.is_empty() { mh } else { &layer.m_c[at..at + w] };
                    let pieces = [(p.w_ih + row * i, 0, i), (p.w_hh + row * h, i, h), (p.b_ih + row, i + h, 1)];
                    for (start, from, len) in pieces.into_iter().chain([(p.b_hh + row, i + h + 1, 1)]) {
                        let out = &mut grads[start..start + len];
                        for ((o, &a), &b) in out.iter_mut().zip(&mh[from..from + len]).zip(&mc[from..from + len]) {
                            *o += dh * a + dc * b;
                        }
                    }
                }
            }
        }
    }

    /// M_{t−1} → M_t from the captured step.
    pub(crate) fn advance(&mut self, params: &[F]) {
        let (g, h) = (self.cell.gates(), self.hidden);
        for layer in &mut self.layers {
            let (i, w) = (layer.input, layer.input + h + 2);
            for u in 0..h {
                let unit = unit_step(self.cell, layer, params, u, h);
                let [[jhh, jhc], [jch, jcc]] = unit.j;
                for gate in 0..g {
                    let at = (u * g + gate) * w;
                    let z = &layer.z;
                    let (xh, hh) = (unit.dx[0][gate], unit.dh[0][gate]);
                    let (xc, hc) = (unit.dx[1][gate], unit.dh[1][gate]);
                    // The row's inputs by side: x_t and b_ih, then h_{t−1} and b_hh.
                    let sides =
                        [(0, i, xh, xc), (i, i + h, hh, hc), (i + h, i + h + 1, xh, xc), (i + h + 1, w, hh, hc)];
                    for (from, to, ch, cc) in sides {
                        let z = &z[from..to];
                        let mh = &mut layer.m_h[at + from..at + to];
                        if layer.m_c.is_empty() {
                            for (m, &zj) in mh.iter_mut().zip(z) {
                                *m = jhh * *m + ch * zj;
                            }
                        } else {
                            let mc = &mut layer.m_c[at + from..at + to];
                            for ((a, b), &zj) in mh.iter_mut().zip(mc.iter_mut()).zip(z) {
                                let (old_h, old_c) = (*a, *b);
                                *a = jhh * old_h + jhc * old_c + ch * zj;
                                *b = jch * old_h + jcc * old_c + cc * zj;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Unit `u`'s J block and ∂s/∂a per gate from the captured step (the cells' derivatives, as in
/// `cell/`): w_g = W_hh[g·H + u, u], the unit's weight on its own previous h.
fn unit_step<F: Float>(cell: CellKind, layer: &Layer<F>, params: &[F], u: usize, h: usize) -> Unit<F> {
    let one = F::one();
    let zero = F::zero();
    let w = |gate: usize| params[layer.params.w_hh + (gate * h + u) * h + u];
    let a = |gate: usize| layer.gates[gate * h + u];
    let mut unit = Unit { j: [[zero; 2]; 2], dx: [[zero; 4]; 2], dh: [[zero; 4]; 2] };
    match cell {
        CellKind::Lstm => {
            // c_t = f c_{t−1} + i g,  h_t = o tanh c_t.
            let (i, f, g, o, tc, cp) = (a(0), a(1), a(2), a(3), layer.aux[u], layer.c_prev[u]);
            let dc = [g * i * (one - i), cp * f * (one - f), i * (one - g * g), zero];
            let dh_dc = o * (one - tc * tc);
            let dh = [dh_dc * dc[0], dh_dc * dc[1], dh_dc * dc[2], tc * o * (one - o)];
            let jch: F = (0..4).map(|k| dc[k] * w(k)).sum();
            let jhh: F = (0..4).map(|k| dh[k] * w(k)).sum();
            unit.j = [[jhh, dh_dc * f], [jch, f]];
            unit.dx = [dh, dc];
            unit.dh = [dh, dc];
        }
        CellKind::Gru => {
            // h_t = (1 − z) n + z h_{t−1},  n = tanh(a_n^x + r h_n).
            let (r, z, n, hn, hp) = (a(0), a(1), a(2), layer.aux[u], layer.z[layer.input + u]);
            let dn = (one - z) * (one - n * n);
            let dz = (hp - n) * z * (one - z);
            let dr = dn * hn * r * (one - r);
            unit.j[0][0] = z + dr * w(0) + dz * w(1) + dn * r * w(2);
            unit.dx[0] = [dr, dz, dn, zero];
            unit.dh[0] = [dr, dz, dn * r, zero];
        }
        CellKind::RnnTanh | CellKind::RnnRelu => {
            let ht = layer.aux[u];
            let d = if cell == CellKind::RnnRelu { if ht > zero { one } else { zero } } else { one - ht * ht };
            unit.j[0][0] = d * w(0);
            unit.dx[0][0] = d;
            unit.dh[0][0] = d;
        }
    }
    unit
}
