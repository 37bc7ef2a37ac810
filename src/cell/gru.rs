//! GRU cell, PyTorch `nn.GRU` (gate order r, z, n):
//!
//! ```text
//! [x_r x_z x_n] = W_ih x_t + b_ih         [h_r h_z h_n] = W_hh h_{t-1} + b_hh      (B, 3H)
//! r = σ(x_r + h_r)    z = σ(x_z + h_z)    n = tanh(x_n + r ⊙ h_n)
//! h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}
//! ```
//! Backward (the input and recurrent pre-activations differ only in the n block):
//!
//! ```text
//! dn = dh_t ⊙ (1 − z)       dz = dh_t ⊙ (h_{t-1} − n)        dh_{t-1} ⊇ dh_t ⊙ z
//! da_n = dn ⊙ (1 − n²)      da_z = dz ⊙ z(1−z)               da_r = (da_n ⊙ h_n) ⊙ r(1−r)
//! d[x_r x_z x_n] = [da_r da_z da_n]        d[h_r h_z h_n] = [da_r da_z da_n ⊙ r]
//! ```
//! `dh_{t-1} += d[h_r h_z h_n] · W_hh` is a GEMM in the layer. The cache per step: the
//! activated gates (r, z, n) written over the input pre-activations, and h_n.

use crate::float::Float;
use multiversion::multiversion;

/// Forward step for one batch of B rows.
///
/// - `gates` (B, 3H): in, input pre-activations [x_r x_z x_n]; out, activated (r, z, n).
/// - `hproj` (B, 3H): recurrent pre-activations [h_r h_z h_n] (biases included).
/// - `h_prev` (B, H): h_{t−1}. `hn` (B, H): out, h_n (cached). `h` (B, H): out, h_t.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
pub fn forward_step<F: Float>(hidden: usize, gates: &mut [F], hproj: &[F], h_prev: &[F], hn: &mut [F], h: &mut [F]) {
    let rows = gates.chunks_exact_mut(3 * hidden).zip(hproj.chunks_exact(3 * hidden));
    let rows = rows.zip(h_prev.chunks_exact(hidden)).zip(hn.chunks_exact_mut(hidden));
    for ((((gate, hp), h_prev), hn), h) in rows.zip(h.chunks_exact_mut(hidden)) {
        let (gr, rest) = gate.split_at_mut(hidden);
        let (gz, gn) = rest.split_at_mut(hidden);
        let (hr, rest) = hp.split_at(hidden);
        let (hz, hpn) = rest.split_at(hidden);
        forward_row(gr, gz, gn, hr, hz, hpn, h_prev, hn, h);
    }
}

/// One row of [`forward_step`], or a block of its units (every slice then holds the same units
/// of its gate or state). Separate slices as parameters tell the compiler they do not alias,
/// which is what lets it vectorise the loop; inlined into callers compiled for the CPU's SIMD
/// (`multiversion`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn forward_row<F: Float>(
    gr: &mut [F],
    gz: &mut [F],
    gn: &mut [F],
    hr: &[F],
    hz: &[F],
    hpn: &[F],
    h_prev: &[F],
    hn: &mut [F],
    h: &mut [F],
) {
    let one = F::one();
    let k = gr.len();
    let (gz, gn, hr, hz, hpn, h_prev, hn, h) =
        (&mut gz[..k], &mut gn[..k], &hr[..k], &hz[..k], &hpn[..k], &h_prev[..k], &mut hn[..k], &mut h[..k]);
    if F::gru_forward_row([&mut *gr, &mut *gz, &mut *gn], [hr, hz, hpn], h_prev, [&mut *hn, &mut *h]) {
        return;
    }
    for j in 0..k {
        let r = (gr[j] + hr[j]).sigmoid();
        let z = (gz[j] + hz[j]).sigmoid();
        let hnj = hpn[j];
        let n = (gn[j] + r * hnj).tanh_act();
        (gr[j], gz[j], gn[j]) = (r, z, n);
        hn[j] = hnj;
        h[j] = (one - z) * n + z * h_prev[j];
    }
}

/// Backward step for one batch of B rows.
///
/// - `dh` (B, H): total dL/dh_t.
/// - `gates` (B, 3H): in, activated (r, z, n); out, dL/d[x_r x_z x_n].
/// - `dgates_h` (B, 3H): out, dL/d[h_r h_z h_n].
/// - `hn`, `h_prev` (B, H): from the forward cache.
/// - `dh_prev` (B, H): out, the direct part of dL/dh_{t−1} (dh_t ⊙ z); the layer adds the GEMM.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
pub fn backward_step<F: Float>(
    hidden: usize,
    dh: &[F],
    gates: &mut [F],
    dgates_h: &mut [F],
    hn: &[F],
    h_prev: &[F],
    dh_prev: &mut [F],
) {
    let rows = gates.chunks_exact_mut(3 * hidden).zip(dgates_h.chunks_exact_mut(3 * hidden));
    let rows = rows.zip(dh.chunks_exact(hidden)).zip(hn.chunks_exact(hidden));
    let rows = rows.zip(h_prev.chunks_exact(hidden)).zip(dh_prev.chunks_exact_mut(hidden));
    for (((((gate, dgh), dh), hn), h_prev), dh_prev) in rows {
        let (gr, rest) = gate.split_at_mut(hidden);
        let (gz, gn) = rest.split_at_mut(hidden);
        let (dr, rest) = dgh.split_at_mut(hidden);
        let (dz, dhn) = rest.split_at_mut(hidden);
        backward_row(gr, gz, gn, dr, dz, dhn, dh, hn, h_prev, dh_prev);
    }
}

/// One row of [`backward_step`] (separate slices: see [`forward_row`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn backward_row<F: Float>(
    gr: &mut [F],
    gz: &mut [F],
    gn: &mut [F],
    dr: &mut [F],
    dgz: &mut [F],
    dhn: &mut [F],
    dh: &[F],
    hn: &[F],
    h_prev: &[F],
    dh_prev: &mut [F],
) {
    let one = F::one();
    let k = gr.len();
    let (gz, gn, dr, dgz, dhn, dh, hn, h_prev, dh_prev) = (
        &mut gz[..k],
        &mut gn[..k],
        &mut dr[..k],
        &mut dgz[..k],
        &mut dhn[..k],
        &dh[..k],
        &hn[..k],
        &h_prev[..k],
        &mut dh_prev[..k],
    );
    for j in 0..k {
        let (r, z, n) = (gr[j], gz[j], gn[j]);
        let dn = dh[j] * (one - z);
        let dz = dh[j] * (h_prev[j] - n);
        let da_n = dn * (one - n * n);
        let da_z = dz * z * (one - z);
        let da_r = da_n * hn[j] * r * (one - r);
        (gr[j], gz[j], gn[j]) = (da_r, da_z, da_n);
        dr[j] = da_r;
        dgz[j] = da_z;
        dhn[j] = da_n * r;
        dh_prev[j] = dh[j] * z;
    }
}
