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
//! GEMMs. Every norm needs a whole row of gates, so the plan runs whole steps (their per-step
//! GEMMs cut into tiles from their sizes alone on up to `threads` threads) or blocks of batch
//! rows (each part owns its rows for the whole pass, as `Split::Rows`), never unit blocks.
//! Each row accumulates its own dγ_c, dβ_c; they are summed over the rows after the loop, in
//! row order, so every split gives the same result.

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
    let n = steps * b;
    debug_assert!(matches!(x, LayerInput::Rows(_)), "the plan gathers a layer-norm net's token rows");
    if pass.w_hh_t {
        kernels::transpose(&p[lp.w_hh..lp.w_hh + gh * h], gh, h, &mut cache.w_hh_t, threads);
    }
    let norms = lp.norms(p, h);
    let [(gain_x, bias_x), ..] = norms;
    // The input side of all T steps at once: x̂ = LN(W_ih x_t), gates = γ ⊙ x̂ + β + b_ih + b_hh.
    if let LayerInput::Rows(x) = x {
        let (x_hat, rstd_x) = (&mut cache.norm_x[..n * gh], &mut cache.rstd[..n]);
        let w_ih = Mat::rows(&p[lp.w_ih..], gh, lp.input).t();
        let precision = pass.dims.precision;
        kernels::gemm_at(precision, MatMut::rows(x_hat, n, gh), Mat::rows(x, n, lp.input), w_ih, false, threads);
        let (b_ih, b_hh) = (&p[lp.b_ih..lp.b_ih + gh], &p[lp.b_hh..lp.b_hh + gh]);
        let (xs, gs, rs) = (Shared::of(x_hat), Shared::of(&mut cache.gates[..n * gh]), Shared::of(rstd_x));
        in_row_parts(n, threads, |rows| {
            // SAFETY: each part touches only its own rows of the three buffers.
            let (x_hat, g, rstd) = unsafe { row_slices(&xs, &gs, &rs, rows, gh) };
            fill_input_bias(cell, b_ih, b_hh, g);
            for ((x_hat, g), r) in x_hat.chunks_exact_mut(gh).zip(g.chunks_exact_mut(gh)).zip(rstd) {
                *r = norm::normalize(x_hat);
                norm::add_affine(g, x_hat, gain_x, bias_x);
            }
        });
    }
    let (bufs, w_hh_t) = NormBufs::new(cache, &mut [], &mut []);
    let w_hh = &p[lp.w_hh..lp.w_hh + gh * h]; // (G·H, H)
    let w_hh_t = if pass.w_hh_t { Mat::rows(w_hh_t, h, gh) } else { Mat::rows(w_hh, gh, h).t() };
    let step = |t: usize, r0: usize, r1: usize, threads: usize| {
        // SAFETY: rows [r0, r1) of step t (and t + 1) belong to this call alone (see below).
        let s = unsafe { bufs.forward(t, r0, r1, &pass.dims) };
        forward_rows(&pass.dims, &norms, w_hh_t, s, Ended { lengths: pass.lengths, t, r0 }, threads);
    };
    match pass.split {
        // Each part owns its rows for the whole pass: the parts never meet.
        Split::Rows(parts) => {
            run_row_blocks(threads, pass.lengths, (steps, b, parts), false, |t, r0, r1| step(t, r0, r1, 1))
        }
        _ => (0..steps).for_each(|t| step(t, 0, b, threads)),
    }
}

