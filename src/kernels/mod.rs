//! Numeric kernels: the GEMM wrapper and the scalar activations. The only module that knows
//! about the GEMM crate, SIMD or threads; a GPU backend would replace this module.
//!
//! Matrices are row-major slices described by [`Mat`]/[`MatMut`] views with explicit strides,
//! so a transpose is a free view (`.t()`), never a copy.

pub mod math;

use crate::float::Float;
use std::cell::Cell;

/// A read-only matrix view: element (r, c) is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a, F> {
    data: &'a [F],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A mutable matrix view with the same addressing as [`Mat`].
pub struct MatMut<'a, F> {
    data: &'a mut [F],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// Index one past the last element a (rows, cols, rs, cs) view touches; 0 for an empty view.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 }
}

impl<'a, F> Mat<'a, F> {
    /// A contiguous row-major (rows, cols) matrix over the first `rows * cols` elements.
    ///
    /// # Panics
    /// If `data` is shorter than `rows * cols` (an internal invariant, never user data).
    #[inline]
    pub fn rows(data: &'a [F], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A view with explicit row and column strides.
    #[inline]
    pub fn strided(data: &'a [F], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(extent(rows, cols, rs, cs) <= data.len(), "matrix view out of bounds");
        Self { data, rows, cols, rs, cs }
    }

    /// The transpose, as a view.
    #[inline]
    pub fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
}

impl<'a, F> MatMut<'a, F> {
    /// A contiguous row-major (rows, cols) matrix over the first `rows * cols` elements.
    #[inline]
    pub fn rows(data: &'a mut [F], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A view with explicit row and column strides (must not alias itself: `rs`, `cs` ≥ 1 and
    /// the rows of one stride never overlap the columns of the other).
    #[inline]
    pub fn strided(data: &'a mut [F], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(extent(rows, cols, rs, cs) <= data.len(), "matrix view out of bounds");
        Self { data, rows, cols, rs, cs }
    }
}

thread_local! {
    static IN_GEMM: Cell<bool> = const { Cell::new(false) };
}

/// True while this thread is inside the GEMM crate. The allocation test uses it to tell the
/// crate's own packing scratch apart from allocations made by `bptt` itself.
#[doc(hidden)]
pub fn in_gemm() -> bool {
    IN_GEMM.with(Cell::get)
}

/// `c = a · b` (or `c += a · b` when `accumulate`), using up to `threads` threads.
///
/// # Panics
/// If the shapes disagree: callers pass shapes derived from validated configs, so this is an
/// internal invariant, not a user-input check.
pub fn gemm<F: Float>(c: MatMut<'_, F>, a: Mat<'_, F>, b: Mat<'_, F>, accumulate: bool, threads: usize) {
    assert!(
        a.rows == c.rows && b.cols == c.cols && a.cols == b.rows,
        "gemm shape mismatch: ({}x{}) = ({}x{}) * ({}x{})",
        c.rows,
        c.cols,
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    let (m, n, k) = (c.rows, c.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for col in 0..n {
                    c.data[r * c.rs + col * c.cs] = F::zero();
                }
            }
        }
        return;
    }
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    IN_GEMM.with(|f| f.set(true));
    // SAFETY: every view was bounds-checked on construction (`extent` ≤ len), the shapes agree
    // (asserted above), `c` is a unique borrow, and F is f32 or f64 (the `Float` trait is only
    // implemented for those), which the crate supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data.as_mut_ptr(),
            c.cs as isize,
            c.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            F::one(),
            F::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
    IN_GEMM.with(|f| f.set(false));
}

/// `dst` (cols, rows) = `src` (rows, cols)ᵀ, both row-major, in 32×32 tiles so that reads and
/// writes both stay within a few cache lines.
pub fn transpose<F: Copy>(src: &[F], rows: usize, cols: usize, dst: &mut [F]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let row = &src[r * cols..(r + 1) * cols];
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = row[c];
                }
            }
        }
    }
}

/// Adds `bias` (len n) to every row of the contiguous (rows, n) matrix `dst`.
pub fn fill_rows<F: Float>(dst: &mut [F], bias: &[F]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// `out[j] += Σ_r m[r, j]` for a contiguous (rows, n) matrix, summing over a strided column set:
/// `m` rows have stride `rs`, and the n columns start at offset 0 of each row.
pub fn add_col_sums<F: Float>(out: &mut [F], m: &[F], rows: usize, rs: usize) {
    let n = out.len();
    for r in 0..rows {
        let row = &m[r * rs..r * rs + n];
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// `a[i] += b[i]`.
#[inline]
pub fn add_into<F: Float>(a: &mut [F], b: &[F]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Σ x², accumulated in f64 over 8 interleaved partial sums (a fixed order, so the result is
/// deterministic; independent sums let the loop vectorise).
pub fn sum_sq<F: Float>(x: &[F]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|v| v.f64() * v.f64()).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v.f64() * v.f64();
        }
    }
    acc.iter().sum::<f64>() + tail
}
