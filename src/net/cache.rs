//! A layer's cache: what the backward pass of one layer (one direction) needs from its forward
//! pass, plus its gradient inputs, sized once for `max_steps` steps of a batch.

use crate::float::Float;
use crate::net::NetConfig;

/// Per-layer cache: what the backward pass of one layer needs, plus its gradient inputs.
#[derive(Clone, Debug)]
pub(crate) struct LayerCache<F> {
    /// (T, B, G·H): pre-activations → activated gates (forward) → dL/d(input pre-activations).
    pub gates: Vec<F>,
    /// (T+1, B, H): hidden states, row 0 the initial state.
    pub hs: Vec<F>,
    /// (T+1, B, H): LSTM cell states, row 0 the initial state; empty for other cells.
    pub cs: Vec<F>,
    /// (T, B, H): LSTM tanh(c_t) (with layer norm tanh(γ ⊙ ĉ_t + β)), GRU h_n, the RNN's h̃_t
    /// under zoneout (its h_t is then a blend); else empty.
    pub aux: Vec<F>,
    /// (T, B, G·H): dL/d(recurrent pre-activations) where they are kept apart from the input
    /// side's — the GRU's W_hh·h + b_hh, the LayerNorm-LSTM's W_hh·h before its norm; else empty.
    pub dgates_h: Vec<F>,
    /// (H, G·H): W_hhᵀ, refreshed at each forward pass so the per-step GEMM reads the weights
    /// in the layout the GEMM kernel streams without repacking them every step.
    pub w_hh_t: Vec<F>,
    /// (T, B, H): dL/dh_t arriving from above (readout or next layer); during backward the
    /// gradient from the future is added in place, so afterwards it holds the total dL/dh_t.
    pub dh: Vec<F>,
    /// With a projection (else empty; hs, dh, W_hhᵀ are then P wide): (T, B, H) the cell outputs
    /// m_t = o ⊙ tanh(c_t) that h_t = W_hr m_t projects. With a projection or layer norm: (B, H)
    /// one step's scratch (dL/dm_t, or dL/dĉ_t).
    pub ms: Vec<F>,
    pub dm: Vec<F>,
    /// With layer norm (else empty): (T, B, G·H) the normalised W_ih·x_t and W_hh·h_{t−1},
    /// (T, B, H) the normalised c_t, (3, T, B) each row's 1/σ of the three, and (B, 2H) each
    /// row's dγ and dβ of the norm of c, accumulated over the backward pass, then (G·H) Σ_rows da.
    pub norm_x: Vec<F>,
    pub norm_h: Vec<F>,
    pub norm_c: Vec<F>,
    pub rstd: Vec<F>,
    pub dnorm_c: Vec<F>,
    /// With zoneout (else empty; `net/zoneout.rs`): (T, B, H) the hold masks of h and of c (0 or
    /// 1 in training, the rate's expectation in evaluation), and (B, H) one step's scratch for
    /// each (dL/dh̃_t; the part of dL/dc_t that passes the cell).
    pub zone_h: Vec<F>,
    pub zone_c: Vec<F>,
    pub zone_dh: Vec<F>,
    pub zone_dc: Vec<F>,
    /// bf16 products (`Plan::precision`): W_hhᵀ (forward) or W_hh (backward) packed once per
    /// pass for the per-step products of the row paths; empty otherwise (it grows on first use).
    pub w_hh_pack: crate::kernels::bf16::PackedB,
    /// f32 products on AVX-512F (`layer::Packing::Panels`): W_hhᵀ or W_hh packed once per pass
    /// into the panels of `kernels/panels.rs`; empty otherwise (it grows on first use).
    pub w_hh_panels: crate::kernels::panels::Panels,
    /// Passes with lengths: the live rows of the steps with ended rows, gathered a chunk at a
    /// time for the weight-gradient products (`layer::weight_grads`); sized by
    /// `Workspace::set_lengths`, empty until then.
    pub pack: Vec<F>,
}

