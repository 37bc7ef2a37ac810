//! One recurrent layer over T steps: the input projection of all steps as one GEMM, then per
//! step one recurrent GEMM plus the cell's fused step; backward mirrors it and ends with one
//! GEMM per weight gradient.

use crate::cell::{CellKind, gru, lstm, rnn};
use crate::float::Float;
use crate::kernels::{self, Mat, MatMut};
use crate::net::workspace::LayerCache;
use crate::net::{LayerParams, NetConfig};

/// Where a layer's input comes from.
pub(crate) enum LayerInput<'a, F> {
    /// (T·B, I) rows: the dense input or the layer below's hidden states.
    Rows(&'a [F]),
    /// Token ids (T·B) into a (V, G·H) table holding embedding · W_ihᵀ.
    Table { table: &'a [F], tokens: &'a [u32] },
}

/// Forward over `steps` steps, filling `cache` (hs[0] and cs[0] hold the initial state).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<F: Float>(
    cfg: &NetConfig,
    lp: &LayerParams,
    p: &[F],
    cache: &mut LayerCache<F>,
    hproj: &mut [F],
    x: LayerInput<'_, F>,
    steps: usize,
    b: usize,
    threads: usize,
) {
    let (h, cell) = (cfg.hidden, cfg.cell);
    let gh = cell.gates() * h;
    let (bh, bgh, n) = (b * h, b * gh, steps * b);
    let (b_ih, b_hh) = (&p[lp.b_ih..lp.b_ih + gh], &p[lp.b_hh..lp.b_hh + gh]);
    // W_hhᵀ (H, G·H), transposed once per pass (the GEMM would otherwise repack W_hh every step).
    for (r, row) in p[lp.w_hh..lp.w_hh + gh * h].chunks_exact(h).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            cache.w_hh_t[c * gh + r] = v;
        }
    }

    // Input projections of all T steps at once: gates (T·B, G·H) = bias + X · W_ihᵀ.
    // The GRU keeps b_hh on the recurrent side (it sits inside r ⊙ (W_hn h + b_hn)).
    let gates = &mut cache.gates[..n * gh];
    kernels::fill_rows(gates, b_ih);
    if cell != CellKind::Gru {
        for row in gates.chunks_exact_mut(gh) {
            kernels::add_into(row, b_hh);
        }
    }
    match x {
        LayerInput::Rows(x) => kernels::gemm(
            MatMut::rows(gates, n, gh),
            Mat::rows(x, n, lp.input),
            Mat::rows(&p[lp.w_ih..], gh, lp.input).t(),
            true,
            threads,
        ),
        LayerInput::Table { table, tokens } => {
            for (row, &tok) in gates.chunks_exact_mut(gh).zip(tokens) {
                kernels::add_into(row, &table[tok as usize * gh..(tok as usize + 1) * gh]);
            }
        }
    }

    let w_hh_t = Mat::rows(&cache.w_hh_t, h, gh); // (H, G·H)
    for t in 0..steps {
        let (past, future) = cache.hs.split_at_mut((t + 1) * bh);
        let (h_prev, h_t) = (&past[t * bh..], &mut future[..bh]);
        let g_t = &mut cache.gates[t * bgh..(t + 1) * bgh];
        match cell {
            CellKind::RnnTanh | CellKind::RnnRelu => {
                kernels::gemm(MatMut::rows(g_t, b, gh), Mat::rows(h_prev, b, h), w_hh_t, true, threads);
                rnn::forward_step(cell == CellKind::RnnRelu, g_t, h_t);
            }
            CellKind::Lstm => {
                kernels::gemm(MatMut::rows(g_t, b, gh), Mat::rows(h_prev, b, h), w_hh_t, true, threads);
                let (c_past, c_future) = cache.cs.split_at_mut((t + 1) * bh);
                let tanh_c = &mut cache.aux[t * bh..(t + 1) * bh];
                lstm::forward_step(h, g_t, &c_past[t * bh..], &mut c_future[..bh], tanh_c, h_t);
            }
            CellKind::Gru => {
                kernels::fill_rows(hproj, b_hh);
                kernels::gemm(MatMut::rows(hproj, b, gh), Mat::rows(h_prev, b, h), w_hh_t, true, threads);
                let hn = &mut cache.aux[t * bh..(t + 1) * bh];
                gru::forward_step(h, g_t, hproj, h_prev, hn, h_t);
            }
        }
    }
}

