//! bf16 products with f32 accumulation, the first piece of mixed precision: operands rounded to
//! bf16 (nearest, ties to even) and packed once, C accumulated in f32 by AVX512-BF16's
//! `vdpbf16ps` — 32 products of bf16 pairs summed into 16 f32 lanes per instruction, twice the
//! multiply-adds of an f32 FMA — with a scalar loop over the same rounded operands where the CPU
//! lacks it. Tested against the definition on the rounded operands and against the f32 GEMM
//! within bf16's rounding; `bptt bench --gemm-peak` measures it beside the crate.
//!
//! Layouts (k is padded to pairs and to a multiple of 32, n to panels of 16 columns, with zeros;
//! A has 16 rows to spare):
//!
//! ```text
//! PackedA (m × k):  word [i · K2 + q]             = (A[i, 2q], A[i, 2q+1])      K2 = ⌈k/32⌉ · 16
//! PackedB (k × n):  word [(p · K2 + q) · 16 + j]  = (B[2q, 16p+j], B[2q+1, 16p+j])
//! ```
//! (each word holds the even-k element in its low half), so one broadcast word of A times one
//! 16-word row of a B panel is one `vdpbf16ps`, and 16 rows of 16 words of A and of a B panel
//! are the operand tiles of one AMX `tdpbf16ps` ([`super::amx`]) — the padding makes every
//! tile whole.

use super::{Mat, MatMut};

pub mod amx;

/// Columns of a B panel: one 512-bit vector of f32 accumulators.
pub(crate) const LANES: usize = 16;
/// k-pairs of one AMX tile: packed rows and panels hold a multiple of this many.
pub(crate) const DEPTH: usize = 16;

/// Words per packed row of A (and rows per panel of B) for depth k: ⌈k/2⌉ pairs, padded with
/// zeros to whole tiles.
pub(crate) fn stride(k: usize) -> usize {
    k.div_ceil(2).next_multiple_of(DEPTH)
}
/// Rows and panels of C one micro-kernel call holds in registers (4 × 4 of 16 accumulators).
const MR: usize = 4;
const NP: usize = 4;