/// One forward step of a block of rows: x̂_h = LN(h_{t−1} W_hhᵀ), gates += γ_h ⊙ x̂_h + β_h, the
/// cell's step with the norm of c_t; an ended row keeps its state.
fn forward_rows<F: Float>(
    d: &Dims,
    norms: &[(&[F], &[F]); 3],
    w_hh_t: Mat<'_, F>,
    s: NormFwd<'_, F>,
    ended: Ended<'_>,
    threads: usize,
) {
    let (h, gh, r) = (d.h, d.gh, s.rstd_h.len());
    let [_, (gain_h, bias_h), (gain_c, bias_c)] = *norms;
    kernels::gemm(MatMut::rows(s.ah, r, gh), Mat::rows(s.h_prev, r, h), w_hh_t, false, threads);
    for ((ah, g), rstd) in s.ah.chunks_exact_mut(gh).zip(s.g.chunks_exact_mut(gh)).zip(&mut *s.rstd_h) {
        *rstd = norm::normalize(ah);
        norm::add_affine(g, ah, gain_h, bias_h);
    }
    let norm_c = CellNorm { gain: gain_c, bias: bias_c, c_hat: s.c_hat, rstd: s.rstd_c };
    lstm::forward_step_norm(h, s.g, s.c_prev, s.c, s.aux, s.h, norm_c);
    // Zoneout (net/zoneout.rs): each unit of h_t and c_t keeps its previous value or the step's.
    if !s.zh.is_empty() {
        zoneout::blend(s.h, s.h_prev, s.zh);
    }
    if !s.zc.is_empty() {
        zoneout::blend(s.c, s.c_prev, s.zc);
    }
    ended.copy_rows(h, s.h_prev, s.h);
    ended.copy_rows(h, s.c_prev, s.c);
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
    let (bh, n) = (b * h, steps * b);
    let Carry { dh_next, dc_next, mut dh_norms } = carry;
    let w_hh = Mat::rows(&p[lp.w_hh..lp.w_hh + gh * h], gh, h); // (G·H, H)
    let norms = lp.norms(p, h);
    cache.dnorm_c[..2 * bh].fill(F::zero());
    {
        let (bufs, _) = NormBufs::new(cache, dh_next, dc_next);
        let step = |t: usize, r0: usize, r1: usize, threads: usize| {
            // SAFETY: rows [r0, r1) of step t belong to this call alone (see below).
            let s = unsafe { bufs.backward(t, r0, r1, &pass.dims) };
            backward_rows(&pass.dims, &norms, w_hh, s, Ended { lengths: pass.lengths, t, r0 }, threads);
        };
        match pass.split {
            Split::Rows(parts) => {
                run_row_blocks(threads, pass.lengths, (steps, b, parts), true, |t, r0, r1| step(t, r0, r1, 1))
            }
            _ => {
                for t in (0..steps).rev() {
                    step(t, 0, b, threads);
                    if let Some(norms) = dh_norms.as_deref_mut() {
                        // dh_t now holds the total dL/dh_t.
                        let dh_t = &cache_dh(&bufs, t, bh);
                        let total: f64 = dh_t.chunks_exact(h).map(|r| kernels::sum_sq(r).sqrt()).sum();
                        norms[t] = F::of(total / b as f64);
                    }
                }
            }
        }
    }
    // dγ_c, dβ_c: each row's sums, added in row order.
    let dnorm_c = &mut grads[lp.norm_range(h)][4 * gh..];
    let (accs, da_sums) = cache.dnorm_c.split_at_mut(2 * bh);
    for acc in accs.chunks_exact(2 * h) {
        kernels::add_into(dnorm_c, acc);
    }
    // Over all T·B rows: the biases (b_ih, b_hh and both sides' β all receive da) and the gains
    // (dγ = Σ da ⊙ x̂), then dL/d(W_ih x_t) through the input side's norm, in place of da.
    let [(gain_x, _), ..] = norms;
    let da = &mut cache.gates[..n * gh];
    da_sums.fill(F::zero());
    kernels::add_col_sums(da_sums, da, n, gh);
    let dnorm = &mut grads[lp.norm_range(h)];
    let (dgain_x, rest) = dnorm.split_at_mut(gh);
    let (dbias_x, rest) = rest.split_at_mut(gh);
    let (dgain_h, rest) = rest.split_at_mut(gh);
    kernels::add_into(dbias_x, da_sums);
    kernels::add_into(&mut rest[..gh], da_sums);
    add_gain_grads(dgain_x, da, &cache.norm_x[..n * gh]);
    add_gain_grads(dgain_h, da, &cache.norm_h[..n * gh]);
    kernels::add_into(&mut grads[lp.b_ih..lp.b_ih + gh], da_sums);
    kernels::add_into(&mut grads[lp.b_hh..lp.b_hh + gh], da_sums);
    let (ds, xs, rs) = (Shared::of(da), Shared::of(&mut cache.norm_x[..n * gh]), Shared::of(&mut cache.rstd[..n]));
    in_row_parts(n, threads, |rows| {
        // SAFETY: each part touches only its own rows of the three buffers.
        let (da, x_hat, rstd) = unsafe { row_slices(&ds, &xs, &rs, rows, gh) };
        for ((d, x_hat), &r) in da.chunks_exact_mut(gh).zip(x_hat.chunks_exact(gh)).zip(&*rstd) {
            for (d, &gain) in d.iter_mut().zip(gain_x) {
                *d *= gain;
            }
            norm::backward(d, x_hat, r);
        }
    });
    weight_grads(&pass.dims, pass.lengths, lp, p, grads, cache, below);
}

