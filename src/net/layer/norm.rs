//! A LayerNorm-LSTM layer (Ba, Kiros & Hinton 2016; `NetConfig::layer_norm`):
//!
//! ```text
//! a_t = LN_x(W_ih x_t) + LN_h(W_hh h_{t−1}) + b_ih + b_hh      (B, 4H), then i, f, g, o
//! c_t = f ⊙ c_{t−1} + i ⊙ g        h_t = o ⊙ tanh(LN_c(c_t))
//! ```
//! each LN with its own gain and bias (`cell/norm.rs`). Backward per step: the cell's step
//! through LN_c (`lstm::backward_step_norm`) gives da_t; LN_h's backward turns da_t ⊙ γ_h into
//! dL/d(W_hh h_{t−1}) (kept apart, like the GRU's recurrent product) and dh_{t−1} is its GEMM
//! with W_hh. After the loop, the input side's norm over all T·B rows at once, then the weight
//! GEMMs. Whole steps only — every norm needs a whole row of gates — with the per-step GEMMs
//! cut into tiles (from their sizes alone) on up to `threads` threads, as `layer/proj.rs`.

use super::*;
use crate::cell::lstm::{self, CellNorm, CellNormGrad};
use crate::cell::norm;

/// Forward over the pass's steps (hs[0], cs[0] hold the initial state).
pub(super) fn forward<F: Float>(
    pass: &Pass<'_>,
    lp: &LayerParams,
    p: &[F],
    cache: &mut LayerCache<F>,
    x: LayerInput<'_, F>,
) {
    let Dims { cell, h, gh, b, steps, threads, .. } = pass.dims;
    let (bh, bgh, n) = (b * h, b * gh, steps * b);
    debug_assert!(matches!(x, LayerInput::Rows(_)), "the plan gathers a layer-norm net's token rows");
    if pass.w_hh_t {
        kernels::transpose(&p[lp.w_hh..lp.w_hh + gh * h], gh, h, &mut cache.w_hh_t, threads);
    }
    let [(gain_x, bias_x), (gain_h, bias_h), (gain_c, bias_c)] = lp.norms(p, h);
    let tb = cache.rstd.len() / 3;
    let (rstd_x, rest) = cache.rstd.split_at_mut(tb);
    let (rstd_h, rstd_c) = rest.split_at_mut(tb);
    // The input side of all T steps at once: x̂ = LN(W_ih x_t), gates = γ ⊙ x̂ + β + b_ih + b_hh.
    let gates = &mut cache.gates[..n * gh];
    fill_input_bias(cell, &p[lp.b_ih..lp.b_ih + gh], &p[lp.b_hh..lp.b_hh + gh], gates);
    if let LayerInput::Rows(x) = x {
        let x_hat = &mut cache.norm_x[..n * gh];
        let w_ih = Mat::rows(&p[lp.w_ih..], gh, lp.input).t();
        kernels::gemm(MatMut::rows(x_hat, n, gh), Mat::rows(x, n, lp.input), w_ih, false, threads);
        for ((x_hat, g), r) in x_hat.chunks_exact_mut(gh).zip(gates.chunks_exact_mut(gh)).zip(&mut rstd_x[..n]) {
            *r = norm::normalize(x_hat);
            norm::add_affine(g, x_hat, gain_x, bias_x);
        }
    }
    let w_hh = &p[lp.w_hh..lp.w_hh + gh * h]; // (G·H, H)
    let w_hh_t = if pass.w_hh_t { Mat::rows(&cache.w_hh_t, h, gh) } else { Mat::rows(w_hh, gh, h).t() };
    for t in 0..steps {
        let (past, future) = cache.hs.split_at_mut((t + 1) * bh);
        let (h_prev, h_t) = (&past[t * bh..], &mut future[..bh]);
        // The recurrent side: x̂_h = LN(W_hh h_{t−1}), gates += γ_h ⊙ x̂_h + β_h.
        let ah = &mut cache.norm_h[t * bgh..(t + 1) * bgh];
        kernels::gemm(MatMut::rows(ah, b, gh), Mat::rows(h_prev, b, h), w_hh_t, false, threads);
        let g = &mut cache.gates[t * bgh..(t + 1) * bgh];
        for ((ah, g), r) in ah.chunks_exact_mut(gh).zip(g.chunks_exact_mut(gh)).zip(&mut rstd_h[t * b..]) {
            *r = norm::normalize(ah);
            norm::add_affine(g, ah, gain_h, bias_h);
        }
        let (c_past, c_future) = cache.cs.split_at_mut((t + 1) * bh);
        let (c_prev, c) = (&c_past[t * bh..], &mut c_future[..bh]);
        let aux = &mut cache.aux[t * bh..(t + 1) * bh];
        let c_hat = &mut cache.norm_c[t * bh..(t + 1) * bh];
        let norm_c = CellNorm { gain: gain_c, bias: bias_c, c_hat, rstd: &mut rstd_c[t * b..(t + 1) * b] };
        lstm::forward_step_norm(h, g, c_prev, c, aux, h_t, norm_c);
        // A row whose sequence has ended keeps its state.
        let ended = Ended { lengths: pass.lengths, t, r0: 0 };
        ended.copy_rows(h, h_prev, h_t);
        ended.copy_rows(h, c_prev, c);
    }
}