/// True if this CPU runs the AVX512-BF16 kernel (else [`gemm`] takes its scalar loop).
pub fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bf16 (to nearest, ties to even; a NaN stays a NaN), as its bits.
pub fn round(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    let lsb = (b >> 16) & 1;
    (b.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// The f32 value of bf16 bits.
pub fn widen(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Two bf16 values in one word, `lo` in the low half.
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(round(lo)) | (u32::from(round(hi)) << 16)
}

/// A cache line of words.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
struct Line([u32; LANES]);

/// Words that start on a cache line: the packed rows and panels (whole multiples of 16 words)
/// then start on lines of their own, and a 16-word store fills one line.
#[derive(Clone, Debug, Default)]
struct Words {
    lines: Vec<Line>,
    len: usize,
}

impl Words {
    fn zeros(len: usize) -> Self {
        Words { lines: vec![Line::default(); len.div_ceil(LANES)], len }
    }

    /// `len` words, the first ones kept (new ones zero).
    fn resize(&mut self, len: usize) {
        self.lines.resize(len.div_ceil(LANES), Line::default());
        self.len = len;
    }
}

impl std::ops::Deref for Words {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        // SAFETY: `lines` holds at least `len` contiguous u32 (a `Line` is 16 of them, no padding).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl std::ops::DerefMut for Words {
    fn deref_mut(&mut self) -> &mut [u32] {
        // SAFETY: as for `deref`, borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

impl PartialEq for Words {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// A (m × k) rounded to bf16 and packed by rows of k-pairs.
#[derive(Clone, Debug, Default)]
pub struct PackedA {
    m: usize,
    k: usize,
    data: Words,
}

impl PackedA {
    /// Room for an (m × k) matrix.
    pub fn new(m: usize, k: usize) -> Self {
        PackedA { m, k, data: Words::zeros((m + DEPTH) * stride(k)) }
    }

    /// Makes room for an (m × k) matrix, reusing the buffer (it only grows).
    pub fn reshape(&mut self, m: usize, k: usize) {
        (self.m, self.k) = (m, k);
        self.data.resize((m + DEPTH) * stride(k));
    }

    /// Rounds and packs `a` ((m, k), any strides).
    ///
    /// # Panics
    /// If `a`'s shape is not this packing's (an internal invariant).
    pub fn pack(&mut self, a: Mat<'_, f32>) {
        assert!(a.rows == self.m && a.cols == self.k, "PackedA shape");
        pack_a(&mut self.data, a);
    }

    /// The packed rows [r0, r1) (contiguous), for packing a block of them on its own.
    pub(crate) fn rows_mut(&mut self, r0: usize, r1: usize) -> &mut [u32] {
        let words = stride(self.k);
        &mut self.data[r0 * words..r1 * words]
    }
}

/// Rounds and packs `a` ((m, k), any strides) into `out` (m rows of [`stride`] words).
pub(crate) fn pack_a(out: &mut [u32], a: Mat<'_, f32>) {
    let (m, k) = (a.rows, a.cols);
    let (pairs, words) = (k.div_ceil(2), stride(k));
    for row in out.chunks_exact_mut(words).take(m) {
        row[pairs..].fill(0);
    }
    #[cfg(target_arch = "x86_64")]
    if a.cs == 1 && native() {
        // SAFETY: the CPU has the instructions (checked); the view's rows are in bounds.
        unsafe { pack_rows_avx512(out, a.data, m, k, a.rs) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if a.rs == 1 && native() {
        // A transposed view (a weight gradient's dpreᵀ): its columns are contiguous.
        // SAFETY: as above.
        unsafe { pack_cols_avx512(out, a.data, m, k, a.cs) };
        return;
    }
    let at = |i: usize, j: usize| if j < k { a.data[i * a.rs + j * a.cs] } else { 0.0 };
    for (i, row) in out.chunks_exact_mut(words).enumerate().take(m) {
        for (q, w) in row[..pairs].iter_mut().enumerate() {
            *w = pair(at(i, 2 * q), at(i, 2 * q + 1));
        }
    }
}

/// B (k × n) rounded to bf16 and packed in panels of 16 columns by k-pairs.
#[derive(Clone, Debug, Default)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Words,
}

impl PackedB {
    /// Room for a (k × n) matrix.
    pub fn new(k: usize, n: usize) -> Self {
        PackedB { k, n, data: Words::zeros(n.div_ceil(LANES) * stride(k) * LANES) }
    }

    /// Makes room for a (k × n) matrix, reusing the buffer (it only grows).
    pub fn reshape(&mut self, k: usize, n: usize) {
        (self.k, self.n) = (k, n);
        self.data.resize(n.div_ceil(LANES) * stride(k) * LANES);
    }

    /// (k, n).
    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Rounds and packs `b` ((k, n), any strides).
    ///
    /// # Panics
    /// If `b`'s shape is not this packing's (an internal invariant).
    pub fn pack(&mut self, b: Mat<'_, f32>) {
        assert!(b.rows == self.k && b.cols == self.n, "PackedB shape");
        pack_b(&mut self.data, b);
    }

    /// The packed panels [p0, p1) (contiguous), for packing a block of them on its own.
    pub(crate) fn panels_mut(&mut self, p0: usize, p1: usize) -> &mut [u32] {
        let words = stride(self.k) * LANES;
        &mut self.data[p0 * words..p1 * words]
    }
}

/// Rounds and packs `b` ((k, n), any strides) into `out` (⌈n/16⌉ panels of [`stride`] × 16
/// words).
pub(crate) fn pack_b(out: &mut [u32], b: Mat<'_, f32>) {
    let (k, n) = (b.rows, b.cols);
    let (pairs, words) = (k.div_ceil(2), stride(k));
    for panel in out.chunks_exact_mut(words * LANES).take(n.div_ceil(LANES)) {
        panel[pairs * LANES..].fill(0);
    }
    #[cfg(target_arch = "x86_64")]
    if b.cs == 1 && native() {
        // SAFETY: the CPU has the instructions (checked); the view's rows are in bounds.
        unsafe { pack_panels_avx512(out, b.data, k, n, b.rs) };
        return;
    }
    let at = |i: usize, j: usize| if i < k && j < n { b.data[i * b.rs + j * b.cs] } else { 0.0 };
    for (p, panel) in out.chunks_exact_mut(words * LANES).enumerate().take(n.div_ceil(LANES)) {
        for (q, row) in panel.chunks_exact_mut(LANES).enumerate().take(pairs) {
            for (j, w) in row.iter_mut().enumerate() {
                let col = p * LANES + j;
                *w = pair(at(2 * q, col), at(2 * q + 1, col));
            }
        }
    }
}

/// [`PackedA::pack`] of contiguous rows: 32 consecutive values of a row are 16 words, in order.
/// (The instruction flushes denormal inputs to zero, unlike [`round`]; elsewhere they agree.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pack_rows_avx512(out: &mut [u32], a: &[f32], m: usize, k: usize, rs: usize) {
    use std::arch::x86_64::*;
    let (pairs, words) = (k.div_ceil(2), stride(k));
    for i in 0..m {
        let (row, dst) = (&a[i * rs..i * rs + k], &mut out[i * words..i * words + pairs]);
        let whole = k / 32;
        for v in 0..whole {
            // SAFETY: 32 values from 32·v are inside the row, 16 words inside the output row.
            unsafe {
                let lo = _mm512_loadu_ps(row.as_ptr().add(32 * v));
                let hi = _mm512_loadu_ps(row.as_ptr().add(32 * v + 16));
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().add(16 * v).cast(), packed);
            }
        }
        for (q, w) in dst.iter_mut().enumerate().skip(16 * whole) {
            let at = |j: usize| if j < k { row[j] } else { 0.0 };
            *w = pair(at(2 * q), at(2 * q + 1));
        }
    }
}

/// Words j = (x[j], y[j]) of two 16-lane lines, x at `src` and y `line` values further (zeros
/// without `second`), the lanes of `mask` only (others 0), rounded to bf16, into `out` (16).
///
/// # Safety
/// The CPU has AVX-512F/BW and AVX512-BF16; the masked lanes of both lines are readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
#[inline]
unsafe fn pair_lines(src: *const f32, line: usize, second: bool, mask: std::arch::x86_64::__mmask16, out: &mut [u32]) {
    assert!(out.len() >= LANES, "16 words");
    // SAFETY: the caller's contract for the loads; `out` holds 16 words.
    unsafe {
        let v = pair_vector(src, line, second, mask);
        std::arch::x86_64::_mm512_storeu_si512(out.as_mut_ptr().cast(), v);
    }
}

/// [`pair_lines`] as a vector of 16 words.
///
/// # Safety
/// As [`pair_lines`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
#[inline]
unsafe fn pair_vector(
    src: *const f32,
    line: usize,
    second: bool,
    mask: std::arch::x86_64::__mmask16,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // Word j takes element j (the first line) low and element 16 + j (the second) high.
    const ORDER: [i16; 32] = {
        let mut o = [0i16; 32];
        let mut e = 0;
        while e < 32 {
            o[e] = if e % 2 == 0 { (e / 2) as i16 } else { 16 + (e / 2) as i16 };
            e += 1;
        }
        o
    };
    // SAFETY: the caller's contract for the loads; `ORDER` holds 32 indices.
    unsafe {
        let idx = _mm512_loadu_si512(ORDER.as_ptr().cast());
        let x = _mm512_maskz_loadu_ps(mask, src);
        let y = if second { _mm512_maskz_loadu_ps(mask, src.add(line)) } else { _mm512_setzero_ps() };
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(y, x));
        _mm512_permutexvar_epi16(idx, both)
    }
}

/// The 16 × 16 words of `r` transposed in registers: four rounds of swapping the off-diagonal
/// blocks of 8, 4, 2 and 1 (`vpermt2d`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(r: &mut [std::arch::x86_64::__m512i; LANES]) {
    use std::arch::x86_64::*;
    const fn indices(s: usize, high: bool) -> [i32; 16] {
        let mut o = [0i32; 16];
        let mut l = 0;
        while l < 16 {
            // Row i (bit s clear) keeps its lanes without bit s and takes row i + s's lanes
            // l − s; row i + s takes row i's lanes l + s and keeps its own with bit s.
            o[l] = match (l & s == 0, high) {
                (true, false) => l as i32,
                (false, false) => (16 + l - s) as i32,
                (true, true) => (l + s) as i32,
                (false, true) => (16 + l) as i32,
            };
            l += 1;
        }
        o
    }
    const STAGES: [(usize, [i32; 16], [i32; 16]); 4] = [
        (8, indices(8, false), indices(8, true)),
        (4, indices(4, false), indices(4, true)),
        (2, indices(2, false), indices(2, true)),
        (1, indices(1, false), indices(1, true)),
    ];
    for (s, lo, hi) in STAGES {
        // SAFETY: each index array holds 16 lanes.
        let (lo, hi) = unsafe { (_mm512_loadu_si512(lo.as_ptr().cast()), _mm512_loadu_si512(hi.as_ptr().cast())) };
        for i in (0..LANES).filter(|i| i & s == 0) {
            let (x, y) = (r[i], r[i + s]);
            r[i] = _mm512_permutex2var_epi32(x, lo, y);
            r[i + s] = _mm512_permutex2var_epi32(x, hi, y);
        }
    }
}

/// [`PackedA::pack`] of a transposed view (element (i, j) at `a[i + j·cs]`): columns 2q and
/// 2q+1 of 16 rows converted at once and interleaved, 16 such pairs turned in registers so that
/// each row's 16 words are one store.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pack_cols_avx512(out: &mut [u32], a: &[f32], m: usize, k: usize, cs: usize) {
    use std::arch::x86_64::*;
    /// How far ahead along the source lines to prefetch (values: 24 blocks of 16).
    const AHEAD: usize = 24 * LANES;
    /// Packings from this many bytes on are streamed to memory (they would not stay in L2).
    const STREAM: usize = 1 << 20;
    let (pairs, words) = (k.div_ceil(2), stride(k));
    let stream = m * words * 4 >= STREAM;
    let mut block = [_mm512_setzero_si512(); LANES];
    // 32 lines of the source (its rows, when it is a transposed row-major matrix) at a time,
    // read along their length: a walk down its columns would touch a new page at every line.
    for q0 in (0..pairs).step_by(LANES) {
        let span = LANES.min(pairs - q0);
        for i0 in (0..m).step_by(LANES) {
            let width = LANES.min(m - i0);
            let mask: __mmask16 = if width == LANES { 0xffff } else { (1u16 << width) - 1 };
            // The lines of these 2·16 source lines a few blocks on, asked for now: 32 streams
            // at once are more than the hardware prefetchers follow.
            if i0 + AHEAD < m {
                for line in 2 * q0..(2 * (q0 + span)).min(k) {
                    // SAFETY: only an address inside `a` is formed (prefetches never fault).
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(a.as_ptr().add(line * cs + i0 + AHEAD).cast()) };
                }
            }
            for (dq, v) in block.iter_mut().enumerate() {
                let q = q0 + dq;
                *v = if dq < span {
                    // SAFETY: the lanes of `mask` are rows < m of columns 2q (and 2q + 1 < k).
                    unsafe { pair_vector(a.as_ptr().add(2 * q * cs + i0), cs, 2 * q + 1 < k, mask) }
                } else {
                    _mm512_setzero_si512()
                };
            }
            transpose16(&mut block);
            let keep: __mmask16 = if span == LANES { 0xffff } else { (1u16 << span) - 1 };
            for (j, v) in block.iter().enumerate().take(width) {
                let row = &mut out[(i0 + j) * words + q0..(i0 + j) * words + q0 + span];
                // SAFETY: the lanes of `keep` are the row's `span` words. (A large packing's whole
                // lines — 16 words from a multiple of 16: `Words` starts on a line — go straight
                // to memory, past caches they would only crowd.)
                unsafe {
                    let at = row.as_mut_ptr();
                    if stream && span == LANES && (at as usize).is_multiple_of(64) {
                        _mm512_stream_si512(at.cast(), *v);
                    } else {
                        _mm512_mask_storeu_epi32(at.cast(), keep, *v);
                    }
                }
            }
        }
    }
    // Streamed stores are ordered with the rest only by a fence (another thread reads these).
    _mm_sfence();
}