/// Runs `work(rows)` for the rows [0, n) cut into parts (from n alone) on up to `threads`
/// threads: row-local work, whose result does not depend on the cut.
fn in_row_parts(n: usize, threads: usize, work: impl Fn(std::ops::Range<usize>) + Sync) {
    let parts = parts::count(n, 256, 1);
    team::for_each(threads, parts, |q| {
        let (a, b) = parts::range(n, parts, 1, q);
        work(a..b);
    });
}

/// Rows `rows` of two (n, w) buffers and of one (n) buffer.
///
/// # Safety
/// Nothing else may touch these rows while the slices live.
#[allow(clippy::type_complexity)]
unsafe fn row_slices<'a, F>(
    a: &Shared<F>,
    b: &Shared<F>,
    r: &Shared<F>,
    rows: std::ops::Range<usize>,
    w: usize,
) -> (&'a mut [F], &'a mut [F], &'a mut [F]) {
    let (at, len) = (rows.start, rows.len());
    // SAFETY: the caller's contract.
    unsafe { (a.slice(at * w, len * w), b.slice(at * w, len * w), r.slice(at, len)) }
}

/// Step t of dL/dh (its total, once the step's backward has run).
fn cache_dh<'a, F>(bufs: &NormBufs<F>, t: usize, bh: usize) -> &'a [F] {
    // SAFETY: called between steps, when no part writes dh.
    unsafe { bufs.dh.read(t * bh, bh) }
}

/// One backward step of a block of rows: the cell's step through the norm of c_t (rows that
/// ended contribute nothing), dL/d(W_hh h_{t−1}) through the recurrent side's norm, and
/// dh_{t−1} = that · W_hh (an ended row's gradient passes straight through). Under zoneout the
/// cell's step gets (1 − m) ⊙ dh_t (and (1 − k) ⊙ dc_t), and m ⊙ dh_t (k ⊙ dc_t) joins
/// dL/dh_{t−1} (dL/dc_{t−1}) past it, as `rows::backward_rows`.
fn backward_rows<F: Float>(
    d: &Dims,
    norms: &[(&[F], &[F]); 3],
    w_hh: Mat<'_, F>,
    s: NormBwd<'_, F>,
    ended: Ended<'_>,
    threads: usize,
) {
    let (h, gh, r) = (d.h, d.gh, s.rstd_h.len());
    let [_, (gain_h, _), (gain_c, _)] = *norms;
    ended.zero_rows(gh, s.g);
    for run in ended.running(r) {
        let (hr, gr) = (run.start * h..run.end * h, run.start * gh..run.end * gh);
        let grad = CellNormGrad {
            gain: gain_c,
            c_hat: &s.c_hat[hr.clone()],
            rstd: &s.rstd_c[run.clone()],
            acc: &mut s.acc[run.start * 2 * h..run.end * 2 * h],
            scratch: &mut s.scratch[hr.clone()],
        };
        let dh = if s.zh.is_empty() {
            &s.dh[hr.clone()]
        } else {
            zoneout::into_cell(&mut s.zdh[hr.clone()], &s.dh[hr.clone()], &s.zh[hr.clone()]);
            &s.zdh[hr.clone()]
        };
        if !s.zc.is_empty() {
            zoneout::split_in_place(&mut s.zdc[hr.clone()], &mut s.dc[hr.clone()], &s.zc[hr.clone()]);
        }
        let (dc, g) = (&mut s.dc[hr.clone()], &mut s.g[gr]);
        lstm::backward_step_norm(h, dh, dc, g, &s.c_prev[hr.clone()], &s.aux[hr.clone()], grad);
        if !s.zc.is_empty() {
            kernels::add_into(&mut s.dc[hr.clone()], &s.zdc[hr]);
        }
    }
    let rows = s.dah.chunks_exact_mut(gh).zip(s.g.chunks_exact(gh)).zip(s.ah_hat.chunks_exact(gh));
    for (((dah, g), ah_hat), &rstd) in rows.zip(s.rstd_h) {
        for ((d, &g), &gain) in dah.iter_mut().zip(g).zip(gain_h) {
            *d = g * gain;
        }
        norm::backward(dah, ah_hat, rstd);
    }
    kernels::gemm(MatMut::rows(s.dh_next, r, h), Mat::rows(s.dah, r, gh), w_hh, false, threads);
    if !s.zh.is_empty() {
        for run in ended.running(r) {
            let hr = run.start * h..run.end * h;
            zoneout::past_cell(&mut s.dh_next[hr.clone()], &s.dh[hr.clone()], &s.zh[hr]);
        }
    }
    ended.copy_rows(h, s.dh, s.dh_next);
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

/// One forward step's slices for a block of r rows.
struct NormFwd<'a, F> {
    ah: &'a mut [F],     // (r, G·H) h_{t−1} W_hhᵀ → its norm x̂_h
    g: &'a mut [F],      // (r, G·H) the input side's pre-activations → activated gates
    h_prev: &'a [F],     // (r, H)
    h: &'a mut [F],      // (r, H) out
    c_prev: &'a [F],     // (r, H)
    c: &'a mut [F],      // (r, H) out
    aux: &'a mut [F],    // (r, H) out: tanh(γ ⊙ ĉ + β)
    c_hat: &'a mut [F],  // (r, H) out: ĉ_t
    rstd_h: &'a mut [F], // (r) out
    rstd_c: &'a mut [F], // (r) out
    zh: &'a [F],         // (r, H) zoneout's hold mask of h (empty: none)
    zc: &'a [F],         // (r, H) zoneout's hold mask of c (empty: none)
}

