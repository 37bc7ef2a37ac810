//! Elman RNN cell, PyTorch `nn.RNN`:
//!
//! ```text
//! a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh        (B, H)
//! h_t = act(a_t),  act ∈ {tanh, relu}
//! ```
//! Backward: `da_t = dh_t ⊙ act'(a_t)`, with `tanh' = 1 − h_t²` and `relu' = [h_t > 0]`, so the
//! cache is just `h_t` (kept by the layer). `dh_{t-1} = da_t · W_hh` is a GEMM in the layer.

use crate::float::Float;
use multiversion::multiversion;

/// Forward step. `pre` (B, H): the full pre-activation `a_t`; `h` (B, H): out, `h_t`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
pub fn forward_step<F: Float>(relu: bool, pre: &[F], h: &mut [F]) {
    if relu {
        for (h, &a) in h.iter_mut().zip(pre) {
            *h = a.max(F::zero());
        }
    } else if !F::tanh_row(&pre[..pre.len().min(h.len())], h) {
        for (h, &a) in h.iter_mut().zip(pre) {
            *h = a.tanh_act();
        }
    }
}

/// Backward step. `dh` (B, H): total dL/dh_t; `h` (B, H): the cached h_t;
/// `dpre` (B, H): out, dL/da_t.
#[inline]
pub fn backward_step<F: Float>(relu: bool, dh: &[F], h: &[F], dpre: &mut [F]) {
    if relu {
        for ((d, &g), &h) in dpre.iter_mut().zip(dh).zip(h) {
            *d = if h > F::zero() { g } else { F::zero() };
        }
    } else {
        for ((d, &g), &h) in dpre.iter_mut().zip(dh).zip(h) {
            *d = g * (F::one() - h * h);
        }
    }
}
