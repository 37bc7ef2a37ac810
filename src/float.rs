//! The scalar type the engine is generic over: `f32` for training, `f64` for gradient checks.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// A floating-point scalar the whole engine can run in.
///
/// Implemented for `f32` (training) and `f64` (finite-difference gradient checks). The GEMM
/// crate dispatches on the concrete type, so no other implementations are possible.
pub trait Float:
    num_traits::Float
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
{
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;

    /// Converts an `f64` constant (rounding to nearest for `f32`).
    fn of(x: f64) -> Self;

    /// Widens to `f64` (exact).
    fn f64(self) -> f64;

    /// σ(x), the logistic sigmoid: exact (std) for f64, a vectorisable ≤ 2 ulp version for f32.
    fn sigmoid(self) -> Self;

    /// tanh(x): exact (std) for f64, a vectorisable ≤ 2 ulp version for f32.
    fn tanh_act(self) -> Self;

    /// e^x: exact (std) for f64, a vectorisable ≤ 2 ulp version for f32.
    fn exp_act(self) -> Self;
    /// The LSTM's forward step over one row's units in a kernel of this type's own, if it has
    /// one for this CPU (f32 with AVX-512F or AVX2: `kernels::math::lstm_forward_row`): gates (i, f, g,
    /// o) in and activated out, then c, tanh(c) and h; false: nothing done, the caller runs the
    /// generic loop.
    fn lstm_forward_row(_gates: [&mut [Self]; 4], _c_prev: &[Self], _out: [&mut [Self]; 3]) -> bool {
        false
    }
    /// The GRU's forward step over one row's units in a kernel of this type's own, if it has
    /// one for this CPU (f32 with AVX2 but not AVX-512F: `kernels::math::gru_forward_row`):
    /// gates (r, z, n) in as input pre-activations and activated out, the recurrent
    /// pre-activations, h_{t−1}, then h_n and h_t out; false: the caller runs the generic loop.
    fn gru_forward_row(_gates: [&mut [Self]; 3], _hp: [&[Self]; 3], _h_prev: &[Self], _out: [&mut [Self]; 2]) -> bool {
        false
    }
    /// tanh over a row in a kernel of this type's own, if it has one for this CPU (f32 with
    /// AVX2 but not AVX-512F: `kernels::math::tanh_row`); false: the caller runs the loop.
    fn tanh_row(_x: &[Self], _out: &mut [Self]) -> bool {
        false
    }
    /// A slice of gradients as the element type a reduction carries.
    fn values(v: &[Self]) -> crate::net::GradValues<'_>;
    /// Copies `src` into `dst` (f32 values; lossless only for f32 itself).
    fn copy_from_f32(dst: &mut [Self], src: &[f32]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = Self::of(s as f64));
    }
    /// Copies `src` into `dst` (f64 values).
    fn copy_from_f64(dst: &mut [Self], src: &[f64]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = Self::of(s));
    }
}

impl Float for f32 {
    fn values(v: &[Self]) -> crate::net::GradValues<'_> {
        crate::net::GradValues::F32(v)
    }

    const NAME: &'static str = "f32";
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        crate::kernels::math::sigmoid_f32(self)
    }
    #[inline(always)]
    fn tanh_act(self) -> Self {
        crate::kernels::math::tanh_f32(self)
    }
    #[inline(always)]
    fn exp_act(self) -> Self {
        crate::kernels::math::exp_f32(self)
    }
    #[inline(always)]
    fn lstm_forward_row(gates: [&mut [f32]; 4], c_prev: &[f32], out: [&mut [f32]; 3]) -> bool {
        crate::kernels::math::lstm_forward_row(gates, c_prev, out)
    }
    #[inline(always)]
    fn gru_forward_row(gates: [&mut [f32]; 3], hp: [&[f32]; 3], h_prev: &[f32], out: [&mut [f32]; 2]) -> bool {
        crate::kernels::math::gru_forward_row(gates, hp, h_prev, out)
    }
    #[inline(always)]
    fn tanh_row(x: &[f32], out: &mut [f32]) -> bool {
        crate::kernels::math::tanh_row(x, out)
    }
}

impl Float for f64 {
    fn values(v: &[Self]) -> crate::net::GradValues<'_> {
        crate::net::GradValues::F64(v)
    }

    const NAME: &'static str = "f64";
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    #[inline(always)]
    fn tanh_act(self) -> Self {
        self.tanh()
    }
    #[inline(always)]
    fn exp_act(self) -> Self {
        self.exp()
    }
}