/// One backward step's slices for a block of r rows.
struct NormBwd<'a, F> {
    dh: &'a [F],          // (r, H) the total dL/dh_t
    g: &'a mut [F],       // (r, G·H) activated gates → da
    dah: &'a mut [F],     // (r, G·H) out: dL/d(h_{t−1} W_hhᵀ)
    ah_hat: &'a [F],      // (r, G·H) x̂_h
    c_prev: &'a [F],      // (r, H)
    aux: &'a [F],         // (r, H)
    c_hat: &'a [F],       // (r, H)
    rstd_h: &'a [F],      // (r)
    rstd_c: &'a [F],      // (r)
    dc: &'a mut [F],      // (r, H) dL/dc: in from t + 1, out to t − 1
    dh_next: &'a mut [F], // (r, H) in: dL/dh_t from t + 1; out: dL/dh_{t−1}
    acc: &'a mut [F],     // (r, 2H) each row's dγ_c, dβ_c
    scratch: &'a mut [F], // (r, H)
    zh: &'a [F],          // (r, H) zoneout's hold mask of h (empty: none)
    zc: &'a [F],          // (r, H) zoneout's hold mask of c (empty: none)
    zdh: &'a mut [F],     // (r, H) zoneout scratch: dL/dh̃_t
    zdc: &'a mut [F],     // (r, H) zoneout scratch: the part of dL/dc_t held
}

/// A LayerNorm-LSTM layer's buffers, shared out between the parts of a pass by rows.
struct NormBufs<F> {
    gates: Shared<F>,
    hs: Shared<F>,
    cs: Shared<F>,
    aux: Shared<F>,
    norm_h: Shared<F>,
    norm_c: Shared<F>,
    rstd: Shared<F>,
    dh: Shared<F>,
    dgates_h: Shared<F>,
    dm: Shared<F>,
    dnorm_c: Shared<F>,
    dc: Shared<F>,
    dh_next: Shared<F>,
    zone_h: Shared<F>,
    zone_c: Shared<F>,
    zone_dh: Shared<F>,
    zone_dc: Shared<F>,
}