/// The element counts of a layer cache's buffers for `cfg`, `t` steps and `b` rows, in the
/// order of [`LayerCache`]'s fields (in u128: sizes that cannot exist are estimated, not
/// overflowed).
fn sizes(cfg: &NetConfig, t: usize, b: usize) -> [u128; 18] {
    let w = |n: usize| n as u128;
    let (t, b, h, p) = (w(t), w(b), w(cfg.hidden), w(cfg.state_width()));
    let gh = w(cfg.cell.gates()) * h;
    let (lstm, proj, norm) = (cfg.cell.has_cell_state(), cfg.proj_size > 0, cfg.layer_norm);
    let on = |yes: bool, n: u128| if yes { n } else { 0 };
    let (zh, zc) = (cfg.zoneout.h > 0.0, cfg.zoneout.c > 0.0 && lstm);
    [
        t * b * gh,
        (t + 1) * b * p,
        on(lstm, (t + 1) * b * h),
        on(cfg.cell.has_aux() || zh, t * b * h),
        on(cfg.cell.recurrent_apart() || norm, t * b * gh),
        p * gh,
        t * b * p,
        on(proj, t * b * h),
        on(proj || norm, b * h),
        on(norm, t * b * gh),
        on(norm, t * b * gh),
        on(norm, t * b * h),
        on(norm, 3 * t * b),
        on(norm, 2 * b * h + gh),
        on(zh, t * b * h),
        on(zc, t * b * h),
        on(zh, b * h),
        on(zc, b * h),
    ]
}

impl<F: Float> LayerCache<F> {
    /// A zeroed cache for `t` steps of `b` rows (sizes the workspace has checked against the
    /// memory available).
    pub(crate) fn new(cfg: &NetConfig, t: usize, b: usize) -> Self {
        // (Struct fields are evaluated in the order written: the order of `sizes`.)
        let mut bufs = sizes(cfg, t, b).into_iter().map(|n| vec![F::zero(); n as usize]);
        let mut next = || bufs.next().unwrap_or_default();
        LayerCache {
            gates: next(),
            hs: next(),
            cs: next(),
            aux: next(),
            dgates_h: next(),
            w_hh_t: next(),
            dh: next(),
            ms: next(),
            dm: next(),
            norm_x: next(),
            norm_h: next(),
            norm_c: next(),
            rstd: next(),
            dnorm_c: next(),
            zone_h: next(),
            zone_c: next(),
            zone_dh: next(),
            zone_dc: next(),
            w_hh_pack: Default::default(),
            w_hh_panels: Default::default(),
            pack: Vec::new(),
        }
    }

    /// The elements a cache for `cfg`, `t` steps and `b` rows holds, computed without
    /// allocating.
    pub(crate) fn estimate(cfg: &NetConfig, t: usize, b: usize) -> u128 {
        sizes(cfg, t, b).iter().sum()
    }

    /// The elements of a cache's `pack` for `cfg` and a layer input `input` wide (allocated by
    /// `Workspace::set_lengths` for passes with lengths).
    pub(crate) fn pack_len(cfg: &NetConfig, input: usize) -> usize {
        use crate::net::layer::{Dims, PACK_ROWS, Widths};
        let dims = Dims::new(cfg, 1, 1, 1, crate::kernels::Precision::F32);
        PACK_ROWS * Widths::of(&dims, input).total()
    }

    /// The elements this cache holds.
    pub(crate) fn len(&self) -> usize {
        let c = self;
        [&c.gates, &c.hs, &c.cs, &c.aux, &c.dgates_h, &c.w_hh_t, &c.dh, &c.ms, &c.dm, &c.norm_x, &c.norm_h, &c.norm_c]
            .into_iter()
            .chain([&c.rstd, &c.dnorm_c, &c.zone_h, &c.zone_c, &c.zone_dh, &c.zone_dc, &c.pack])
            .map(|v| v.len())
            .sum()
    }
}
