//! Numeric kernels: the GEMM wrapper, the team of compute threads and the scalar activations.
//! The only module that calls the GEMM crate or runs compute threads (the cells' SIMD steps live
//! in `cell/`, the time loops in `net/layer/`: a GPU backend would replace those with this).
//!
//! Matrices are row-major slices described by [`Mat`]/[`MatMut`] views with explicit strides,
//! so a transpose is a free view (`.t()`), never a copy.

pub mod bf16;
mod few;
pub mod machine;
pub mod math;
pub mod panels;
pub(crate) mod parts;
pub mod team;
#[cfg(test)]
mod testing;

use crate::float::Float;
use std::cell::Cell;
use std::marker::PhantomData;

/// A read-only matrix view: element (r, c) is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a, F> {
    data: &'a [F],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A mutable matrix view with the same addressing as [`Mat`]. It holds a pointer rather than a
/// slice so that two threads may write interleaved column blocks of one buffer
/// ([`MatMut::from_shared`]); the safe constructors borrow a slice exclusively.
pub struct MatMut<'a, F> {
    data: *mut F,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
    _borrow: PhantomData<&'a mut [F]>,
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

    /// Rows [r0, r0 + rows) as a view.
    fn sub_rows(self, r0: usize, rows: usize) -> Self {
        let data = if rows == 0 { &self.data[..0] } else { &self.data[r0 * self.rs..] };
        Self { data, rows, ..self }
    }
}

// SAFETY: a `MatMut` stands for an exclusive borrow of its elements (`&mut [F]`).
unsafe impl<F: Send> Send for MatMut<'_, F> {}

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
        Self { data: data.as_mut_ptr(), rows, cols, rs, cs, _borrow: PhantomData }
    }

    /// The same view for a shorter borrow.
    #[inline]
    pub fn reborrow(&mut self) -> MatMut<'_, F> {
        MatMut { data: self.data, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs, _borrow: PhantomData }
    }

    /// The (rows, cols) block at (r0, c0), as a view.
    ///
    /// # Safety
    /// The block must be in bounds (asserted), and while it lives no other view may touch its
    /// elements.
    unsafe fn block(&self, r0: usize, rows: usize, c0: usize, cols: usize) -> Self {
        assert!(r0 + rows <= self.rows && c0 + cols <= self.cols, "block out of bounds");
        let off = if rows == 0 || cols == 0 { 0 } else { r0 * self.rs + c0 * self.cs };
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        Self { data: unsafe { self.data.add(off) }, rows, cols, _borrow: PhantomData, ..*self }
    }

    /// A strided view starting at element `at` of a buffer that threads share out.
    ///
    /// # Safety
    /// While the view lives, no other thread may read or write the elements it addresses, and
    /// the buffer must outlive it (the bounds are asserted).
    pub unsafe fn from_shared(buf: team::Shared<F>, at: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(at + extent(rows, cols, rs, cs) <= buf.len(), "matrix view out of bounds");
        // SAFETY: in bounds (asserted); exclusivity of the addressed elements is the contract.
        Self { data: unsafe { buf.ptr().add(at) }, rows, cols, rs, cs, _borrow: PhantomData }
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

/// Multiply-adds from which a GEMM is cut into tiles of C (run on the team when `threads` > 1):
/// below this a hand-off costs more than it saves.
const SPLIT_WORK: usize = 1 << 18;
/// Multiply-adds per tile of a large GEMM (≈ 50 µs on one core).
const TILE_WORK: usize = 1 << 22;
/// The shortest side of a tile: the GEMM crate runs well below its peak on narrower tiles
/// (64-wide tiles cost LSTM H = 256, B = 32 a quarter of its speed on two cores).
const TILE_SIDE: usize = 256;

/// `c = a · b` (or `c += a · b` when `accumulate`), on up to `threads` threads.
///
/// A large product is cut into a grid of tiles of C chosen from (m, n, k) alone — each tile one
/// single-threaded call of the GEMM crate — whatever the thread count (one thread computes the
/// tiles in turn), so results do not depend on it.
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
    if runs_deep::<F>(c.rows, c.cols, a.cols, c.cs) {
        let (Some(c), Some(a), Some(b)) = (as_f32_mut(c), as_f32(a), as_f32(b)) else { unreachable!("f32 views") };
        return panels::gemm_deep(c, a, b, accumulate, threads);
    }
    let grid = tile_grid(c.rows, c.cols, a.cols, tile_side(a.cols, machine::plan_cores()));
    gemm_tiled(c, a, b, accumulate, threads, grid);
}