impl<F: Float> NormBufs<F> {
    /// Shares out `c` (but W_hhᵀ, which every part reads) and the carried gradients (empty in the
    /// forward pass).
    fn new<'c>(c: &'c mut LayerCache<F>, dh_next: &mut [F], dc_next: &mut [F]) -> (Self, &'c [F]) {
        let s = Shared::of;
        let bufs = NormBufs {
            gates: s(&mut c.gates),
            hs: s(&mut c.hs),
            cs: s(&mut c.cs),
            aux: s(&mut c.aux),
            norm_h: s(&mut c.norm_h),
            norm_c: s(&mut c.norm_c),
            rstd: s(&mut c.rstd),
            dh: s(&mut c.dh),
            dgates_h: s(&mut c.dgates_h),
            dm: s(&mut c.dm),
            dnorm_c: s(&mut c.dnorm_c),
            dc: s(dc_next),
            dh_next: s(dh_next),
            zone_h: s(&mut c.zone_h),
            zone_c: s(&mut c.zone_c),
            zone_dh: s(&mut c.zone_dh),
            zone_dc: s(&mut c.zone_dc),
        };
        (bufs, &c.w_hh_t)
    }

    /// Rows [r0, r1) of forward step t.
    ///
    /// # Safety
    /// While the result lives, nothing else may touch rows [r0, r1) of steps t and t + 1 of
    /// these buffers; the constructor's borrow must still be live.
    unsafe fn forward<'a>(&self, t: usize, r0: usize, r1: usize, d: &Dims) -> NormFwd<'a, F> {
        let (r, h, gh, b) = (r1 - r0, d.h, d.gh, d.b);
        let (at_h, at_g, tb) = (t * b * h + r0 * h, t * b * gh + r0 * gh, self.rstd.len() / 3);
        // SAFETY: distinct buffers, or distinct steps (t, t + 1) or sections (h, c) of one, each
        // restricted to rows [r0, r1): no two slices overlap.
        unsafe {
            NormFwd {
                ah: self.norm_h.slice(at_g, r * gh),
                g: self.gates.slice(at_g, r * gh),
                h_prev: self.hs.read(at_h, r * h),
                h: self.hs.slice(at_h + b * h, r * h),
                c_prev: self.cs.read(at_h, r * h),
                c: self.cs.slice(at_h + b * h, r * h),
                aux: self.aux.slice(at_h, r * h),
                c_hat: self.norm_c.slice(at_h, r * h),
                rstd_h: self.rstd.slice(tb + t * b + r0, r),
                rstd_c: self.rstd.slice(2 * tb + t * b + r0, r),
                zh: self.zone_h.read(at_h, r * h),
                zc: self.zone_c.read(at_h, r * h),
            }
        }
    }

    /// Rows [r0, r1) of backward step t, after adding the gradient from the future into dh_t.
    ///
    /// # Safety
    /// As [`NormBufs::forward`].
    unsafe fn backward<'a>(&self, t: usize, r0: usize, r1: usize, d: &Dims) -> NormBwd<'a, F> {
        let (r, h, gh, b) = (r1 - r0, d.h, d.gh, d.b);
        let (at_h, at_g, tb) = (t * b * h + r0 * h, t * b * gh + r0 * gh, self.rstd.len() / 3);
        // SAFETY: as in `forward`.
        unsafe {
            let dh = self.dh.slice(at_h, r * h);
            let dh_next = self.dh_next.slice(r0 * h, r * h);
            kernels::add_into(dh, dh_next);
            NormBwd {
                dh,
                g: self.gates.slice(at_g, r * gh),
                dah: self.dgates_h.slice(at_g, r * gh),
                ah_hat: self.norm_h.read(at_g, r * gh),
                c_prev: self.cs.read(at_h, r * h),
                aux: self.aux.read(at_h, r * h),
                c_hat: self.norm_c.read(at_h, r * h),
                rstd_h: self.rstd.read(tb + t * b + r0, r),
                rstd_c: self.rstd.read(2 * tb + t * b + r0, r),
                dc: self.dc.slice(r0 * h, r * h),
                dh_next,
                acc: self.dnorm_c.slice(r0 * 2 * h, r * 2 * h),
                scratch: self.dm.slice(r0 * h, r * h),
                zh: self.zone_h.read(at_h, r * h),
                zc: self.zone_c.read(at_h, r * h),
                zdh: self.zone_dh.slice(r0 * h, r * h),
                zdc: self.zone_dc.slice(r0 * h, r * h),
            }
        }
    }
}