/// [`PackedB::pack`] of contiguous rows: rows 2q and 2q+1 of a 16-column panel converted at once
/// and interleaved into 16 words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pack_panels_avx512(out: &mut [u32], b: &[f32], k: usize, n: usize, rs: usize) {
    use std::arch::x86_64::*;
    let (pairs, words) = (k.div_ceil(2), stride(k));
    // Two rows of the source at a time, along their length (not down each panel's columns).
    for q in 0..pairs {
        for p in 0..n.div_ceil(LANES) {
            let col = p * LANES;
            let width = LANES.min(n - col);
            let mask: __mmask16 = if width == LANES { 0xffff } else { (1u16 << width) - 1 };
            let dst = &mut out[(p * words + q) * LANES..(p * words + q + 1) * LANES];
            // SAFETY: the lanes of `mask` are columns < n of rows 2q (and 2q + 1 < k).
            unsafe { pair_lines(b.as_ptr().add(2 * q * rs + col), rs, 2 * q + 1 < k, mask, dst) };
        }
    }
}

/// `c = a · b` (or `c += a · b` when `accumulate`) from packed bf16 operands, f32 accumulation;
/// one thread. The same operands give the same bits every time on a given machine.
///
/// # Panics
/// If the shapes disagree (an internal invariant).
pub fn gemm(c: MatMut<'_, f32>, a: &PackedA, b: &PackedB, accumulate: bool) {
    assert!(c.cols == b.n, "bf16 gemm shapes");
    gemm_cols(c, a, b, 0, accumulate);
}