/// Whether [`gemm`] runs an (m, n, k) product of `F` (C's column stride `c_cs`) on the deep
/// kernel ([`panels::gemm_deep`]): f32 products [`panels::takes_deep`] takes, whose bits are
/// then that kernel's, not the crate's.
pub(crate) fn runs_deep<F: Float>(m: usize, n: usize, k: usize, c_cs: usize) -> bool {
    F::NAME == "f32" && panels::takes_deep(m, n, k, c_cs)
}

/// [`gemm`] cut into the tile grid `(pm, pn)`.
fn gemm_tiled<F: Float>(
    c: MatMut<'_, F>,
    a: Mat<'_, F>,
    b: Mat<'_, F>,
    accumulate: bool,
    threads: usize,
    grid: (usize, usize),
) {
    let (pm, pn) = grid;
    if pm * pn == 1 {
        return gemm_one(c, a, b, accumulate);
    }
    let (m, n) = (c.rows, c.cols);
    let c = SharedMat(c);
    team::for_each(threads, pm * pn, |t| {
        let ((r0, r1), (c0, c1)) = (parts::range(m, pm, 16, t / pn), parts::range(n, pn, 16, t % pn));
        // SAFETY: tiles of one grid are disjoint blocks of C, and each tile runs once.
        let ct = unsafe { c.block(r0, r1 - r0, c0, c1 - c0) };
        gemm_one(ct, a.sub_rows(r0, r1 - r0), b.t().sub_rows(c0, c1 - c0).t(), accumulate);
    });
}

/// Products this deep (k) from which machines with [`NARROW_CORES`] cores cut tiles half as
/// narrow: with a long k a 128-wide tile still runs near the crate's peak, and the large LSTMs'
/// per-step products get twice the parts (LSTM H = 1024, B = 64: dh_{t−1} = dpre · W_hh in 8
/// tiles instead of 4; the schedule model predicts H1024 B64 and H512 L2 B64 31% faster at 16
/// threads, both unchanged at 1–2; measured at 2 threads, 128-wide tiles cost H1024 2.5%).
const NARROW_K: usize = 1024;
/// The cores (`machine::plan_cores`) from which deep products take narrow tiles.
const NARROW_CORES: usize = 8;

/// The shortest side of a tile of a product of depth `k` on a machine of `cores` cores.
fn tile_side(k: usize, cores: usize) -> usize {
    if k >= NARROW_K && cores >= NARROW_CORES { TILE_SIDE / 2 } else { TILE_SIDE }
}

/// The tile grid (rows × columns of C) of an (m, n, k) product: about one tile per
/// [`TILE_WORK`] (two from [`SPLIT_WORK`]), at most `team::MAX_PARTS`, tiles at least `side`
/// long on a cut side (else halves), a power of two per side, cut at whole 16-wide microkernel
/// blocks, cutting the side whose tiles are longer.
fn tile_grid(m: usize, n: usize, k: usize, side: usize) -> (usize, usize) {
    let work = m * n * k;
    if work < SPLIT_WORK || m.max(n) < 32 {
        return (1, 1);
    }
    let tiles = (work / TILE_WORK).clamp(2, team::MAX_PARTS);
    // Powers of two on each side, so that 2, 4, 8, 16 threads share the tiles evenly.
    let (mut pm, mut pn) = (1, 1);
    while pm * pn < tiles {
        let (can_m, can_n) = (m / (2 * pm) >= side, n / (2 * pn) >= side);
        if can_m && (m * pn >= n * pm || !can_n) {
            pm *= 2;
        } else if can_n {
            pn *= 2;
        } else {
            break;
        }
    }
    match (pm * pn, m >= n) {
        (1, true) => (2, 1), // halves, as narrow as they come
        (1, false) => (1, 2),
        _ => (pm, pn),
    }
}

/// A matrix view whose disjoint blocks the tiles of one GEMM write from several threads.
struct SharedMat<'a, F>(MatMut<'a, F>);

// SAFETY: only turned into disjoint blocks, one per tile (`MatMut::block`'s contract).
unsafe impl<F: Send> Sync for SharedMat<'_, F> {}

impl<F> SharedMat<'_, F> {
    /// See [`MatMut::block`].
    ///
    /// # Safety
    /// As [`MatMut::block`].
    unsafe fn block(&self, r0: usize, rows: usize, c0: usize, cols: usize) -> MatMut<'_, F> {
        // SAFETY: the caller's contract.
        unsafe { self.0.block(r0, rows, c0, cols) }
    }
}

/// One product, single-threaded: f32 products of up to eight rows in [`few`] where the CPU has
/// AVX-512, else one call of the GEMM crate.
fn gemm_one<F: Float>(c: MatMut<'_, F>, a: Mat<'_, F>, b: Mat<'_, F>, accumulate: bool) {
    if c.rows == 0 || c.cols == 0 {
        return;
    }
    if F::NAME == "f32" && few::takes(c.rows, b.cs, c.cs) {
        let (Some(c), Some(a), Some(b)) = (as_f32_mut(c), as_f32(a), as_f32(b)) else { unreachable!("f32 views") };
        return few::gemm(c, a, b, accumulate);
    }
    crate_gemm(c, a, b, accumulate)
}

