//! LSTM cell, PyTorch `nn.LSTM` (gate order i, f, g, o):
//!
//! ```text
//! [a_i a_f a_g a_o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh      (B, 4H)
//! i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
//! c_t = f ⊙ c_{t-1} + i ⊙ g
//! h_t = o ⊙ tanh(c_t)
//! ```
//! Backward, with dc_t arriving from the future and dh_t from the output and the future:
//!
//! ```text
//! do = dh_t ⊙ tanh(c_t)                  dc = dc_t + dh_t ⊙ o ⊙ (1 − tanh²(c_t))
//! di = dc ⊙ g    df = dc ⊙ c_{t-1}        dg = dc ⊙ i       dc_{t-1} = dc ⊙ f
//! da_i = di ⊙ i(1−i)   da_f = df ⊙ f(1−f)   da_g = dg ⊙ (1−g²)   da_o = do ⊙ o(1−o)
//! ```
//! `dh_{t-1} = da · W_hh` is a GEMM in the layer. The cache per step: the activated gates
//! (written over the pre-activations), `c_t` and `tanh(c_t)`.

use crate::float::Float;
use multiversion::multiversion;

/// One row's (4H) gates as its i, f, g, o blocks (H each).
#[inline(always)]
fn gate_blocks<F>(gate: &mut [F], hidden: usize) -> [&mut [F]; 4] {
    let (gi, rest) = gate.split_at_mut(hidden);
    let (gf, rest) = rest.split_at_mut(hidden);
    let (gg, go) = rest.split_at_mut(hidden);
    [gi, gf, gg, go]
}

/// Forward step for one batch of B rows.
///
/// - `gates` (B, 4H): in, pre-activations; out, activated gates (i, f, g, o).
/// - `c_prev` (B, H): c_{t−1}. `c`, `tanh_c`, `h` (B, H): out, c_t, tanh(c_t), h_t.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
pub fn forward_step<F: Float>(
    hidden: usize,
    gates: &mut [F],
    c_prev: &[F],
    c: &mut [F],
    tanh_c: &mut [F],
    h: &mut [F],
) {
    let rows = gates.chunks_exact_mut(4 * hidden);
    let rows = rows.zip(c_prev.chunks_exact(hidden)).zip(c.chunks_exact_mut(hidden));
    let rows = rows.zip(tanh_c.chunks_exact_mut(hidden)).zip(h.chunks_exact_mut(hidden));
    for ((((gate, c_prev), c), tanh_c), h) in rows {
        let [gi, gf, gg, go] = gate_blocks(gate, hidden);
        forward_row(gi, gf, gg, go, c_prev, c, tanh_c, h);
    }
}

/// One row of [`forward_step`], or a block of its units (every slice then holds the same units
/// of its gate or state). Separate slices as parameters tell the compiler they do not alias,
/// which is what lets it vectorise the loop; inlined into callers compiled for the CPU's SIMD
/// (`multiversion`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn forward_row<F: Float>(
    gi: &mut [F],
    gf: &mut [F],
    gg: &mut [F],
    go: &mut [F],
    c_prev: &[F],
    c: &mut [F],
    tanh_c: &mut [F],
    h: &mut [F],
) {
    let n = gi.len();
    let (gf, gg, go, c_prev, c, tanh_c, h) =
        (&mut gf[..n], &mut gg[..n], &mut go[..n], &c_prev[..n], &mut c[..n], &mut tanh_c[..n], &mut h[..n]);
    let (gates, out) = ([&mut *gi, &mut *gf, &mut *gg, &mut *go], [&mut *c, &mut *tanh_c, &mut *h]);
    if F::lstm_forward_row(gates, c_prev, out) {
        return;
    }
    for j in 0..n {
        let i = gi[j].sigmoid();
        let f = gf[j].sigmoid();
        let g = gg[j].tanh_act();
        let o = go[j].sigmoid();
        let cj = f * c_prev[j] + i * g;
        let tc = cj.tanh_act();
        (gi[j], gf[j], gg[j], go[j]) = (i, f, g, o);
        c[j] = cj;
        tanh_c[j] = tc;
        h[j] = o * tc;
    }
}

/// Backward step for one batch of B rows.
///
/// - `dh` (B, H): total dL/dh_t.
/// - `dc` (B, H): in, dL/dc_t from step t+1; out, dL/dc_{t−1}.
/// - `gates` (B, 4H): in, the activated gates of step t; out, dL/da (i, f, g, o).
/// - `c_prev`, `tanh_c` (B, H): c_{t−1} and tanh(c_t) from the forward cache.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
pub fn backward_step<F: Float>(hidden: usize, dh: &[F], dc: &mut [F], gates: &mut [F], c_prev: &[F], tanh_c: &[F]) {
    let rows = gates.chunks_exact_mut(4 * hidden).zip(dh.chunks_exact(hidden));
    let rows = rows.zip(dc.chunks_exact_mut(hidden)).zip(c_prev.chunks_exact(hidden));
    for ((((gate, dh), dc), c_prev), tanh_c) in rows.zip(tanh_c.chunks_exact(hidden)) {
        let [gi, gf, gg, go] = gate_blocks(gate, hidden);
        backward_row(gi, gf, gg, go, dh, dc, c_prev, tanh_c);
    }
}