/// [`gemm`] into C = the product's columns [col0, col0 + c.cols) (col0 a multiple of 16: whole
/// panels of `b`).
///
/// # Panics
/// If the shapes disagree or `col0` is not a panel's first column (internal invariants).
pub fn gemm_cols(c: MatMut<'_, f32>, a: &PackedA, b: &PackedB, col0: usize, accumulate: bool) {
    assert!(c.rows == a.m, "bf16 gemm shapes");
    gemm_block(c, a, 0, b, col0, accumulate);
}

/// [`gemm_cols`] for C = rows [row0, row0 + c.rows) of the product.
///
/// # Panics
/// As [`gemm_cols`], or if the rows are not in `a` (internal invariants).
pub fn gemm_block(mut c: MatMut<'_, f32>, a: &PackedA, row0: usize, b: &PackedB, col0: usize, accumulate: bool) {
    assert!(
        a.k == b.k && row0 + c.rows <= a.m && col0.is_multiple_of(LANES) && col0 + c.cols <= b.n,
        "bf16 gemm shapes"
    );
    let first = col0 / LANES;
    #[cfg(target_arch = "x86_64")]
    if amx::ready() {
        // SAFETY: AMX is ready (just checked); the shapes were checked above and the views
        // when built; packings hold whole tiles and 16 rows to spare.
        unsafe { amx::gemm(&mut c, a, row0, b, first, accumulate) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: the CPU has AVX-512F and AVX512-BF16 (checked just above); the views were
        // bounds-checked when built and the packings hold their padded sizes.
        unsafe { gemm_avx512(&mut c, a, row0, b, first, accumulate) };
        return;
    }
    gemm_scalar(&mut c, a, row0, b, first, accumulate);
}

/// [`gemm`] without the instruction: the same rounded operands, f32 sums pair by pair.
fn gemm_scalar(c: &mut MatMut<'_, f32>, a: &PackedA, row0: usize, b: &PackedB, first: usize, accumulate: bool) {
    let (pairs, words) = (a.k.div_ceil(2), stride(a.k));
    for i in 0..c.rows {
        for j in 0..c.cols {
            let (p, lane) = (first + j / LANES, j % LANES);
            let mut s = 0.0f32;
            for q in 0..pairs {
                let (x, y) = (a.data[(row0 + i) * words + q], b.data[(p * words + q) * LANES + lane]);
                let lo = widen(x as u16) * widen(y as u16);
                let hi = widen((x >> 16) as u16) * widen((y >> 16) as u16);
                s += lo + hi;
            }
            // SAFETY: (i, j) is inside the view, whose extent was checked when it was built.
            let out = unsafe { &mut *c.data.add(i * c.rs + j * c.cs) };
            *out = if accumulate { *out + s } else { s };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn gemm_avx512(c: &mut MatMut<'_, f32>, a: &PackedA, row0: usize, b: &PackedB, first: usize, accumulate: bool) {
    let panels = c.cols.div_ceil(LANES);
    for p0 in (0..panels).step_by(NP) {
        let np = NP.min(panels - p0);
        for i0 in (0..c.rows).step_by(MR) {
            let mr = MR.min(c.rows - i0);
            // SAFETY: forwarded from the caller (features present, views and packings in bounds).
            unsafe {
                match (mr, np) {
                    (4, 4) => tile::<4, 4>(c, a, row0, b, i0, p0, first, accumulate),
                    (4, 3) => tile::<4, 3>(c, a, row0, b, i0, p0, first, accumulate),
                    (4, 2) => tile::<4, 2>(c, a, row0, b, i0, p0, first, accumulate),
                    (4, 1) => tile::<4, 1>(c, a, row0, b, i0, p0, first, accumulate),
                    // The edge rows, one panel at a time.
                    (3, _) => (p0..p0 + np).for_each(|p| tile::<3, 1>(c, a, row0, b, i0, p, first, accumulate)),
                    (2, _) => (p0..p0 + np).for_each(|p| tile::<2, 1>(c, a, row0, b, i0, p, first, accumulate)),
                    _ => (p0..p0 + np).for_each(|p| tile::<1, 1>(c, a, row0, b, i0, p, first, accumulate)),
                }
            }
        }
    }
}

/// C rows [i0, i0 + R) × panels [p0, p0 + P) (B's panels from `first`): R·P vectors of
/// accumulators on registers, one `vdpbf16ps` per (row, panel) and k-pair.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const P: usize>(
    c: &mut MatMut<'_, f32>,
    a: &PackedA,
    row0: usize,
    b: &PackedB,
    i0: usize,
    p0: usize,
    first: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let (pairs, words) = (a.k.div_ceil(2), stride(a.k));
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    let a_rows: [*const u32; R] = std::array::from_fn(|r| a.data[(row0 + i0 + r) * words..].as_ptr());
    let b_panels: [*const u32; P] = std::array::from_fn(|j| b.data[(first + p0 + j) * words * LANES..].as_ptr());
    for q in 0..pairs {
        // SAFETY: q < pairs, so every read is inside its row of A and its panel of B.
        unsafe {
            let bv: [__m512bh; P] =
                std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(b_panels[j].add(q * LANES).cast())));
            for r in 0..R {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a_rows[r].add(q) as i32));
                for j in 0..P {
                    acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, bv[j]);
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let col = (p0 + j) * LANES;
            let width = LANES.min(c.cols - col);
            let mut lanes = [0.0f32; LANES];
            // SAFETY: `lanes` holds 16 f32.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
            for (l, &x) in lanes.iter().enumerate().take(width) {
                // SAFETY: (i0 + r, col + l) is inside the view (r < rows left, l < width).
                let out = unsafe { &mut *c.data.add((i0 + r) * c.rs + (col + l) * c.cs) };
                *out = if accumulate { *out + x } else { x };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn rounding_is_to_nearest_with_ties_to_even() {
        let ulp = 2f32.powi(-7); // bf16's spacing at 1
        assert_eq!(round(1.0), 0x3f80);
        assert_eq!(widen(round(1.0 + ulp / 2.0)), 1.0, "a tie goes to the even neighbour (down)");
        assert_eq!(widen(round(1.0 + 1.5 * ulp)), 1.0 + 2.0 * ulp, "a tie goes to the even neighbour (up)");
        assert_eq!(widen(round(1.0 + 0.6 * ulp)), 1.0 + ulp);
        assert_eq!(widen(round(-1.0 - 0.4 * ulp)), -1.0);
        assert_eq!(widen(round(f32::INFINITY)), f32::INFINITY);
        assert!(widen(round(f32::NAN)).is_nan());
        assert_eq!(widen(round(f32::MAX)), f32::INFINITY, "beyond bf16's largest finite value");
    }

    /// Against the definition on the rounded operands (f64 sums), at odd sizes, strided views and
    /// with accumulation: within f32 rounding of k terms; and against the f32 GEMM within bf16's
    /// rounding of the operands.
    #[test]
    fn bf16_gemm_equals_the_definition_and_the_f32_gemm() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(30);
        for (m, n, k) in [
            (1, 1, 1),
            (3, 15, 2),
            (4, 16, 7),
            (5, 17, 64),
            (9, 70, 131),
            (8, 64, 256),
            (2, 33, 3),
            (33, 40, 97),
            (48, 17, 64),
        ] {
            for accumulate in [false, true] {
                let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                // A as the transpose of a (k, m) buffer: a strided view.
                let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
                let mut pa = PackedA::new(m, k);
                pa.pack(Mat::rows(&at, k, m).t());
                let mut pb = PackedB::new(k, n);
                pb.pack(Mat::rows(&b, k, n));
                let mut c = c0.clone();
                gemm(MatMut::rows(&mut c, m, n), &pa, &pb, accumulate);
                let mut c32 = c0.clone();
                super::super::gemm(
                    MatMut::rows(&mut c32, m, n),
                    Mat::rows(&a, m, k),
                    Mat::rows(&b, k, n),
                    accumulate,
                    1,
                );
                for i in 0..m {
                    for j in 0..n {
                        let base = if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                        let terms =
                            (0..k).map(|t| widen(round(a[i * k + t])) as f64 * widen(round(b[t * n + j])) as f64);
                        let (sum, mag) = terms.fold((base, base.abs()), |(s, g), x| (s + x, g + x.abs()));
                        let got = c[i * n + j] as f64;
                        let bound = (k as f64 + 2.0) * 2f64.powi(-23) * mag + 1e-30;
                        assert!((got - sum).abs() <= bound, "({m},{n},{k}) [{i},{j}]: {got} vs the definition's {sum}");
                        let mag32: f64 =
                            base.abs() + (0..k).map(|t| (a[i * k + t] * b[t * n + j]).abs() as f64).sum::<f64>();
                        let vs32 = (got - c32[i * n + j] as f64).abs();
                        assert!(
                            vs32 <= 2f64.powi(-7) * mag32 + 1e-6,
                            "({m},{n},{k}) [{i},{j}]: {got} vs f32 {}",
                            c32[i * n + j]
                        );
                    }
                }
                // The vector packings (rows, and the transposed view above) equal the scalar one
                // (a view with neither stride 1: every other element of a wider buffer).
                let wide: Vec<f32> = a.iter().flat_map(|&x| [x, 9.0]).collect();
                let mut pa_scalar = PackedA::new(m, k);
                pa_scalar.pack(Mat::strided(&wide, m, k, 2 * k, 2));
                assert_eq!(pa_scalar.data, pa.data, "({m},{n},{k}): PackedA of a transposed view");
                let mut pa_rows = PackedA::new(m, k);
                pa_rows.pack(Mat::rows(&a, m, k));
                assert_eq!(pa_rows.data, pa.data, "({m},{n},{k}): PackedA by rows");
                let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
                let mut pb_strided = PackedB::new(k, n);
                pb_strided.pack(Mat::rows(&bt, n, k).t());
                assert_eq!(pb_strided.data, pb.data, "({m},{n},{k}): PackedB by rows");
                // The scalar loop computes the same products.
                let mut cs = c0.clone();
                gemm_scalar(&mut MatMut::rows(&mut cs, m, n), &pa, 0, &pb, 0, accumulate);
                for (x, y) in cs.iter().zip(&c) {
                    assert!((x - y).abs() <= (k as f32 + 2.0) * 2f32.powi(-22) * (1.0 + x.abs()) * k as f32);
                }
            }
        }
    }

    /// `gemm_at(Bf16)` on a product large enough to be cut into tiles: the same bits at 1–4
    /// threads and with B packed beforehand (`gemm_w`), within bf16's rounding of the f32 GEMM;
    /// f64 data stay f64 (bit for bit the plain GEMM).
    #[test]
    fn tiled_bf16_products_do_not_depend_on_threads_or_packing() {
        use super::super::{Operand, Precision, gemm_at, gemm_w};
        if !native() {
            eprintln!("skipped: this CPU has no AVX512-BF16 (bf16 products run in f32 here)");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
        let (m, n, k) = (300, 520, 270);
        let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let run = |threads: usize, packed: bool| {
            let mut c = vec![0.5f32; m * n];
            let mut pb = PackedB::new(k, n);
            pb.pack(Mat::rows(&b, k, n));
            let op = if packed { Operand::Packed(&pb) } else { Operand::Plain(Mat::rows(&b, k, n)) };
            gemm_w(Precision::Bf16, MatMut::rows(&mut c, m, n), Mat::rows(&a, m, k), op, true, threads);
            c
        };
        let one = run(1, false);
        for (threads, packed) in [(2, false), (3, false), (4, true), (1, true)] {
            assert!(run(threads, packed) == one, "threads {threads}, packed {packed}: other bits");
        }
        let mut c32 = vec![0.5f32; m * n];
        super::super::gemm(MatMut::rows(&mut c32, m, n), Mat::rows(&a, m, k), Mat::rows(&b, k, n), true, 1);
        let worst = one.iter().zip(&c32).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 2f32.powi(-7) * k as f32 * 0.5, "bf16 vs f32: {worst}");
        assert!(worst > 0.0, "the bf16 product is the f32 one: bf16 did not run");
        let (a64, b64): (Vec<f64>, Vec<f64>) =
            (a.iter().map(|&x| x as f64).collect(), b.iter().map(|&x| x as f64).collect());
        let (mut p, mut q) = (vec![0.0f64; m * n], vec![0.0f64; m * n]);
        gemm_at(Precision::Bf16, MatMut::rows(&mut p, m, n), Mat::rows(&a64, m, k), Mat::rows(&b64, k, n), false, 2);
        super::super::gemm(MatMut::rows(&mut q, m, n), Mat::rows(&a64, m, k), Mat::rows(&b64, k, n), false, 2);
        assert!(p == q, "f64 data under bf16 precision");
    }
}