/// One call of the GEMM crate, single-threaded.
fn crate_gemm<F: Float>(c: MatMut<'_, F>, a: Mat<'_, F>, b: Mat<'_, F>, accumulate: bool) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for col in 0..n {
                    // SAFETY: within the view's extent, checked on construction.
                    unsafe { *c.data.add(r * c.rs + col * c.cs) = F::zero() };
                }
            }
        }
        return;
    }
    IN_GEMM.with(|f| f.set(true));
    // SAFETY: every view was bounds-checked on construction (`extent` ≤ len), the shapes agree
    // (asserted by `gemm`), `c`'s elements are this call's alone (its constructors' contract),
    // and F is f32 or f64 (the `Float` trait is only implemented for those), which the crate
    // supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data,
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
            gemm::Parallelism::None,
        );
    }
    IN_GEMM.with(|f| f.set(false));
}

/// The precision of the large products (`--precision`): f32 throughout, or bf16 operands with
/// f32 accumulation (`bf16`), which f32 data take where the CPU has AVX512-BF16. Weights,
/// gradients, optimizer state and the cells' math stay f32 either way, as does f64 data (the
/// gradient checks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 products (the GEMM crate).
    #[default]
    F32,
    /// bf16 operands, f32 accumulation ([`bf16`]).
    Bf16,
}

impl Precision {
    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// What products of `F` data run in on this CPU: bf16 only for f32 data where the CPU has
    /// the instruction (else f32: a clean fall-back, never a slow emulation).
    pub fn effective<F: Float>(self) -> Precision {
        if self == Precision::Bf16 && F::NAME == "f32" && bf16::native() { Precision::Bf16 } else { Precision::F32 }
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(crate::Error::Config(format!("`precision` takes f32 or bf16, got '{other}'"))),
        }
    }
}

/// A product's right operand: a plain view, or one packed beforehand — weights read at every
/// step are packed once per pass.
#[derive(Clone, Copy)]
pub enum Operand<'a, F> {
    /// Read as it is (packed on the fly under bf16).
    Plain(Mat<'a, F>),
    /// Packed bf16 (f32 data only).
    Packed(&'a bf16::PackedB),
    /// Packed f32 panels ([`panels`]; f32 data on AVX-512F only).
    Panels(&'a panels::Panels),
}

/// The f32 view of an `F` view when F is f32.
fn as_f32<F: Float>(m: Mat<'_, F>) -> Option<Mat<'_, f32>> {
    f32_slice(m.data).map(|data| Mat { data, rows: m.rows, cols: m.cols, rs: m.rs, cs: m.cs })
}

/// C = rows + A · B on the deep kernel ([`runs_deep`]), every row of C starting as `first +
/// second` (`second` empty: `first`): the bits of C filled with those rows and then accumulated,
/// each block filled just before the kernel reads it ([`panels::Start::Rows`]).
///
/// # Panics
/// If the product does not run on the deep kernel or the rows are not C's width (internal
/// invariants).
pub(crate) fn gemm_deep_onto<F: Float>(
    c: MatMut<'_, F>,
    a: Mat<'_, F>,
    b: Mat<'_, F>,
    rows: [&[F]; 2],
    threads: usize,
) {
    assert!(runs_deep::<F>(c.rows, c.cols, a.cols, c.cs), "a product the deep kernel takes");
    let mut product = [(c, b)];
    match (as_f32(a), f32_slice(rows[0]), f32_slice(rows[1])) {
        (Some(a), Some(first), Some(second)) => {
            let start = panels::Start::Rows { first, second };
            panels::gemm_deep_shared(a, &mut [f32_product(&mut product[0])], None, start, threads)
        }
        _ => unreachable!("f32 views"),
    }
}

/// The f32 views of a product's C and B (F is f32).
fn f32_product<'a, F: Float>((c, b): &'a mut (MatMut<'_, F>, Mat<'_, F>)) -> (MatMut<'a, f32>, Mat<'a, f32>) {
    match (as_f32_mut(c.reborrow()), as_f32(*b)) {
        (Some(c), Some(b)) => (c, b),
        _ => unreachable!("f32 views"),
    }
}

/// The f32 slice of an `F` slice when F is f32.
fn f32_slice<F: Float>(v: &[F]) -> Option<&[f32]> {
    // SAFETY: F is f32 (its name says so; `Float` is implemented for f32 and f64 only).
    (F::NAME == "f32").then(|| unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len()) })
}