/// Backward over the steps of the last forward pass (see the module docs).
pub(super) fn backward<F: Float>(
    pass: &Pass<'_>,
    lp: &LayerParams,
    p: &[F],
    grads: &mut [F],
    cache: &mut LayerCache<F>,
    below: Below<'_, F>,
    carry: Carry<'_, F>,
) {
    let Dims { h, gh, b, steps, threads, .. } = pass.dims;
    let (bh, bgh, n) = (b * h, b * gh, steps * b);
    let Carry { dh_next, dc_next, mut dh_norms } = carry;
    let w_hh = Mat::rows(&p[lp.w_hh..lp.w_hh + gh * h], gh, h); // (G·H, H)
    let [(gain_x, _), (gain_h, _), (gain_c, _)] = lp.norms(p, h);
    let tb = cache.rstd.len() / 3;
    let (rstd_x, rstd_h, rstd_c) = (&cache.rstd[..tb], &cache.rstd[tb..2 * tb], &cache.rstd[2 * tb..]);
    // dγ_c, dβ_c (the last two of the six norm tensors), accumulated step by step.
    let (dgain_c, dbias_c) = grads[lp.norm_range(h)][4 * gh..].split_at_mut(h);
    for t in (0..steps).rev() {
        let ended = Ended { lengths: pass.lengths, t, r0: 0 };
        let dh_t = &mut cache.dh[t * bh..(t + 1) * bh];
        kernels::add_into(dh_t, dh_next);
        if let Some(norms) = dh_norms.as_deref_mut() {
            let total: f64 = dh_t.chunks_exact(h).map(|r| kernels::sum_sq(r).sqrt()).sum();
            norms[t] = F::of(total / b as f64);
        }
        let g = &mut cache.gates[t * bgh..(t + 1) * bgh];
        ended.zero_rows(gh, g);
        for run in ended.running(b) {
            let (hr, gr) = (run.start * h..run.end * h, run.start * gh..run.end * gh);
            let at = t * b;
            let grad = CellNormGrad {
                gain: gain_c,
                c_hat: &cache.norm_c[t * bh..(t + 1) * bh][hr.clone()],
                rstd: &rstd_c[at + run.start..at + run.end],
                dgain: &mut *dgain_c,
                dbias: &mut *dbias_c,
                scratch: &mut cache.dm[hr.clone()],
            };
            let (c_prev, aux) = (&cache.cs[t * bh..(t + 1) * bh], &cache.aux[t * bh..(t + 1) * bh]);
            let dc = &mut dc_next[hr.clone()];
            lstm::backward_step_norm(h, &dh_t[hr.clone()], dc, &mut g[gr], &c_prev[hr.clone()], &aux[hr], grad);
        }
        // dL/d(W_hh h_{t−1}) through the recurrent side's norm (0 for an ended row).
        let dah = &mut cache.dgates_h[t * bgh..(t + 1) * bgh];
        let x_hat = &cache.norm_h[t * bgh..(t + 1) * bgh];
        for (r, ((d, g), x_hat)) in
            dah.chunks_exact_mut(gh).zip(g.chunks_exact(gh)).zip(x_hat.chunks_exact(gh)).enumerate()
        {
            for ((d, &g), &gain) in d.iter_mut().zip(g).zip(gain_h) {
                *d = g * gain;
            }
            norm::backward(d, x_hat, rstd_h[t * b + r]);
        }
        kernels::gemm(MatMut::rows(dh_next, b, h), Mat::rows(dah, b, gh), w_hh, false, threads);
        // An ended row held its state: its gradient passes straight through.
        ended.copy_rows(h, dh_t, dh_next);
    }
    // Over all T·B rows: the biases (b_ih, b_hh and both sides' β all receive da) and the gains
    // (dγ = Σ da ⊙ x̂), then dL/d(W_ih x_t) through the input side's norm, in place of da.
    let da = &mut cache.gates[..n * gh];
    let dnorm = &mut grads[lp.norm_range(h)];
    let (dgain_x, rest) = dnorm.split_at_mut(gh);
    let (dbias_x, rest) = rest.split_at_mut(gh);
    let (dgain_h, rest) = rest.split_at_mut(gh);
    kernels::add_col_sums(dbias_x, da, n, gh);
    kernels::add_col_sums(&mut rest[..gh], da, n, gh);
    add_gain_grads(dgain_x, da, &cache.norm_x[..n * gh]);
    add_gain_grads(dgain_h, da, &cache.norm_h[..n * gh]);
    kernels::add_col_sums(&mut grads[lp.b_ih..lp.b_ih + gh], da, n, gh);
    kernels::add_col_sums(&mut grads[lp.b_hh..lp.b_hh + gh], da, n, gh);
    for ((d, x_hat), &r) in da.chunks_exact_mut(gh).zip(cache.norm_x.chunks_exact(gh)).zip(&rstd_x[..n]) {
        for (d, &gain) in d.iter_mut().zip(gain_x) {
            *d *= gain;
        }
        norm::backward(d, x_hat, r);
    }
    weight_grads(&pass.dims, lp, p, grads, cache, below);
}

/// `dgain[j] += Σ_r da[r, j] · x̂[r, j]` over the rows of (rows, G·H) `da` and `x_hat`.
fn add_gain_grads<F: Float>(dgain: &mut [F], da: &[F], x_hat: &[F]) {
    let w = dgain.len();
    for (d, x) in da.chunks_exact(w).zip(x_hat.chunks_exact(w)) {
        for ((o, &d), &x) in dgain.iter_mut().zip(d).zip(x) {
            *o += d * x;
        }
    }
}
