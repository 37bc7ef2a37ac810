//! Both directions of a bidirectional layer at once: each direction's time loop is one part,
//! whole steps over all rows, and the two parts never meet (they share no buffer). Small
//! batches gain the most: instead of cutting each direction's steps into unit blocks that meet
//! at every step, each core runs one direction straight through.

use super::*;

/// Forward: each direction's input projection (a GEMM on up to `threads` threads), then both
/// time loops as two parts. `xs` are the forward direction's input rows and the reverse
/// direction's (the same rows in each sequence's reverse order).
pub(crate) fn forward_pair<'a, F: Float>(
    pass: &Pass<'_>,
    lps: [&LayerParams; 2],
    p: &'a [F],
    caches: [&'a mut LayerCache<F>; 2],
    hprojs: [&mut [F]; 2],
    xs: [&[F]; 2],
) {
    let Dims { cell, h, gh, b, steps, threads, .. } = pass.dims;
    let [fwd, rev] = caches;
    for (cache, (lp, x)) in [&mut *fwd, &mut *rev].into_iter().zip(lps.iter().zip(xs)) {
        if pass.w_hh_t {
            kernels::transpose(&p[lp.w_hh..lp.w_hh + gh * h], gh, h, &mut cache.w_hh_t, threads);
        }
        project(&pass.dims, lp, p, &mut cache.gates, x);
    }
    // (H, G·H): W_hhᵀ as transposed into the cache, or a view of W_hh.
    let w_hh_t = |t: &'a [F], lp: &LayerParams| -> Mat<'a, F> {
        if pass.w_hh_t { Mat::rows(t, h, gh) } else { Mat::rows(&p[lp.w_hh..lp.w_hh + gh * h], gh, h).t() }
    };
    let [hp_f, hp_r] = hprojs;
    let ((bf, tf), (br, tr)) = (FwdBufs::new(fwd, hp_f), FwdBufs::new(rev, hp_r));
    let (w_f, w_r, bufs) = (w_hh_t(tf, lps[0]), w_hh_t(tr, lps[1]), [bf, br]);
    let (ws, lengths) = ([w_f, w_r], pass.lengths);
    team::run(
        threads,
        2,
        steps,
        |_| false,
        |d, t| {
            let b_hh = &p[lps[d].b_hh..lps[d].b_hh + gh];
            // SAFETY: part d touches only direction d's buffers (all rows of steps t and t + 1),
            // which no other part reads or writes.
            let mut rows = unsafe { bufs[d].rows(t, 0, b, b, h, gh) };
            forward_rows(cell, h, b_hh, Operand::Plain(ws[d]), &mut rows, 1, Ended { lengths, t, r0: 0 });
        },
    );
}

/// Elements of `gates` a thread fills with the biases at least.
const FILL_PER_PART: usize = 1 << 15;

/// The bias and input projection of all T steps: gates (T·B, G·H) = bias + X · W_ihᵀ, one
/// GEMM on up to `threads` threads. (With lengths it runs over the padding too: one product per
/// step of live rows instead ran slower, GRU H = 256, B = 8 — a call costs more than its rows.)
pub(super) fn project<F: Float>(d: &Dims, lp: &LayerParams, p: &[F], gates: &mut [F], x: &[F]) {
    let (gh, n) = (d.gh, d.steps * d.b);
    let gates = &mut gates[..n * gh];
    let (b_ih, b_hh) = (&p[lp.b_ih..lp.b_ih + gh], &p[lp.b_hh..lp.b_hh + gh]);
    // (The rows shared out between the threads: a padded batch of GRU H = 256 spent 1.3% of a
    // `fit` filling them on one.)
    let parts = (n * gh / FILL_PER_PART).clamp(1, d.threads.min(team::MAX_PARTS));
    let mut chunks = parts::chunks(gates, parts, |q| parts::range(n, parts, 1, q).0 * gh);
    team::for_each_mut(d.threads, &mut chunks[..parts], |_, rows| fill_input_bias(d.cell, b_ih, b_hh, rows));
    let w_ih = Mat::rows(&p[lp.w_ih..], gh, lp.input).t();
    kernels::gemm_at(d.precision, MatMut::rows(gates, n, gh), Mat::rows(x, n, lp.input), w_ih, true, d.threads);
}

/// Backward: both directions' time loops as two parts, then each one's weight gradients
/// (GEMMs on up to `threads` threads). `belows` and `carries` are each direction's.
pub(crate) fn backward_pair<F: Float>(
    pass: &Pass<'_>,
    lps: [&LayerParams; 2],
    p: &[F],
    grads: &mut [F],
    caches: [&mut LayerCache<F>; 2],
    belows: [Below<'_, F>; 2],
    carries: [Carry<'_, F>; 2],
) {
    let Dims { cell, h, gh, b, steps, threads, .. } = pass.dims;
    let ([fwd, rev], lengths) = (caches, pass.lengths);
    let [cf, cr] = carries;
    {
        let (bf, _) = BwdBufs::new(fwd, cf.dh_next, cf.dc_next);
        let (br, _) = BwdBufs::new(rev, cr.dh_next, cr.dc_next);
        let bufs = [bf, br];
        team::run(
            threads,
            2,
            steps,
            |_| false,
            |d, k| {
                let t = steps - 1 - k;
                let w_hh = Mat::rows(&p[lps[d].w_hh..lps[d].w_hh + gh * h], gh, h);
                // SAFETY: as in `forward_pair`: part d touches only direction d's buffers.
                let rows = unsafe { bufs[d].rows(t, 0, b, b, h, gh) };
                backward_rows(cell, h, gh, Operand::Plain(w_hh), rows, 1, Ended { lengths, t, r0: 0 });
            },
        );
    }
    let [below_f, below_r] = belows;
    weight_grads(&pass.dims, lengths, lps[0], p, grads, fwd, below_f);
    weight_grads(&pass.dims, lengths, lps[1], p, grads, rev, below_r);
}