/// The f32 slice of an `F` slice when F is f32, mutable.
fn f32_slice_mut<F: Float>(v: &mut [F]) -> Option<&mut [f32]> {
    // SAFETY: F is f32 (its name says so; `Float` is implemented for f32 and f64 only).
    (F::NAME == "f32").then(|| unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<f32>(), v.len()) })
}

/// The f32 view of an `F` view when F is f32.
fn as_f32_mut<F: Float>(m: MatMut<'_, F>) -> Option<MatMut<'_, f32>> {
    (F::NAME == "f32").then(|| MatMut {
        data: m.data.cast::<f32>(),
        rows: m.rows,
        cols: m.cols,
        rs: m.rs,
        cs: m.cs,
        _borrow: PhantomData,
    })
}

thread_local! {
    /// Each thread's packing scratch for bf16 products: it grows to the largest tile the
    /// thread has packed and is reused.
    static PACKS: std::cell::RefCell<(bf16::PackedA, bf16::PackedB)> = std::cell::RefCell::default();
}

/// [`gemm`] in `precision` (see [`Precision::effective`]): under bf16, each tile's operands are
/// rounded and packed on the fly (the same tiles as f32, so results do not depend on the thread
/// count either).
pub fn gemm_at<F: Float>(
    precision: Precision,
    c: MatMut<'_, F>,
    a: Mat<'_, F>,
    b: Mat<'_, F>,
    accumulate: bool,
    threads: usize,
) {
    gemm_w(precision, c, a, Operand::Plain(b), accumulate, threads)
}

/// [`gemm_at`] with a right operand that may be packed already.
///
/// # Panics
/// If the shapes disagree, or a packed operand meets f64 data (internal invariants).
pub fn gemm_w<F: Float>(
    precision: Precision,
    c: MatMut<'_, F>,
    a: Mat<'_, F>,
    b: Operand<'_, F>,
    accumulate: bool,
    threads: usize,
) {
    let b = match b {
        Operand::Plain(b) if precision.effective::<F>() == Precision::F32 => {
            return gemm(c, a, b, accumulate, threads);
        }
        Operand::Plain(b) => Operand::Plain(as_f32(b).unwrap_or_else(|| unreachable!("bf16 runs on f32 data"))),
        Operand::Packed(p) => Operand::Packed(p),
        Operand::Panels(p) => {
            let (Some(c), Some(a)) = (as_f32_mut(c), as_f32(a)) else { unreachable!("panels hold f32 data only") };
            return panels::gemm(c, a, p, accumulate, threads);
        }
    };
    let (Some(c), Some(a)) = (as_f32_mut(c), as_f32(a)) else { unreachable!("bf16 products run on f32 data only") };
    gemm_bf16(c, a, b, accumulate, threads);
}

/// A product with `b` as given: a plain operand in the data's own precision, a packed one in
/// bf16 (see [`gemm_w`]).
pub fn gemm_op<F: Float>(c: MatMut<'_, F>, a: Mat<'_, F>, b: Operand<'_, F>, accumulate: bool, threads: usize) {
    gemm_w(Precision::F32, c, a, b, accumulate, threads)
}

/// Packs `b` ((k, n)) into f32 panels when F is f32 (else leaves `dst` as it is): the weights a
/// pass reads at every step, packed once ([`panels`]).
pub fn pack_panels<F: Float>(dst: &mut panels::Panels, b: Mat<'_, F>, threads: usize) {
    if let Some(b) = as_f32(b) {
        dst.pack(b, threads);
    }
}

/// Packs `b` ((k, n)) into `dst` in bf16 when F is f32 (else leaves `dst` as it is): the weights
/// a pass reads at every step, packed once.
pub fn pack_b<F: Float>(dst: &mut bf16::PackedB, b: Mat<'_, F>) {
    if let Some(b) = as_f32(b) {
        dst.reshape(b.rows, b.cols);
        dst.pack(b);
    }
}

/// The bf16 product on [`gemm`]'s tiles (cut at 16-wide blocks: whole panels of a packed B),
/// each tile's A rows (and a plain B's columns) packed in the thread's scratch.
fn gemm_bf16(c: MatMut<'_, f32>, a: Mat<'_, f32>, b: Operand<'_, f32>, accumulate: bool, threads: usize) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    let (bk, bn) = b_shape(b);
    assert!(a.rows == m && bk == k && bn == n, "bf16 gemm shape mismatch: ({m}x{n}) = ({}x{k}) * ({bk}x{bn})", a.rows);
    if m == 0 || n == 0 {
        return;
    }
    let (pm, pn) = tile_grid(m, n, k, tile_side(k, machine::plan_cores()));
    if pm * pn == 1 {
        return PACKS.with(|packs| {
            let (pa, pb) = &mut *packs.borrow_mut();
            pa.reshape(m, k);
            pa.pack(a);
            let b = pack_operand(b, pb, threads);
            bf16::gemm_cols(c, pa, b, 0, accumulate);
        });
    }
    // The tiles share the operands: all of A (and a plain B) is packed once, in parts on the
    // team, into this thread's scratch; then the tiles run on it.
    PACKS.with(|packs| {
        let (pa, pb) = &mut *packs.borrow_mut();
        pack_a_parts(pa, a, threads);
        let b = pack_operand(b, pb, threads);
        bf16_tiles(c, pa, b, accumulate, threads);
    });
}

/// (k, n) of a right operand.
fn b_shape<F>(b: Operand<'_, F>) -> (usize, usize) {
    match b {
        Operand::Plain(b) => (b.rows, b.cols),
        Operand::Packed(p) => p.shape(),
        Operand::Panels(p) => (p.k(), p.n()),
    }
}

/// `a` rounded and packed into `pa`, in parts on the team.
fn pack_a_parts(pa: &mut bf16::PackedA, a: Mat<'_, f32>, threads: usize) {
    let (m, k) = (a.rows, a.cols);
    let words = bf16::stride(k);
    pa.reshape(m, k);
    // (One block per thread: how the packing is cut never changes a bit, and long blocks read a
    // transposed A along its rows rather than 16 values per row.)
    let blocks = m.div_ceil(16).clamp(1, threads.clamp(1, team::MAX_PARTS));
    let mut rows = parts::chunks(pa.rows_mut(0, m), blocks, |p| parts::range(m, blocks, 16, p).0 * words);
    team::for_each_mut(threads, &mut rows[..blocks], |p, out| {
        let (r0, r1) = parts::range(m, blocks, 16, p);
        bf16::pack_a(out, a.sub_rows(r0, r1 - r0));
    });
}

/// A packed right operand: `b` itself, or a plain one rounded and packed into `pb`, in parts on
/// the team.
fn pack_operand<'a>(b: Operand<'a, f32>, pb: &'a mut bf16::PackedB, threads: usize) -> &'a bf16::PackedB {
    match b {
        Operand::Packed(p) => p,
        Operand::Panels(_) => unreachable!("f32 panels never reach the bf16 kernel (`gemm_w`)"),
        Operand::Plain(b) => {
            let (k, n) = (b.rows, b.cols);
            pb.reshape(k, n);
            let (panels, words) = (n.div_ceil(16), bf16::stride(k));
            let blocks = panels.clamp(1, threads.clamp(1, team::MAX_PARTS));
            let at = |p: usize| parts::range(panels, blocks, 1, p).0;
            let mut cols = parts::chunks(pb.panels_mut(0, panels), blocks, |p| at(p) * words * 16);
            team::for_each_mut(threads, &mut cols[..blocks], |p, out| {
                let (c0, c1) = (at(p) * 16, (at(p + 1) * 16).min(n));
                bf16::pack_b(out, b.t().sub_rows(c0, c1 - c0).t());
            });
            pb
        }
    }
}

/// C (+)= A · B from packed operands, on [`gemm`]'s tiles.
fn bf16_tiles(c: MatMut<'_, f32>, pa: &bf16::PackedA, pb: &bf16::PackedB, accumulate: bool, threads: usize) {
    let (m, n, k) = (c.rows, c.cols, pb.shape().0);
    let (pm, pn) = tile_grid(m, n, k, tile_side(k, machine::plan_cores()));
    let c = SharedMat(c);
    team::for_each(threads, pm * pn, |t| {
        let ((r0, r1), (c0, c1)) = (parts::range(m, pm, 16, t / pn), parts::range(n, pn, 16, t % pn));
        // SAFETY: tiles of one grid are disjoint blocks of C, and each tile runs once.
        let ct = unsafe { c.block(r0, r1 - r0, c0, c1 - c0) };
        bf16::gemm_block(ct, pa, r0, pb, c0, accumulate);
    });
}

/// Several products with one left operand, `c_i (+)= a · b_i` ([`gemm_at`] each): under bf16,
/// `a` is rounded and packed once for all of them (a layer's weight gradients dW_ih and dW_hh
/// both read dpreᵀ); f32 deep products ([`panels::gemm_deep_shared`]) pack each chunk of `a`
/// once. The same bits as the products one by one.
///
/// With `sums` (`a` = dpreᵀ, unit row stride), `a`'s row sums are added to both vectors too,
/// with the bits of [`add_col_sums_twice_on`] over dpre (a layer's bias gradients): on the deep
/// kernel while it packs `a`, otherwise after the products.
///
/// # Panics
/// If `sums` come with an `a` of another layout or other length (internal invariants).
pub fn gemm_shared_a<F: Float>(
    precision: Precision,
    a: Mat<'_, F>,
    products: &mut [(MatMut<'_, F>, Mat<'_, F>)],
    sums: Option<(&mut [F], &mut [F])>,
    accumulate: bool,
    threads: usize,
) {
    assert!(sums.is_none() || a.rs == 1, "row sums of dpreᵀ");
    if (1..=panels::MAX_SHARED).contains(&products.len())
        && precision.effective::<F>() == Precision::F32
        && products.iter().all(|(c, _)| runs_deep::<F>(c.rows, c.cols, a.cols, c.cs))
    {
        // f32 deep products: A's chunks packed once for all, its row sums taken on the way.
        let a = as_f32(a).unwrap_or_else(|| unreachable!("f32 views"));
        let sums = sums.map(|(out, also)| match (f32_slice_mut(out), f32_slice_mut(also)) {
            (Some(out), Some(also)) => panels::RowSums { out, also },
            _ => unreachable!("f32 sums"),
        });
        return match products {
            [p0] => panels::gemm_deep_shared(a, &mut [f32_product(p0)], sums, panels::Start::of(accumulate), threads),
            [p0, p1] => panels::gemm_deep_shared(
                a,
                &mut [f32_product(p0), f32_product(p1)],
                sums,
                panels::Start::of(accumulate),
                threads,
            ),
            _ => unreachable!("1 to MAX_SHARED products"),
        };
    }
    if let Some((out, also)) = sums {
        add_col_sums_twice_on(out, also, a.data, a.cols, a.cs, threads);
    }
    if precision.effective::<F>() == Precision::F32 || products.len() < 2 {
        for (c, b) in products.iter_mut() {
            gemm_at(precision, c.reborrow(), a, *b, accumulate, threads);
        }
        return;
    }
    let a = as_f32(a).unwrap_or_else(|| unreachable!("bf16 runs on f32 data"));
    PACKS.with(|packs| {
        let (pa, pb) = &mut *packs.borrow_mut();
        pack_a_parts(pa, a, threads);
        for (c, b) in products.iter_mut() {
            let (Some(c), Some(b)) = (as_f32_mut(c.reborrow()), as_f32(*b)) else { unreachable!("f32 views") };
            assert!(c.rows == a.rows && b.rows == a.cols && b.cols == c.cols, "bf16 gemm shape mismatch");
            if c.rows == 0 || c.cols == 0 {
                continue;
            }
            let b = pack_operand(Operand::Plain(b), pb, threads);
            bf16_tiles(c, pa, b, accumulate, threads);
        }
    });
}

/// `dst` (cols, rows) = `src` (rows, cols)ᵀ, both row-major; in parts of `dst`'s rows (one per
/// 32k elements, at most 16) on up to `threads` threads.
pub fn transpose<F: Copy + Send + Sync>(src: &[F], rows: usize, cols: usize, dst: &mut [F], threads: usize) {
    let parts = ((rows * cols) >> 15).clamp(1, 16).min(cols.max(1));
    let at = |p: usize| parts::range(cols, parts, 1, p).0 * rows;
    let mut chunks = parts::chunks(&mut dst[..rows * cols], parts, |p| if p == parts { rows * cols } else { at(p) });
    team::for_each_mut(threads, &mut chunks[..parts], |p, out| {
        transpose_cols(src, rows, cols, parts::range(cols, parts, 1, p).0, out)
    });
}

/// Rows c0.. of `src`ᵀ into `dst` (as many as it holds), in 16×16 tiles written one destination
/// row segment at a time (sequential stores; the strided loads stay within 16 cache lines).
fn transpose_cols<F: Copy>(src: &[F], rows: usize, cols: usize, c0: usize, dst: &mut [F]) {
    const TILE: usize = 16;
    let c_end = c0 + dst.len() / rows.max(1);
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for ct in (c0..c_end).step_by(TILE) {
            for c in ct..(ct + TILE).min(c_end) {
                let out = &mut dst[(c - c0) * rows + r0..(c - c0) * rows + r1];
                for (k, v) in out.iter_mut().enumerate() {
                    *v = src[(r0 + k) * cols + c];
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

/// [`add_col_sums`] into two outputs at once (a layer's two bias gradients from one dpre): the
/// same bits as two calls, `m` read once.
pub fn add_col_sums_twice<F: Float>(out: &mut [F], also: &mut [F], m: &[F], rows: usize, rs: usize) {
    let n = out.len();
    assert!(also.len() == n, "two outputs of one width");
    for r in 0..rows {
        let row = &m[r * rs..r * rs + n];
        for ((o, a), &v) in out.iter_mut().zip(also.iter_mut()).zip(row) {
            *o += v;
            *a += v;
        }
    }
}

/// [`add_col_sums_twice`] with the columns cut into blocks shared by up to `threads` threads:
/// each column's sum runs over the rows in order in whichever block holds it, so the bits are
/// those of one call.
pub(crate) fn add_col_sums_twice_on<F: Float>(
    out: &mut [F],
    also: &mut [F],
    m: &[F],
    rows: usize,
    rs: usize,
    threads: usize,
) {
    let n = out.len();
    let blocks = col_blocks(rows, n, threads);
    if blocks == 1 {
        return add_col_sums_twice(out, also, m, rows, rs);
    }
    assert!(also.len() == n, "two outputs of one width");
    let (out, also) = (team::Shared::of(out), team::Shared::of(also));
    team::for_each(threads, blocks, |q| {
        let (c0, c1) = parts::range(n, blocks, 16, q);
        // SAFETY: the blocks are disjoint column ranges of both outputs.
        let (o, a) = unsafe { (out.slice(c0, c1 - c0), also.slice(c0, c1 - c0)) };
        add_col_sums_twice(o, a, &m[c0..], rows, rs);
    });
}

/// `table[r] += src[k]` (rows of `width`) for every pair (k, r) that `pairs` hands its sink, in
/// that order, over `rows` rows of `src`, with the columns cut into blocks shared by up to
/// `threads` threads: each element's rows are added in the same order whichever block holds
/// it, so the bits are those of one thread. (The token table's scatter: every step's dpre rows
/// into their tokens' rows.)
pub(crate) fn scatter_add_rows_on<F: Float>(
    table: &mut [F],
    src: &[F],
    width: usize,
    rows: usize,
    pairs: impl Fn(&mut dyn FnMut(usize, usize)) + Sync,
    threads: usize,
) {
    let blocks = col_blocks(rows, width, threads);
    let table = team::Shared::of(table);
    team::for_each(threads, blocks, |q| {
        let (c0, c1) = parts::range(width, blocks, 16, q);
        pairs(&mut |k, r| {
            // SAFETY: the blocks are disjoint column ranges of every row of the table (bounds
            // asserted by `slice`).
            let dst = unsafe { table.slice(r * width + c0, c1 - c0) };
            add_into(dst, &src[k * width + c0..k * width + c1]);
        });
    });
}

/// Blocks of columns for a pass over `rows` rows of `n` columns on `threads` threads (1: the
/// caller alone): a block keeps at least [`COL_BLOCK`] columns, and a pass under
/// [`COL_WORK`] elements stays whole.
pub(crate) fn col_blocks(rows: usize, n: usize, threads: usize) -> usize {
    if rows * n < COL_WORK { 1 } else { (n / COL_BLOCK).clamp(1, threads.clamp(1, team::MAX_PARTS)) }
}

/// Columns per block of a column-blocked pass, at least (whole cache lines of each row).
const COL_BLOCK: usize = 64;
/// Elements from which a column-blocked pass pays for its hand-off.
const COL_WORK: usize = 1 << 16;

/// `a[i] += b[i]`.
#[inline]
pub fn add_into<F: Float>(a: &mut [F], b: &[F]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Σ x in 8 interleaved partial sums (a fixed order; independent sums let the loop vectorise).
pub fn sum<F: Float>(x: &[F]) -> F {
    let mut acc = [F::zero(); 8];
    let chunks = x.chunks_exact(8);
    let tail: F = chunks.remainder().iter().copied().sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().copied().sum::<F>() + tail
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

#[cfg(test)]
mod tests {
    use super::{Mat, MatMut, gemm};

    /// Deep products on machines of 8+ cores take tiles half as narrow — the large LSTMs'
    /// per-step products (H = 1024, B = 64: dh_{t−1} in 8 tiles, not 4) — with the same bits as
    /// the wider tiles and the uncut product, at any thread count.
    #[test]
    fn narrow_tiles_give_the_same_bits() {
        use super::{TILE_SIDE, gemm_tiled, tile_grid, tile_side};
        assert_eq!(tile_grid(64, 1024, 4096, tile_side(4096, 2)), (1, 4));
        assert_eq!(tile_grid(64, 1024, 4096, tile_side(4096, 16)), (1, 8));
        assert_eq!(tile_grid(64, 4096, 1024, tile_side(1024, 16)), (1, 32));
        assert_eq!(tile_side(512, 64), TILE_SIDE);
        let (m, n, k) = (64, 1024, 1024);
        let val = |i: usize| ((i * 7919) % 97) as f32 / 48.0 - 1.0;
        let a: Vec<f32> = (0..m * k).map(val).collect();
        let b: Vec<f32> = (0..k * n).map(|i| val(i + 13)).collect();
        let run = |grid: (usize, usize), threads: usize| {
            let mut c: Vec<f32> = (0..m * n).map(|i| val(i + 5)).collect();
            gemm_tiled(MatMut::rows(&mut c, m, n), Mat::rows(&a, m, k), Mat::rows(&b, k, n), true, threads, grid);
            c
        };
        let whole = run((1, 1), 1);
        for (grid, threads) in [((1, 4), 1), ((1, 4), 2), ((1, 8), 1), ((1, 8), 3), ((1, 8), 16)] {
            assert!(run(grid, threads) == whole, "grid {grid:?} on {threads} threads differs from one product");
        }
    }

    /// The scattered rows in column blocks: bit for bit the serial sums in order (repeated
    /// targets included), on 1 to 16 threads, with widths that cut into 1 to 4 blocks.
    #[test]
    fn scatter_add_rows_matches_the_serial_sums() {
        let val = |i: usize| ((i * 7919) % 1013) as f32 / 333.0 - 1.5;
        for (rows, width, targets) in [(5, 7, 3), (300, 256, 11), (1000, 100, 65), (64, 4096, 5)] {
            let src: Vec<f32> = (0..rows * width).map(val).collect();
            let target = |k: usize| (k * 31 + k / 3) % targets;
            let init: Vec<f32> = (0..targets * width).map(|i| val(i + 5)).collect();
            let mut want = init.clone();
            for k in 0..rows {
                for j in 0..width {
                    want[target(k) * width + j] += src[k * width + j];
                }
            }
            for threads in [1, 2, 3, 4, 16] {
                let mut got = init.clone();
                let pairs = |sink: &mut dyn FnMut(usize, usize)| (0..rows).for_each(|k| sink(k, target(k)));
                super::scatter_add_rows_on(&mut got, &src, width, rows, pairs, threads);
                assert_eq!(got, want, "rows {rows} width {width} on {threads} threads");
            }
        }
    }

    /// Every part of a transpose, on 1 to 16 threads, odd sizes included.
    #[test]
    fn transpose_matches_the_definition() {
        for (rows, cols) in [(1, 1), (3, 5), (37, 300), (1024, 256)] {
            let src: Vec<u32> = (0..rows * cols).map(|k| k as u32).collect();
            for threads in [1, 2, 3, 16] {
                let mut dst = vec![0; rows * cols];
                super::transpose(&src, rows, cols, &mut dst, threads);
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(dst[c * rows + r], src[r * cols + c], "({rows},{cols}) [{r},{c}]");
                    }
                }
            }
        }
    }

    /// Every layout and size, tiled or not, on 1 to 16 threads, against the definition.
    #[test]
    fn gemm_matches_the_definition() {
        let val = |i: usize| ((i * 7919) % 97) as f64 / 48.0 - 1.0;
        for (m, n, k) in [
            (3, 5, 7),
            (64, 80, 70),
            (200, 40, 64),
            (40, 300, 33),
            (1, 512, 256),
            (33, 1, 600),
            (1040, 300, 70),
            (530, 770, 40),
        ] {
            let a: Vec<f64> = (0..m * k).map(val).collect();
            let b: Vec<f64> = (0..k * n).map(|i| val(i + 13)).collect();
            let want: Vec<f64> =
                (0..m * n).map(|ij| (0..k).map(|l| a[ij / n * k + l] * b[l * n + ij % n]).sum::<f64>() + 0.5).collect();
            let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect(); // (n, k)
            for threads in [1, 2, 3, 16] {
                for transposed_b in [false, true] {
                    let mut c = vec![0.5; m * n];
                    let bv = if transposed_b { Mat::rows(&bt, n, k).t() } else { Mat::rows(&b, k, n) };
                    gemm(MatMut::rows(&mut c, m, n), Mat::rows(&a, m, k), bv, true, threads);
                    for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                        assert!(
                            (x - y).abs() < 1e-9,
                            "({m},{n},{k}) threads {threads} bt {transposed_b}: c[{i}] {x} vs {y}"
                        );
                    }
                }
            }
        }
    }

    /// Large products are cut into at least four tiles, and the tiles give the same bits at
    /// any thread count.
    #[test]
    fn tiles_do_not_depend_on_the_thread_count() {
        let (pm, pn) = super::tile_grid(1040, 300, 70, super::TILE_SIDE);
        assert!(pm * pn >= 4, "grid {pm}x{pn}");
        let (m, n, k) = (1040, 300, 70);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 101) as f32 / 50.0 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 17) % 89) as f32 / 44.0 - 1.0).collect();
        let run = |threads| {
            let mut c = vec![0.25f32; m * n];
            gemm(MatMut::rows(&mut c, m, n), Mat::rows(&a, m, k), Mat::rows(&b, k, n), true, threads);
            c
        };
        let one = run(1);
        for threads in [2, 3, 4, 8, 16] {
            assert!(run(threads) == one, "{threads} threads changed the bits");
        }
    }
}