/// Backward (BPTT) over the steps of the last forward pass.
///
/// On entry `cache.dh` (T, B, H) holds dL/dh_t from above. For t = T−1 … 0 the gradient from
/// the future is added (`dh_t += dh_next`), the cell turns it into pre-activation gradients,
/// and `dh_next = dpre_t · W_hh` (+ the GRU's direct term) carries it one step back. After the
/// loop every weight gradient is one GEMM over all T·B rows. `dx` (T·B, I), when given,
/// receives dL/dx; `dh0`/`dc0` (B, H) receive dL/d(initial state).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<F: Float>(
    cfg: &NetConfig,
    lp: &LayerParams,
    p: &[F],
    grads: &mut [F],
    cache: &mut LayerCache<F>,
    x: LayerInput<'_, F>,
    dx: Option<&mut [F]>,
    dh_next: &mut [F],
    dc_next: &mut [F],
    mut dh_norms: Option<&mut [F]>,
    steps: usize,
    b: usize,
    threads: usize,
) {
    let (h, cell) = (cfg.hidden, cfg.cell);
    let gh = cell.gates() * h;
    let (bh, bgh, n) = (b * h, b * gh, steps * b);
    let w_hh = Mat::rows(&p[lp.w_hh..], gh, h); // (G·H, H)
    dh_next.fill(F::zero());
    dc_next.fill(F::zero());

    for t in (0..steps).rev() {
        let dh_t = &mut cache.dh[t * bh..(t + 1) * bh];
        kernels::add_into(dh_t, dh_next);
        if let Some(norms) = dh_norms.as_deref_mut() {
            let total: f64 = dh_t.chunks_exact(h).map(|r| kernels::sum_sq(r).sqrt()).sum();
            norms[t] = F::of(total / b as f64);
        }
        let dh_t = &cache.dh[t * bh..(t + 1) * bh];
        let g_t = &mut cache.gates[t * bgh..(t + 1) * bgh];
        let h_prev = &cache.hs[t * bh..(t + 1) * bh];
        match cell {
            CellKind::RnnTanh | CellKind::RnnRelu => {
                let h_t = &cache.hs[(t + 1) * bh..(t + 2) * bh];
                rnn::backward_step(cell == CellKind::RnnRelu, dh_t, h_t, g_t);
                kernels::gemm(MatMut::rows(dh_next, b, h), Mat::rows(g_t, b, gh), w_hh, false, threads);
            }
            CellKind::Lstm => {
                let c_prev = &cache.cs[t * bh..(t + 1) * bh];
                let tanh_c = &cache.aux[t * bh..(t + 1) * bh];
                lstm::backward_step(h, dh_t, dc_next, g_t, c_prev, tanh_c);
                kernels::gemm(MatMut::rows(dh_next, b, h), Mat::rows(g_t, b, gh), w_hh, false, threads);
            }
            CellKind::Gru => {
                let dgh_t = &mut cache.dgates_h[t * bgh..(t + 1) * bgh];
                let hn = &cache.aux[t * bh..(t + 1) * bh];
                gru::backward_step(h, dh_t, g_t, dgh_t, hn, h_prev, dh_next);
                kernels::gemm(MatMut::rows(dh_next, b, h), Mat::rows(dgh_t, b, gh), w_hh, true, threads);
            }
        }
    }

    // Shared-weight gradients, accumulated over all steps: one GEMM each.
    let dpre_x = &cache.gates[..n * gh]; // (T·B, G·H)
    let dpre_h = if cell == CellKind::Gru { &cache.dgates_h[..n * gh] } else { dpre_x };
    let (g_lo, g_hi) = grads.split_at_mut(lp.w_hh);
    if let LayerInput::Rows(x) = x {
        kernels::gemm(
            MatMut::rows(&mut g_lo[lp.w_ih..lp.w_ih + gh * lp.input], gh, lp.input),
            Mat::rows(dpre_x, n, gh).t(),
            Mat::rows(x, n, lp.input),
            true,
            threads,
        );
    }
    kernels::gemm(
        MatMut::rows(&mut g_hi[..gh * h], gh, h),
        Mat::rows(dpre_h, n, gh).t(),
        Mat::rows(&cache.hs[..n * h], n, h),
        true,
        threads,
    );
    kernels::add_col_sums(&mut grads[lp.b_ih..lp.b_ih + gh], dpre_x, n, gh);
    kernels::add_col_sums(&mut grads[lp.b_hh..lp.b_hh + gh], dpre_h, n, gh);
    if let Some(dx) = dx {
        kernels::gemm(
            MatMut::rows(dx, n, lp.input),
            Mat::rows(dpre_x, n, gh),
            Mat::rows(&p[lp.w_ih..], gh, lp.input),
            false,
            threads,
        );
    }
}