/// One row of [`backward_step`] (separate slices: see [`forward_row`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn backward_row<F: Float>(
    gi: &mut [F],
    gf: &mut [F],
    gg: &mut [F],
    go: &mut [F],
    dh: &[F],
    dc: &mut [F],
    c_prev: &[F],
    tanh_c: &[F],
) {
    let one = F::one();
    let n = gi.len();
    let (gf, gg, go, dh, dc, c_prev, tanh_c) =
        (&mut gf[..n], &mut gg[..n], &mut go[..n], &dh[..n], &mut dc[..n], &c_prev[..n], &tanh_c[..n]);
    for j in 0..n {
        let (i, f, g, o) = (gi[j], gf[j], gg[j], go[j]);
        let tc = tanh_c[j];
        let dct = dc[j] + dh[j] * o * (one - tc * tc);
        gi[j] = dct * g * i * (one - i);
        gf[j] = dct * c_prev[j] * f * (one - f);
        gg[j] = dct * i * (one - g * g);
        go[j] = dh[j] * tc * o * (one - o);
        dc[j] = dct * f;
    }
}

/// The LayerNorm-LSTM's norm of the cell state (Ba et al. 2016): h_t = o ⊙ tanh(γ ⊙ ĉ_t + β)
/// with ĉ_t = LN(c_t) (`cell/norm.rs`); c_t itself, the carried state, is not normalised.
pub(crate) struct CellNorm<'a, F> {
    /// γ, β (H each).
    pub gain: &'a [F],
    pub bias: &'a [F],
    /// (B, H): ĉ_t, written by the forward step, read by the backward one.
    pub c_hat: &'a mut [F],
    /// (B): 1/σ of each row's c_t.
    pub rstd: &'a mut [F],
}

/// Forward step of a LayerNorm-LSTM for B rows: as [`forward_step`] (whose `tanh_c` then holds
/// tanh(γ ⊙ ĉ_t + β)), with the gates' pre-activations already normalised by the layer.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
pub(crate) fn forward_step_norm<F: Float>(
    hidden: usize,
    gates: &mut [F],
    c_prev: &[F],
    c: &mut [F],
    tanh_c: &mut [F],
    h: &mut [F],
    norm: CellNorm<'_, F>,
) {
    let (gain, bias) = (&norm.gain[..hidden], &norm.bias[..hidden]);
    let rows = gates.chunks_exact_mut(4 * hidden).zip(c_prev.chunks_exact(hidden));
    let rows = rows.zip(c.chunks_exact_mut(hidden)).zip(tanh_c.chunks_exact_mut(hidden));
    let rows = rows.zip(h.chunks_exact_mut(hidden)).zip(norm.c_hat.chunks_exact_mut(hidden));
    for ((((((gate, c_prev), c), tanh_c), h), c_hat), rstd) in rows.zip(norm.rstd.iter_mut()) {
        let [gi, gf, gg, go] = gate_blocks(gate, hidden);
        for j in 0..hidden {
            let (i, f, g, o) = (gi[j].sigmoid(), gf[j].sigmoid(), gg[j].tanh_act(), go[j].sigmoid());
            (gi[j], gf[j], gg[j], go[j]) = (i, f, g, o);
            c[j] = f * c_prev[j] + i * g;
        }
        c_hat.copy_from_slice(c);
        *rstd = super::norm::normalize(c_hat);
        for j in 0..hidden {
            let tc = (gain[j] * c_hat[j] + bias[j]).tanh_act();
            tanh_c[j] = tc;
            h[j] = go[j] * tc;
        }
    }
}

/// The gradients of a LayerNorm-LSTM's cell-state norm: (B, 2H) each row's own dγ (H) and dβ
/// (H), accumulated over its steps (summed over the rows by the layer, in a fixed order), and a
/// (B, H) scratch for dL/dĉ_t.
pub(crate) struct CellNormGrad<'a, F> {
    pub gain: &'a [F],
    pub c_hat: &'a [F],
    pub rstd: &'a [F],
    pub acc: &'a mut [F],
    pub scratch: &'a mut [F],
}

/// Backward step of a LayerNorm-LSTM for B rows, laid out as [`backward_step`]: dy = dh ⊙ o ⊙
/// (1 − tanh²) goes through the norm of c_t (`cell/norm.rs`) and joins dc from the future.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
pub(crate) fn backward_step_norm<F: Float>(
    hidden: usize,
    dh: &[F],
    dc: &mut [F],
    gates: &mut [F],
    c_prev: &[F],
    tanh_c: &[F],
    norm: CellNormGrad<'_, F>,
) {
    let one = F::one();
    let gain = &norm.gain[..hidden];
    let rows = gates.chunks_exact_mut(4 * hidden).zip(dh.chunks_exact(hidden));
    let rows = rows.zip(dc.chunks_exact_mut(hidden)).zip(c_prev.chunks_exact(hidden));
    let rows = rows.zip(tanh_c.chunks_exact(hidden)).zip(norm.c_hat.chunks_exact(hidden));
    let rows = rows.zip(norm.scratch.chunks_exact_mut(hidden)).zip(norm.rstd);
    for ((((((((gate, dh), dc), c_prev), tanh_c), c_hat), d_hat), &rstd), acc) in
        rows.zip(norm.acc.chunks_exact_mut(2 * hidden))
    {
        let [gi, gf, gg, go] = gate_blocks(gate, hidden);
        let (dgain, dbias) = acc.split_at_mut(hidden);
        for j in 0..hidden {
            let (o, tc) = (go[j], tanh_c[j]);
            let dy = dh[j] * o * (one - tc * tc);
            dgain[j] += dy * c_hat[j];
            dbias[j] += dy;
            d_hat[j] = dy * gain[j];
            go[j] = dh[j] * tc * o * (one - o);
        }
        super::norm::backward(d_hat, c_hat, rstd);
        for j in 0..hidden {
            let (i, f, g) = (gi[j], gf[j], gg[j]);
            let dct = dc[j] + d_hat[j];
            gi[j] = dct * g * i * (one - i);
            gf[j] = dct * c_prev[j] * f * (one - f);
            gg[j] = dct * i * (one - g * g);
            dc[j] = dct * f;
        }
    }
}
