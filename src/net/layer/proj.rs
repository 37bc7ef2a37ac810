//! A layer whose output is projected (PyTorch's `proj_size`): the cell's output m_t (H) is not
//! the state but projected, h_t = W_hr m_t (P < H), and h_t is what the next step, the next
//! layer and the readout read. Whole steps only (the plan runs no other split for it): per step
//! the recurrent GEMM over the P-wide h_{t−1}, the cell, then the projection; backward mirrors
//! it, dm_t = dh_t · W_hr before the cell's backward step. The per-step GEMMs are cut into tiles
//! (from their sizes alone) on up to `threads` threads where they are large enough.

use super::*;

/// Forward over the pass's steps (hs[0], cs[0] hold the initial state).
pub(super) fn forward<F: Float>(
    pass: &Pass<'_>,
    lp: &LayerParams,
    p: &[F],
    cache: &mut LayerCache<F>,
    x: LayerInput<'_, F>,
) {
    let Dims { cell, h, hp, gh, b, steps, threads, .. } = pass.dims;
    let (bh, bp, bgh) = (b * h, b * hp, b * gh);
    if pass.w_hh_t {
        kernels::transpose(&p[lp.w_hh..lp.w_hh + gh * hp], gh, hp, &mut cache.w_hh_t, threads);
    }
    if let LayerInput::Rows(x) = x {
        // (All rows: the whole steps below run the cell on every row.)
        project(&pass.dims, &[], lp, p, &mut cache.gates, x);
    }
    let w_hh = &p[lp.w_hh..lp.w_hh + gh * hp]; // (G·H, P)
    let w_hh_t = if pass.w_hh_t { Mat::rows(&cache.w_hh_t, hp, gh) } else { Mat::rows(w_hh, gh, hp).t() };
    let w_hr_t = Mat::rows(&p[lp.w_hr..lp.w_hr + hp * h], hp, h).t(); // (H, P)
    for t in 0..steps {
        let g = &mut cache.gates[t * bgh..(t + 1) * bgh];
        let (past, future) = cache.hs.split_at_mut((t + 1) * bp);
        let (h_prev, h_t) = (&past[t * bp..], &mut future[..bp]);
        kernels::gemm(MatMut::rows(g, b, gh), Mat::rows(h_prev, b, hp), w_hh_t, true, threads);
        let (c_past, c_future) = cache.cs.split_at_mut((t + 1) * bh);
        let (c_prev, c) = (&c_past[t * bh..], &mut c_future[..bh]);
        let m = &mut cache.ms[t * bh..(t + 1) * bh];
        let aux = &mut cache.aux[t * bh..(t + 1) * bh];
        let step = Step { g: [g, &mut [], &mut [], &mut []], hp: [&[], &[], &[]], h_prev: &[], c_prev, c, aux, h: m };
        cell.forward_rows(h, step);
        // Zoneout (net/zoneout.rs) of c_t here, of the projected h_t below.
        let (zh, zc) = (step_of(&cache.zone_h, t, bp), step_of(&cache.zone_c, t, bh));
        if !zc.is_empty() {
            zoneout::blend(c, c_prev, zc);
        }
        // A row whose sequence has ended keeps its state, and its m counts for nothing.
        let ended = Ended { lengths: pass.lengths, t, r0: 0 };
        ended.zero_rows(h, m);
        ended.copy_rows(h, c_prev, c);
        kernels::gemm(MatMut::rows(h_t, b, hp), Mat::rows(m, b, h), w_hr_t, false, threads);
        if !zh.is_empty() {
            zoneout::blend(h_t, h_prev, zh);
        }
        ended.copy_rows(hp, h_prev, h_t);
    }
}

/// Backward over the steps of the last forward pass: as `layer::backward`, with dL/dm_t =
/// dL/dh_t · W_hr in front of the cell's backward step, and dh_next (P wide) = dpre · W_hh.
/// Under zoneout dL/dh̃_t = (1 − m) ⊙ dL/dh_t goes into the projection (and stays in `dh` for
/// dW_hr), m ⊙ dL/dh_t straight to h_{t−1}; c as in `rows::backward_rows`.
pub(super) fn backward<F: Float>(
    pass: &Pass<'_>,
    lp: &LayerParams,
    p: &[F],
    grads: &mut [F],
    cache: &mut LayerCache<F>,
    below: Below<'_, F>,
    carry: Carry<'_, F>,
) {
    let Dims { cell, h, hp, gh, b, steps, threads, .. } = pass.dims;
    let (bh, bp, bgh) = (b * h, b * hp, b * gh);
    let Carry { dh_next, dc_next, mut dh_norms } = carry;
    let w_hh = Mat::rows(&p[lp.w_hh..lp.w_hh + gh * hp], gh, hp); // (G·H, P)
    let w_hr = Mat::rows(&p[lp.w_hr..lp.w_hr + hp * h], hp, h); // (P, H)
    for t in (0..steps).rev() {
        let ended = Ended { lengths: pass.lengths, t, r0: 0 };
        let dh_t = &mut cache.dh[t * bp..(t + 1) * bp];
        kernels::add_into(dh_t, dh_next);
        if let Some(norms) = dh_norms.as_deref_mut() {
            let total: f64 = dh_t.chunks_exact(hp).map(|r| kernels::sum_sq(r).sqrt()).sum();
            norms[t] = F::of(total / b as f64);
        }
        let (zh, zc) = (step_of(&cache.zone_h, t, bp), step_of(&cache.zone_c, t, bh));
        let dh_cell = if zh.is_empty() {
            &*dh_t
        } else {
            zoneout::into_cell(&mut cache.zone_dh[..bp], dh_t, zh);
            &cache.zone_dh[..bp]
        };
        kernels::gemm(MatMut::rows(&mut cache.dm, b, h), Mat::rows(dh_cell, b, hp), w_hr, false, threads);
        let g = &mut cache.gates[t * bgh..(t + 1) * bgh];
        ended.zero_rows(gh, g);
        for run in ended.running(b) {
            let (hr, gr) = (run.start * h..run.end * h, run.start * gh..run.end * gh);
            if !zc.is_empty() {
                zoneout::split_in_place(&mut cache.zone_dc[hr.clone()], &mut dc_next[hr.clone()], &zc[hr.clone()]);
            }
            let step = BackStep {
                dh: &cache.dm[hr.clone()],
                g: [&mut g[gr], &mut [], &mut [], &mut []],
                dgh: [&mut [], &mut [], &mut []],
                h: &[],
                h_prev: &[],
                c_prev: &cache.cs[t * bh..(t + 1) * bh][hr.clone()],
                dc: &mut dc_next[hr.clone()],
                aux: &cache.aux[t * bh..(t + 1) * bh][hr.clone()],
                dh_prev: &mut [],
            };
            cell.backward_rows(h, step);
            if !zc.is_empty() {
                kernels::add_into(&mut dc_next[hr.clone()], &cache.zone_dc[hr]);
            }
        }
        kernels::gemm(MatMut::rows(dh_next, b, hp), Mat::rows(g, b, gh), w_hh, false, threads);
        let dh_t = &mut cache.dh[t * bp..(t + 1) * bp];
        if !zh.is_empty() {
            zoneout::past_cell(dh_next, dh_t, zh);
        }
        // An ended row held its state: its gradient passes straight through.
        ended.copy_rows(hp, dh_t, dh_next);
        if !zh.is_empty() {
            // dW_hr reads dL/dh̃_t.
            dh_t.copy_from_slice(&cache.zone_dh[..bp]);
        }
    }
    weight_grads(&pass.dims, pass.lengths, lp, p, grads, cache, below);
}
