//! f32 products against a right operand packed once into column panels: the per-step recurrent
//! products (h_{t−1} · W_hhᵀ forward, dpre_t · W_hh backward), whose weights every step reads
//! again. The GEMM crate repacks its right operand at every call (at LSTM H = 1024, B = 64 its
//! packing took 40% of a training step); here W_hh is packed once per pass, each product packs
//! its few rows of A once (8-row blocks, k-major), and a register block of 8 rows × 48 columns
//! (24 accumulators) runs over a panel with the next panel brought toward L2 meanwhile. Deep
//! products (the weight gradients over T·B rows, [`gemm_deep`]) run the same block over chunks
//! of k with both operands packed per chunk. AVX-512F, or AVX2 with FMA in 4 × 24 sub-blocks
//! ([`avx2`]), checked at run time; elsewhere the crate runs these products.
//!
//! Each element of C is one chain of fused multiply-adds over k in order (per chunk of a deep
//! product), then + C when accumulating, as in [`few`]: the same bits however rows and panels are
//! cut into tiles or threads — and the same bits as [`few`] on the same operands.

#[cfg(target_arch = "x86_64")]
mod avx2;

use super::few;
use super::{Mat, MatMut, SharedMat, TILE_WORK, team};
use std::cell::RefCell;

use std::time::Instant;

/// Columns per panel: three AVX-512 vectors of f32.
const NR: usize = 48;
/// Rows per register block (8 × 3 accumulators of 16 lanes: 24 of the 32 registers).
const MR: usize = 8;
/// Tiles of one product, at most.
const MAX_TILES: usize = 16;

/// One cache line of f32: the packed panels start on one, so their vector loads are aligned.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A (k, n) right operand in panels of [`NR`] columns: panel p holds columns [p·NR, p·NR + NR)
/// as k rows of NR contiguous floats (zeros past n).
#[derive(Clone, Default)]
pub struct Panels {
    lines: Vec<Line>,
    k: usize,
    n: usize,
}

impl std::fmt::Debug for Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Panels({} × {})", self.k, self.n)
    }
}

/// Whether this CPU runs the panel kernel (AVX-512F, or AVX2 with FMA: [`avx2`]).
pub fn native() -> bool {
    super::machine::simd() >= super::machine::Simd::Avx2
}

impl Panels {
    /// Rows of the packed operand (the products' depth).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the packed operand.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The f32 elements a packing of a (k, n) operand holds (in u128: memory estimates of
    /// sizes that cannot exist do not overflow).
    pub fn len_for(k: u128, n: u128) -> u128 {
        n.div_ceil(NR as u128) * NR as u128 * k
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn data(&self) -> &[f32] {
        // SAFETY: a `Line` is 16 f32 without padding, so the lines are contiguous f32.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * 16) }
    }

    /// Panel p: k rows of NR floats, starting on a cache line.
    fn panel(&self, p: usize) -> &[f32] {
        let size = self.k * NR;
        &self.data()[p * size..(p + 1) * size]
    }

    /// Packs `b` ((k, n), any strides) on up to `threads` threads; the buffer grows on first use
    /// and is reused after.
    pub fn pack(&mut self, b: Mat<'_, f32>, threads: usize) {
        let (k, n) = (b.rows, b.cols);
        let len = n.div_ceil(NR) * NR * k;
        if self.lines.len() * 16 < len {
            self.lines.resize(len.div_ceil(16), Line::default());
        }
        (self.k, self.n) = (k, n);
        let panels = self.panels();
        let size = k * NR;
        let dst = team::Shared::of(&mut self.data_mut()[..len]);
        let parts = panels.clamp(1, MAX_TILES);
        team::for_each(threads, parts, |part| {
            let (p0, p1) = super::parts::range(panels, parts, 1, part);
            for p in p0..p1 {
                // SAFETY: each panel is one part's alone, and the buffer outlives the pass.
                let out = unsafe { dst.slice(p * size, size) };
                let (c0, w) = (p * NR, (n - p * NR).min(NR));
                if b.cs == 1 && w == NR {
                    // Rows of b are contiguous: copy each row's NR columns (a fixed size, not a
                    // call per row).
                    for (kk, row) in out.chunks_exact_mut(NR).enumerate() {
                        let at = kk * b.rs + c0;
                        let src: &[f32; NR] =
                            b.data[at..at + NR].try_into().unwrap_or_else(|_| unreachable!("NR floats"));
                        row.copy_from_slice(src);
                    }
                } else if b.cs == 1 {
                    for (kk, row) in out.chunks_exact_mut(NR).enumerate() {
                        let src = &b.data[kk * b.rs + c0..];
                        row[..w].copy_from_slice(&src[..w]);
                        row[w..].fill(0.0);
                    }
                } else {
                    // Columns of b are contiguous (a transposed view): read along each column.
                    for j in 0..NR {
                        for kk in 0..k {
                            out[kk * NR + j] = if j < w { b.data[kk * b.rs + (c0 + j) * b.cs] } else { 0.0 };
                        }
                    }
                }
            }
        });
    }

    fn data_mut(&mut self) -> &mut [f32] {
        // SAFETY: as `data`, borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.lines.len() * 16) }
    }
}

thread_local! {
    /// Each thread's packed rows of A for [`gemm`] (it grows to the largest product the thread
    /// has run and is reused).
    static ROWS: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    /// Each thread's partial chains of its tile's units between chunks of k ([`units_chunked`]).
    static PARTIAL: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// Rows of k per chunk of a deep per-step product ([`units_chunked`]): a chunk of A's row
/// blocks (64 rows × 1024 floats, 256 KB) stays in L2 while the panels' chunks (1024 × 48
/// floats, 192 KB each) stream past it, each the depth of a whole panel of the forward
/// product (H = 1024's k). LSTM H = 1024, B = 64, two threads, dh_{t−1} = dpre · W_hh (k =
/// 4096), against 128-deep chunks (8 × 128 floats of each row block in L1, partial sums
/// loaded and stored 32 times per unit): the products 219 → 201 and 207 → 195 ms a step, the
/// whole step +3.4% and +1.3% (paired medians of 24 in-process pairs each); 512: +0.6%, 2048:
/// +1.8%.
const STEP_KC: usize = 1024;
/// Depth from which a per-step product runs in chunks of [`STEP_KC`]: a deeper product's
/// packed rows of A (≥ 1 MB at 64 rows), its panel (≥ 768 KB) and the next one being fetched
/// do not fit L2 together. One thread, 64 rows × k 4096 × n 1024: 82 GFLOP/s whole, 96 with
/// each panel in chunks, 107–112 with every panel of a tile over one chunk before the next.
/// At k = 2048 (LSTM H = 512's dh_{t−1} = dpre · W_hh) whole panels win on two threads: the
/// whole step +1.8% and +1.9% in two in-process A/B runs (16 and 24 paired steps), where
/// H = 1024's k = 4096 lost 1.1% whole.
const STEP_CHUNKS_FROM: usize = 4096;

/// Where a register block's chains start and end: from zero or the partial sums of an earlier
/// chunk, into C (+ C when accumulating) or into the partial sums for the next chunk.
#[derive(Clone, Copy, Debug, Default)]
struct Chain {
    from_partial: bool,
    to_partial: bool,
}

/// C (m × n) (+)= A (m × k) · B, B packed, on up to `threads` threads: A's rows (if long)
/// packed once, a share by each tile; the (panel, row block) units cut into runs, one tile per
/// core or thread (each tile's panels in turn, its row blocks of a panel while it is hot), in
/// proportion to the lanes' recent paces (`team::paced_cuts`), handed out as the tiles run (a
/// tile done first takes over the end of a slower one's run, `team::Claims`), each tile
/// bringing its next panel toward L2 while one runs.
///
/// # Panics
/// If the shapes disagree, C has a non-unit column stride, or the CPU lacks AVX-512F (internal
/// invariants: callers pack only where [`native`]).
pub fn gemm(c: MatMut<'_, f32>, a: Mat<'_, f32>, b: &Panels, accumulate: bool, threads: usize) {
    assert!(native(), "panel products need AVX-512F");
    assert!(a.rows == c.rows && a.cols == b.k && b.n == c.cols, "panel product shape mismatch");
    assert!(c.cs == 1, "panel products write rows of C");
    let (m, k, panels) = (c.rows, b.k, b.panels());
    if m == 0 || panels == 0 {
        return;
    }
    // The work in units of one row block × one panel, in panel order; a tile is a run of them
    // (a panel is cut between two tiles at a row block), one tile per core (the schedule
    // model's parts) or thread where the product pays for its hand-off. Runs cut at units keep
    // threads even whatever the panel count (11 panels in 5 tiles left one of two threads 7
    // panels, the other 4), and each panel stays with one or two tiles, so with one tile per
    // core its share of W_hh stays in that core's cache from step to step. The runs follow the
    // lanes' paces (equal at first): on two cores of a virtual machine whose speeds differ,
    // equal runs left the faster one waiting 6–8% of every per-step product (LSTM H = 1024,
    // B = 64), paced ones 2–4%. Finer tiles that a faster lane takes over one by one cost
    // more than they saved (one thread, 16 tiles per core: 64 × 4096 × 1024 80 → 58% of the
    // FMA peak, 64 × 1024 × 4096 85 → 78%); instead each tile runs its own run in halves and
    // a tile done first takes over the slowest one's last panel (of row blocks) at a time, so
    // a core that slows down within a product leaves the rest of its run to the other.
    let blocks = m.div_ceil(MR);
    let units = panels * blocks;
    let cap = threads.max(super::machine::plan_cores()).min(MAX_TILES);
    let tiles = (m * b.n * k / TILE_WORK).clamp(1, cap).min(units);
    // Long rows are packed (rows 4 KB apart share L1 sets, and one pointer walks a packed block),
    // each tile packing its share of the row blocks before any tile reads them; short ones are
    // read in place, where packing costs more than it saves.
    let pack = a.cs != 1 || k >= PACK_K;
    let c = SharedMat(c);
    ROWS.with(|rows| {
        let mut lines = rows.borrow_mut();
        let ap =
            if pack { team::Shared::of(lines_f32(&mut lines, blocks * MR * k)) } else { team::Shared::of(&mut []) };
        let phases = if pack { 2 } else { 1 };
        // The tiles' runs (handed out as they run: a faster lane takes over the end of a
        // slower one's), and each tile's units and product time for the lanes' paces.
        let cuts = team::paced_cuts(units, tiles, threads, 1);
        let claims = team::Claims::new(&cuts, blocks, threads);
        team::run(
            threads,
            tiles,
            phases,
            |phase| phase == 1,
            |tile, phase| {
                if phase + 1 < phases {
                    let (q0, q1) = super::parts::range(blocks, tiles, 1, tile);
                    // SAFETY: the tiles pack disjoint row blocks of the buffer; the product phase
                    // reads it only after every tile has packed (a meeting).
                    let out = unsafe { ap.slice(q0 * MR * k, (q1 - q0) * MR * k) };
                    pack_rows(out, a, None, q0 * MR, (q1 * MR).min(m) - q0 * MR, 0, k);
                    return;
                }
                // SAFETY: every tile has packed its blocks (above), and none writes them now.
                let rows = if pack {
                    Rows { data: unsafe { ap.read(0, ap.len()) }, rs: 0 }
                } else {
                    Rows { data: a.data, rs: a.rs }
                };
                let started = Instant::now();
                while let Some((u0, u1)) = claims.next(tile) {
                    if k >= STEP_CHUNKS_FROM {
                        units_chunked(&c, rows, (u0, u1), blocks, b, accumulate);
                        continue;
                    }
                    let mut u = u0;
                    while u < u1 {
                        let (p, q0) = (u / blocks, u % blocks);
                        let q1 = (u1 - p * blocks).min(blocks);
                        let (c0, w) = (p * NR, (b.n - p * NR).min(NR));
                        let (r0, r1) = (q0 * MR, (q1 * MR).min(m));
                        // SAFETY: every unit goes to one tile (`Claims`): disjoint blocks of C.
                        let ct = unsafe { c.block(r0, r1 - r0, c0, w) };
                        let next = if (p + 1) * blocks < u1 { b.panel(p + 1) } else { &[] };
                        panel(ct, rows, q0, b.panel(p), k, accumulate, next);
                        u = p * blocks + q1;
                    }
                }
                claims.time(tile, started);
            },
        );
        team::record_pace(&claims.ran()[..tiles]);
    });
}

/// The first `len` f32 of `lines`, grown (zeros) to hold them.
fn lines_f32(lines: &mut Vec<Line>, len: usize) -> &mut [f32] {
    if lines.len() * 16 < len {
        lines.resize(len.div_ceil(16), Line::default());
    }
    // SAFETY: a `Line` is 16 f32 without padding, so the lines hold `len` contiguous f32.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), len) }
}

/// Depth from which [`gemm`] packs A's rows.
const PACK_K: usize = 512;

/// A's rows as a register block reads them: packed by [`pack_rows`] (`rs` 0: element (i, kk) of
/// block q at q·MR·k + kk·MR + i), or in place with unit column stride (element (r, kk) at
/// r·rs + kk).
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [f32],
    rs: usize,
}

impl<'a> Rows<'a> {
    /// The rows of block q (rows [q·MR, q·MR + MR)).
    fn block(self, q: usize, k: usize) -> Rows<'a> {
        let at = if self.rs == 0 { q * MR * k } else { q * MR * self.rs };
        Rows { data: &self.data[at..], rs: self.rs }
    }

    /// A block's rows from column k0 on.
    fn skip(self, k0: usize) -> Rows<'a> {
        let at = if self.rs == 0 { k0 * MR } else { k0 };
        Rows { data: &self.data[at..], rs: self.rs }
    }
}

/// Rows of C's columns [c0, c0 + w) (the view `c`, w ≤ NR: rows from row block `q0` on) from
/// one panel (k × NR), every row block while the panel is hot. The calls share out the
/// prefetch of `next` (a panel, or empty).
fn panel(c: MatMut<'_, f32>, ap: Rows<'_>, q0: usize, b: &[f32], k: usize, accumulate: bool, next: &[f32]) {
    let m = c.rows;
    let blocks = m.div_ceil(MR);
    for q in 0..blocks {
        let (r0, rows) = (q * MR, (m - q * MR).min(MR));
        let fetch = share(next, blocks, q);
        // SAFETY: rows [r0, r0 + rows) of this call's block of C.
        let cb = unsafe { c.block(r0, rows, 0, c.cols) };
        tile_rows(rows, cb, ap.block(q0 + q, k), b, k, accumulate, fetch, (Chain::default(), &mut []));
    }
}

/// Call q's share of the lines of `next` (whole lines) when `calls` calls share out bringing
/// it toward L2.
fn share(next: &[f32], calls: usize, q: usize) -> &[f32] {
    let lines = next.len() / 16;
    let per_call = lines.div_ceil(calls.max(1));
    let first = (q * per_call).min(lines);
    &next[16 * first..16 * (first + per_call.min(lines - first))]
}

/// A tile's run of (panel, row block) units `[u0, u1)` of a deep per-step product, chunk by
/// chunk of k: every unit of the run over one chunk before the next chunk, so that one chunk
/// of A's rows stays in L2 while the panels' chunks stream past it, each unit's chains carried
/// from chunk to chunk in `PARTIAL` (exact f32: the same chain as one run over all of k).
fn units_chunked(
    c: &SharedMat<'_, f32>,
    ap: Rows<'_>,
    (u0, u1): (usize, usize),
    blocks: usize,
    b: &Panels,
    accumulate: bool,
) {
    let (m, k) = (c.0.rows, b.k);
    let kc_of = |chunk: usize| (chunk * STEP_KC, (k - chunk * STEP_KC).min(STEP_KC));
    let chunks = k.div_ceil(STEP_KC);
    let p_end = (u1 - 1) / blocks + 1;
    PARTIAL.with(|partial| {
        let mut partial = partial.borrow_mut();
        let carry = lines_f32(&mut partial, (u1 - u0) * MR * NR);
        for chunk in 0..chunks {
            let (k0, kc) = kc_of(chunk);
            let chain = Chain { from_partial: chunk > 0, to_partial: chunk + 1 < chunks };
            for u in u0..u1 {
                let (p, q) = (u / blocks, u % blocks);
                let (r0, rows) = (q * MR, (m - q * MR).min(MR));
                let (c0, w) = (p * NR, (b.n - p * NR).min(NR));
                // The same chunk of the next panel, or the next chunk of the run's first one.
                let next: &[f32] = if p + 1 < p_end {
                    &b.panel(p + 1)[k0 * NR..(k0 + kc) * NR]
                } else if chunk + 1 < chunks {
                    let (k1, kc1) = kc_of(chunk + 1);
                    &b.panel(u0 / blocks)[k1 * NR..(k1 + kc1) * NR]
                } else {
                    &[]
                };
                let fetch = share(next, blocks, q);
                // SAFETY: the tile's units are disjoint blocks of C.
                let cb = unsafe { c.block(r0, rows, c0, w) };
                let part = &mut carry[(u - u0) * MR * NR..(u - u0 + 1) * MR * NR];
                tile_rows(
                    rows,
                    cb,
                    ap.block(q, k).skip(k0),
                    &b.panel(p)[k0 * NR..],
                    kc,
                    accumulate,
                    fetch,
                    (chain, part),
                );
            }
        }
    });
}

/// Rows of k per chunk of a deep product ([`gemm_deep`]): a chunk's panel (k × 48, 192 KB)
/// stays in L2 while every row block of a super-block runs over it, and every chunk reads and
/// writes all of C once (at LSTM H = 1024 a 16 MB dW_hh). Two threads, medians of 9
/// alternating runs, 1024 against 256: dL/dx 6400 × 512 × 2048 +13%, dW 2048 × 512 × 6400
/// +4%, 4096 × 1024 × 6400 +10%; 2048 × 64 × 6400 (two panels per super-block of A) −2%.
/// k is cut into equal chunks of at most this ([`chunk_depth`]).
const KC: usize = 1024;

/// The depth of each chunk but the last of a deep product over k: k cut into as few chunks of
/// at most [`KC`] as it takes, equal to a cache line of floats (6400 = 6 × 928 + 832 rather
/// than 6 × 1024 + 256, whose short last chunk reads and writes all of C for a quarter of the
/// work). dW_hh of LSTM H = 1024, B = 64 (4096 × 1024 × 6400) alone, two threads, in one
/// process alternating with the uneven cut: with the next panel also brought toward L2
/// ([`deep_rows`]) 248 → 276, 234 → 246 and, on one thread, 111 → 118 GFLOP/s.
fn chunk_depth(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC).max(1)).next_multiple_of(16).min(KC)
}

/// Rows of C per super-block of a tile of a deep product: their packed A chunk (512 KB) stays
/// in L2 while every panel runs over it; the rows a faster lane takes over from a slower one at a
/// time.
const SUPER_ROWS: usize = 128;
/// Depth from which [`gemm_deep`] takes a product (shallower ones keep the crate).
pub(crate) const DEEP_K: usize = 1024;

thread_local! {
    /// The caller's chunk of each deep product's B, packed into panels once for every tile (it
    /// grows to the largest product the thread has run and is reused).
    static DEEP_B: RefCell<[Panels; MAX_SHARED]> = RefCell::default();
    /// Each thread's super-block of A's rows for deep products, packed.
    static DEEP_A: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// The f32 values a thread's deep products keep for reuse at n columns at most (`wide` for
/// one product alone: a stacked layer's input projection, G·H wide): a chunk of B of each of
/// [`MAX_SHARED`] products, packed, and a super-block of A's rows.
pub(crate) fn deep_scratch_len(n: u128, wide: u128) -> u128 {
    Panels::len_for(KC as u128, n.max(wide))
        + (MAX_SHARED as u128 - 1) * Panels::len_for(KC as u128, n)
        + (SUPER_ROWS * KC) as u128
}

/// Depth from which [`gemm_deep`] also takes wide products over many rows (at least
/// [`WIDE_ROWS`] × [`WIDE_COLS`]): a stacked layer's input projection over all T·B rows. LSTM
/// H = 512 × 2 layers, B = 64 (6400 × 2048 × 512, the crate's 96 ms of an 830 ms step): the
/// whole step +2.4% and +4.1% in two in-process A/B runs (18 and 24 paired steps).
const DEEP_K_WIDE: usize = 512;
/// Rows and columns from which [`DEEP_K_WIDE`] applies (a per-step product has a batch's rows).
const WIDE_ROWS: usize = 1024;
const WIDE_COLS: usize = 256;

/// Whether [`gemm_deep`] runs an (m, n, k) product: deep ones (or wide ones over many rows),
/// with rows to cut and columns to fill a panel, where the CPU has AVX-512F.
pub(crate) fn takes_deep(m: usize, n: usize, k: usize, c_cs: usize) -> bool {
    let deep = k >= DEEP_K || (k >= DEEP_K_WIDE && m >= WIDE_ROWS && n >= WIDE_COLS);
    deep && m >= 4 * MR && n >= NR && c_cs == 1 && native()
}

/// C (m × n) (+)= A (m × k) · B (k × n) for deep products with any strides — the weight
/// gradients, dW = dpreᵀ · x over all T·B rows, and dL/dx = dpre · W_ih: k is cut into chunks
/// of [`KC`]; each chunk's B is packed into panels once (by every thread, a share each), then
/// C's rows are cut into one tile per thread in proportion to the lanes' rates in the chunk
/// before (the first by their recent paces), handed out as the tiles run (`team::Claims`: a
/// faster lane takes over the end of a slower one's), each super-block of A's rows packed by
/// the thread that runs it.
///
/// Each element of C is, per chunk in order, one chain of fused multiply-adds over the chunk's
/// k from zero, added to C (stored, for the first chunk of a product that does not accumulate):
/// the same bits however the rows are cut, so on any thread count.
///
/// # Panics
/// If the shapes disagree or the product is not one [`takes_deep`] (internal invariants).
pub fn gemm_deep(c: MatMut<'_, f32>, a: Mat<'_, f32>, b: Mat<'_, f32>, accumulate: bool, threads: usize) {
    gemm_deep_shared(a, &mut [(c, b)], None, Start::of(accumulate), threads);
}

/// What a deep product's C starts as ([`gemm_deep_shared`]); each element's chains over k are
/// then added to it.
#[derive(Clone, Copy)]
pub(crate) enum Start<'a> {
    /// Zero: C is overwritten.
    Zero,
    /// C as it is: the product accumulates.
    C,
    /// Every row of C as `first + second` (`second` empty: `first` alone), written into each
    /// block just before its first chain is added: the bits of C filled with those rows first
    /// and then accumulated (a stacked layer's input projection onto its biases), without a pass
    /// of its own over all of C.
    Rows { first: &'a [f32], second: &'a [f32] },
}

impl Start<'_> {
    /// Zero, or C as it is.
    pub(crate) fn of(accumulate: bool) -> Self {
        if accumulate { Start::C } else { Start::Zero }
    }
}

/// Two vectors of A's rows to which [`gemm_deep_shared`] adds A's row sums while it packs A:
/// `out[i] += a[i][kk]` and `also[i] += a[i][kk]` for every kk in order, the additions of
/// `kernels::add_col_sums_twice` over the rows of Aᵀ (a layer's bias gradients, the column sums
/// of dpre, summed while dpreᵀ passes through the packing for dW instead of in a pass of their
/// own over all of dpre): the same bits.
pub(crate) struct RowSums<'a> {
    pub(crate) out: &'a mut [f32],
    pub(crate) also: &'a mut [f32],
}

/// Deep products that share their left operand at most (a layer's dW_ih and dW_hh).
pub(crate) const MAX_SHARED: usize = 2;

/// [`gemm_deep`] for up to [`MAX_SHARED`] products with one left operand, `c_i (+)= a · b_i`:
/// each super-block of A's rows packed once for all of them (a layer's dW_ih and dW_hh both
/// read dpreᵀ; at n = 64 dW_ih spent 40% of its time packing it). The same bits as the
/// products one by one.
///
/// # Panics
/// If there are no products or more than [`MAX_SHARED`], the shapes disagree, or a product is
/// not one [`takes_deep`] (internal invariants).
pub(crate) fn gemm_deep_shared(
    a: Mat<'_, f32>,
    products: &mut [(MatMut<'_, f32>, Mat<'_, f32>)],
    sums: Option<RowSums<'_>>,
    start: Start<'_>,
    threads: usize,
) {
    let (m, k) = (a.rows, a.cols);
    if let Start::Rows { first, second } = start {
        assert!(products.len() == 1, "rows to start from for one product");
        let n = products[0].0.cols;
        assert!(first.len() == n && (second.is_empty() || second.len() == n), "a start row per column of C");
    }
    assert!((1..=MAX_SHARED).contains(&products.len()), "1 to {MAX_SHARED} deep products share A");
    assert!(sums.as_ref().is_none_or(|s| s.out.len() == m && s.also.len() == m), "a row sum per row of A");
    let sums = sums.map(|s| [team::Shared::of(s.out), team::Shared::of(s.also)]);
    for (c, b) in products.iter() {
        assert!(c.rows == m && b.rows == k && b.cols == c.cols, "deep product shape mismatch");
        assert!(takes_deep(m, c.cols, k, c.cs), "a deep product of a shape it does not take");
    }
    // A tile per core (the schedule model's parts) or thread. (The bits do not depend on the cut.)
    let blocks = m.div_ceil(MR);
    let tiles = threads.max(super::machine::plan_cores()).clamp(1, team::MAX_PARTS).min(m / (4 * MR)).max(1);
    let count = products.len();
    let mut shared: [Option<(SharedMat<'_, f32>, Mat<'_, f32>)>; MAX_SHARED] = Default::default();
    for (slot, (c, b)) in shared.iter_mut().zip(products.iter_mut()) {
        *slot = Some((SharedMat(c.reborrow()), *b));
    }
    let mut cuts = team::paced_cuts(blocks, tiles, threads, 1);
    DEEP_B.with(|bp| {
        let mut bp = bp.borrow_mut();
        let (mut k0, depth) = (0, chunk_depth(k));
        while k0 < k {
            let kc = (k - k0).min(depth);
            for (bp, (_, b)) in bp.iter_mut().zip(shared.iter().flatten()) {
                bp.pack(b.sub_rows(k0, kc), threads);
            }
            // (Later chunks add to what the first left in C.)
            let (bp, chunk_start) = (&*bp, if k0 == 0 { start } else { Start::C });
            let claims = team::Claims::new(&cuts, SUPER_ROWS / MR, threads);
            team::for_each(threads, tiles, |tile| {
                let started = Instant::now();
                DEEP_A.with(|ap| {
                    let ap = &mut *ap.borrow_mut();
                    while let Some((q0, q1)) = claims.next(tile) {
                        let (r0, r1) = (q0 * MR, (q1 * MR).min(m));
                        let mut rows: [Option<MatMut<'_, f32>>; MAX_SHARED] = Default::default();
                        for (slot, (c, _)) in rows.iter_mut().zip(shared.iter().flatten()) {
                            // SAFETY: every row block goes to one tile (`Claims`): disjoint rows of
                            // each C.
                            *slot = Some(unsafe { c.block(r0, r1 - r0, 0, c.0.cols) });
                        }
                        // SAFETY: as C's rows: these rows of the sums are this tile's alone.
                        let sums = sums.map(|s| s.map(|v| unsafe { v.slice(r0, r1 - r0) }));
                        let a = a.sub_rows(r0, r1 - r0);
                        deep_rows(&mut rows[..count], a, sums, (k0, kc), chunk_start, bp, ap);
                    }
                });
                claims.time(tile, started);
            });
            let ran = claims.ran();
            team::record_pace(&ran[..tiles]);
            cuts = cuts.rebalanced(&ran[..tiles]);
            k0 += kc;
        }
    });
}

/// Rows of one chunk [k0, k0 + kc) of [`gemm_deep_shared`] on one thread, `bp` each product's
/// chunk of B in panels: super-block by super-block of rows, A's rows packed once, every panel
/// of every product over every row block, each block of C started as `start` says.
fn deep_rows(
    products: &mut [Option<MatMut<'_, f32>>],
    a: Mat<'_, f32>,
    mut sums: Option<[&mut [f32]; 2]>,
    (k0, kc): (usize, usize),
    start: Start<'_>,
    bp: &[Panels; MAX_SHARED],
    ap: &mut Vec<Line>,
) {
    let (m, add) = (a.rows, !matches!(start, Start::Zero));
    let mut s0 = 0;
    while s0 < m {
        let rows = (m - s0).min(SUPER_ROWS);
        let apf = lines_f32(ap, rows.div_ceil(MR) * MR * kc);
        let block_sums = sums.as_mut().map(|[o, a]| [&mut o[s0..s0 + rows], &mut a[s0..s0 + rows]]);
        pack_rows(apf, a, block_sums, s0, rows, k0, kc);
        for (bp, c) in bp.iter().zip(products.iter_mut().flatten()) {
            let n = c.cols;
            let blocks = rows.div_ceil(MR);
            for p in 0..bp.panels() {
                let (c0, w) = (p * NR, (n - p * NR).min(NR));
                // The row blocks share out bringing the next panel toward L2 (the chunk's
                // panels of B, 192 KB each at k 1024, stream from L3 once per super-block).
                let next = if p + 1 < bp.panels() { bp.panel(p + 1) } else { &[] };
                for q in 0..blocks {
                    let (r, rb) = (q * MR, (rows - q * MR).min(MR));
                    let fetch = share(next, blocks, q);
                    // SAFETY: rows [s0 + r, s0 + r + rb) and columns [c0, c0 + w) of these rows
                    // of this product's C.
                    let mut cb = unsafe { c.block(s0 + r, rb, c0, w) };
                    if let Start::Rows { first, second } = start {
                        let second = if second.is_empty() { second } else { &second[c0..c0 + w] };
                        start_rows(cb.reborrow(), &first[c0..c0 + w], second);
                    }
                    let ap = Rows { data: &apf[q * MR * kc..(q + 1) * MR * kc], rs: 0 };
                    tile_rows(rb, cb, ap, bp.panel(p), kc, add, fetch, (Chain::default(), &mut []));
                }
            }
        }
        s0 += rows;
    }
}

/// Every row of `c` (unit column stride) set to `first + second` (`second` empty: `first`).
fn start_rows(c: MatMut<'_, f32>, first: &[f32], second: &[f32]) {
    assert!(c.cs == 1 && first.len() == c.cols && (second.is_empty() || second.len() == c.cols), "start rows");
    for r in 0..c.rows {
        // SAFETY: row r of the view: `cols` elements from r·rs, the view's own (exclusive).
        let row = unsafe { std::slice::from_raw_parts_mut(c.data.add(r * c.rs), c.cols) };
        if second.is_empty() {
            row.copy_from_slice(first);
        } else {
            for ((d, &x), &y) in row.iter_mut().zip(first).zip(second) {
                *d = x + y;
            }
        }
    }
}

/// Rows [s0, s0 + rows) of A, columns [k0, k0 + kc), into `out` in blocks of [`MR`] rows: block
/// q at q·MR·kc, element (i, kk) of it at kk·MR + i (zeros for the rows past `rows`); with
/// `sums` ([`RowSums`] of these rows), each element is also added to both, column by column.
fn pack_rows(
    out: &mut [f32],
    a: Mat<'_, f32>,
    sums: Option<[&mut [f32]; 2]>,
    s0: usize,
    rows: usize,
    k0: usize,
    kc: usize,
) {
    let mut q0 = 0;
    let [sum_out, sum_also] = sums.unwrap_or_default();
    if a.rs == 1 {
        // dpreᵀ: A's rows are contiguous in each of its columns. Whole blocks column by column —
        // one run of the column read in order, MR floats to each block — then the rest below.
        q0 = rows / MR;
        for kk in 0..kc {
            let at = s0 + (k0 + kk) * a.cs;
            if kk + FETCH_AHEAD < kc {
                // The run FETCH_AHEAD columns on, a page or two away: the hardware prefetchers
                // do not follow a stride that long.
                fetch(a.data, at + FETCH_AHEAD * a.cs, rows);
            }
            let col = &a.data[at..at + q0 * MR];
            for (q, src) in col.chunks_exact(MR).enumerate() {
                let dst = q * MR * kc + kk * MR;
                out[dst..dst + MR].copy_from_slice(src);
            }
            if !sum_out.is_empty() {
                add_twice(&mut sum_out[..q0 * MR], &mut sum_also[..q0 * MR], col);
            }
        }
    }
    for q in q0..rows.div_ceil(MR) {
        let blk = &mut out[q * MR * kc..(q + 1) * MR * kc];
        let r = s0 + q * MR;
        let live = (s0 + rows - r).min(MR);
        if a.cs == 1 && live == MR {
            // Rows in place: each column of the block gathers one float from each of MR rows
            // (read along the rows, written in order).
            let row = |i: usize| &a.data[(r + i) * a.rs + k0..(r + i) * a.rs + k0 + kc];
            let rows: [&[f32]; MR] = std::array::from_fn(row);
            for (kk, dst) in blk.chunks_exact_mut(MR).enumerate() {
                for (d, row) in dst.iter_mut().zip(&rows) {
                    *d = row[kk];
                }
            }
        } else {
            for (kk, dst) in blk.chunks_exact_mut(MR).enumerate() {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = if i < live { a.data[(r + i) * a.rs + (k0 + kk) * a.cs] } else { 0.0 };
                }
            }
        }
        if !sum_out.is_empty() {
            let rows = q * MR..q * MR + live;
            let (o, al) = (&mut sum_out[rows.clone()], &mut sum_also[rows]);
            for col in blk.chunks_exact(MR) {
                add_twice(o, al, &col[..live]);
            }
        }
    }
}

/// `out += v` and `also += v`, element by element.
fn add_twice(out: &mut [f32], also: &mut [f32], v: &[f32]) {
    for ((o, a), &v) in out.iter_mut().zip(also.iter_mut()).zip(v) {
        *o += v;
        *a += v;
    }
}

/// Columns of dpreᵀ that [`pack_rows`] brings toward L1 ahead of the one it copies (each a run
/// of a super-block's rows, one row of dpre apart: 8 KB at LSTM H = 512). Measured one thread,
/// the weight gradients' packing of A from memory: 1.3 → 1.0 ns per float.
const FETCH_AHEAD: usize = 8;

/// Brings `len` floats of `data` from `at` on toward L1 (a hint: never faults; nothing past the
/// slice).
fn fetch(data: &[f32], at: usize, len: usize) {
    let end = (at + len).min(data.len());
    let mut x = at;
    while x < end {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch of an address within `data` (a hint: never faults).
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(data.as_ptr().add(x).cast());
        }
        x += 16;
    }
}

/// [`tile`] for `rows` ≤ [`MR`] rows.
#[allow(clippy::too_many_arguments)]
fn tile_rows(
    rows: usize,
    c: MatMut<'_, f32>,
    ap: Rows<'_>,
    b: &[f32],
    k: usize,
    accumulate: bool,
    next: &[f32],
    (chain, partial): (Chain, &mut [f32]),
) {
    assert!(c.rows == rows && c.cols <= NR && c.cs == 1, "a tile of up to 8 rows and one panel's columns");
    let a_len = if ap.rs == 0 { k * MR } else { (rows - 1) * ap.rs + k };
    assert!(
        ap.data.len() >= a_len && b.len() >= k * NR && next.len().is_multiple_of(16),
        "tile operands out of bounds"
    );
    assert!(b.as_ptr().addr().is_multiple_of(64), "panels start on cache lines");
    assert!(
        !(chain.from_partial || chain.to_partial)
            || (partial.len() >= MR * NR && partial.as_ptr().addr().is_multiple_of(64)),
        "partial sums of a block: MR aligned rows of NR"
    );
    #[cfg(target_arch = "x86_64")]
    if !few::native() {
        // SAFETY: AVX2 and FMA are present (the callers' `native`, not AVX-512F); the operands
        // as asserted above.
        return unsafe { avx2::tile(rows, c, ap.data, ap.rs, b, k, accumulate, next, chain, partial.as_mut_ptr()) };
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present (the callers' `native`); the operands are in bounds and B
    // aligned (asserted), C's block is this call's alone (its constructor's contract).
    unsafe {
        let t = Tile { c, a: ap.data, rs: ap.rs, b, k, accumulate, next, chain, partial: partial.as_mut_ptr() };
        match rows {
            1 => t.run::<1>(),
            2 => t.run::<2>(),
            3 => t.run::<3>(),
            4 => t.run::<4>(),
            5 => t.run::<5>(),
            6 => t.run::<6>(),
            7 => t.run::<7>(),
            _ => t.run::<MR>(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, c, ap, b, k, accumulate, next, chain, partial.as_mut_ptr());
}

/// One register block's operands ([`tile_rows`]), dispatched on its rows, its columns' vectors
/// and A's layout.
#[cfg(target_arch = "x86_64")]
struct Tile<'a> {
    c: MatMut<'a, f32>,
    a: &'a [f32],
    rs: usize,
    b: &'a [f32],
    k: usize,
    accumulate: bool,
    next: &'a [f32],
    chain: Chain,
    partial: *mut f32,
}

#[cfg(target_arch = "x86_64")]
impl Tile<'_> {
    /// [`tile`] with M rows, as many vectors per row as C's columns need (a panel's last
    /// columns run no FMAs for its padding: n = 1024 leaves 16 of 48), A packed or in place.
    ///
    /// # Safety
    /// As [`tile`].
    unsafe fn run<const M: usize>(self) {
        let Tile { c, a, rs, b, k, accumulate, next, chain, partial } = self;
        // SAFETY: the caller's contract.
        unsafe {
            match (c.cols.div_ceil(16), rs == 0) {
                (1, true) => tile::<M, 1, true>(c, a, rs, b, k, accumulate, next, chain, partial),
                (2, true) => tile::<M, 2, true>(c, a, rs, b, k, accumulate, next, chain, partial),
                (_, true) => tile::<M, 3, true>(c, a, rs, b, k, accumulate, next, chain, partial),
                (1, false) => tile::<M, 1, false>(c, a, rs, b, k, accumulate, next, chain, partial),
                (2, false) => tile::<M, 2, false>(c, a, rs, b, k, accumulate, next, chain, partial),
                (_, false) => tile::<M, 3, false>(c, a, rs, b, k, accumulate, next, chain, partial),
            }
        }
    }
}

/// The register block: C's M rows × its columns (≤ 16·V ≤ NR) (+)= A's M rows (`PACKED`: k ×
/// MR, element (i, kk) at kk·MR + i; else element (i, kk) at i·rs + kk) times one panel `b`
/// (k × NR, its first V vectors): V·M accumulators, each one FMA chain over k in order from zero, then + C when
/// accumulating. One line of `next` is brought toward L2 per k while lines last.
///
/// # Safety
/// AVX-512F must be present; the operands as `tile_rows` asserts them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const M: usize, const V: usize, const PACKED: bool>(
    c: MatMut<'_, f32>,
    ap: &[f32],
    rs: usize,
    b: &[f32],
    k: usize,
    accumulate: bool,
    next: &[f32],
    chain: Chain,
    partial: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; M];
    if chain.from_partial {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: MR aligned rows of NR partial sums (asserted by the caller).
                *acc = unsafe { _mm512_load_ps(partial.add(r * NR + 16 * v)) };
            }
        }
    }
    let (a, bq, fetch) = (ap.as_ptr(), b.as_ptr(), next.as_ptr());
    let lines = next.len() / 16;
    if accumulate && !chain.to_partial {
        for r in 0..M {
            for v in 0..V {
                // SAFETY: a prefetch of row r of C's block (a hint: never faults).
                unsafe { _mm_prefetch::<_MM_HINT_T1>(c.data.add(r * c.rs + 16 * v).cast()) };
            }
        }
    }
    // One k: three vectors of the panel's row times each row's broadcast element.
    let step = |acc: &mut [[__m512; V]; M], kk: usize| {
        // SAFETY: k rows of MR floats in `ap` and of NR (aligned) in `b` (asserted by the
        // caller), kk < k.
        unsafe {
            let row = bq.add(kk * NR);
            let bv: [__m512; V] = std::array::from_fn(|v| _mm512_load_ps(row.add(16 * v)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(if PACKED { *a.add(kk * MR + r) } else { *a.add(r * rs + kk) });
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(x, bv, *acc);
                }
            }
        }
    };
    // The first k bring one line of `next` each toward L2; the rest run four k per turn.
    let fetched = lines.min(k);
    for kk in 0..fetched {
        // SAFETY: lines of `next` (asserted by the caller).
        unsafe { _mm_prefetch::<_MM_HINT_T1>(fetch.add(16 * kk).cast()) };
        step(&mut acc, kk);
    }
    let mut kk = fetched;
    while kk + 4 <= k {
        step(&mut acc, kk);
        step(&mut acc, kk + 1);
        step(&mut acc, kk + 2);
        step(&mut acc, kk + 3);
        kk += 4;
    }
    while kk < k {
        step(&mut acc, kk);
        kk += 1;
    }
    if chain.to_partial {
        for (r, acc) in acc.iter().enumerate() {
            for (v, &sum) in acc.iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm512_store_ps(partial.add(r * NR + 16 * v), sum) };
            }
        }
        return;
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &sum) in acc.iter().enumerate() {
            let left = c.cols.saturating_sub(16 * v).min(16);
            let mask = ((1u32 << left) - 1) as __mmask16;
            // SAFETY: row r of C's block from column 16v, masked to its columns.
            unsafe {
                let at = c.data.add(r * c.rs + 16 * v);
                let sum = if accumulate { _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask, at)) } else { sum };
                _mm512_mask_storeu_ps(at, mask, sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Product, check};
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// Odd and training shapes, B given plain and transposed, with and without accumulation:
    /// against the definition (in f64: k ulps of the magnitudes), the GEMM crate (to rounding),
    /// the few-row kernel (the same bits: one FMA chain per element), and bit for bit the same
    /// on 1, 2, 3 and 4 threads and with C's rows cut in two.
    #[test]
    fn panels_match_the_definition_the_crate_and_the_few_row_kernel() {
        if !native() {
            return; // (the crate runs these products here)
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 47),
            (8, 16, 48),
            (9, 37, 100),
            (17, 64, 200),
            (64, 256, 1024),
            (13, 300, 97),
            (1, 520, 50),
            (12, 1030, 130),
            // (Packed rows in tiles that cut panels between row blocks: 4 tiles on 4 threads.)
            (70, 700, 500),
            // (Panels in chunks of k, the last one short: the chains carried between chunks are
            // the few-row kernel's, bit for bit.)
            (5, 4200, 60),
            (21, 4200, 100),
            // (The same in tiles that cut panels between row blocks: every unit of a tile over
            // one chunk before the next.)
            (70, 4200, 200),
        ] {
            for (transposed, accumulate) in [(false, false), (true, true), (false, true), (true, false)] {
                let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let bd: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                // b(kk, j): row-major (k, n), or the transpose of a row-major (n, k).
                let bv = if transposed { Mat::rows(&bd, n, k).t() } else { Mat::rows(&bd, k, n) };
                let at = |kk: usize, j: usize| if transposed { bd[j * k + kk] } else { bd[kk * n + j] };
                let av = Mat::rows(&a, m, k);
                let mut packed = Panels::default();
                packed.pack(bv, 2);
                let mut c = c0.clone();
                gemm(MatMut::rows(&mut c, m, n), av, &packed, accumulate, 1);
                let mut crate_c = c0.clone();
                super::super::crate_gemm(MatMut::rows(&mut crate_c, m, n), av, bv, accumulate);
                let a_at = |r: usize, kk: usize| a[r * k + kk];
                check(Product { c: &c, crate_c: &crate_c, c0: &c0, m, n, k, accumulate }, a_at, at);
                if few::takes(m, 1, 1) && !transposed {
                    let mut f = c0.clone();
                    few::gemm(MatMut::rows(&mut f, m, n), av, bv, accumulate);
                    assert_eq!(f, c, "m={m} k={k} n={n}: the few-row kernel differs");
                }
                for (threads, pace) in [
                    (2, [1024; 4]),
                    (3, [1024; 4]),
                    (4, [1024; 4]),
                    (2, [3000, 300, 1024, 1024]),
                    (4, [400, 4000, 900, 2000]),
                ] {
                    // (Skewed paces cut the tiles unequally: the same bits.)
                    team::set_paces(&pace);
                    let mut t = c0.clone();
                    gemm(MatMut::rows(&mut t, m, n), av, &packed, accumulate, threads);
                    assert_eq!(t, c, "m={m} k={k} n={n}: {threads} threads, paces {pace:?} differ");
                }
                let cut = m / 2;
                let mut halves = c0.clone();
                let (top, bottom) = halves.split_at_mut(cut * n);
                gemm(MatMut::rows(top, cut, n), Mat::rows(&a, cut, k), &packed, accumulate, 1);
                gemm(MatMut::rows(bottom, m - cut, n), Mat::rows(&a[cut * k..], m - cut, k), &packed, accumulate, 1);
                assert_eq!(halves, c, "m={m} k={k} n={n}: row halves differ");
            }
        }
    }

    /// Every register block — AVX-512F's and AVX2's, whichever this CPU has — computes each
    /// element as one chain of fused multiply-adds over k in order (from zero or the carried
    /// partial sums, into them or into C, + C when accumulating): bit for bit the scalar chain
    /// of `mul_add`, at every row count, odd column counts and depths across AVX2's k-chunks,
    /// with A packed or in place.
    #[test]
    fn register_blocks_are_one_fma_chain_per_element() {
        let mut blocks: Vec<(&str, TileFn)> = Vec::new();
        if few::native() {
            blocks.push(("avx512", tile_rows));
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            blocks.push(("avx2", avx2_rows));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for (name, block) in blocks {
            for rows in 1..=MR {
                for cols in [1, 7, 8, 9, 17, 24, 25, 33, 47, 48] {
                    for k in [0, 1, 5, 127, 128, 129, 300] {
                        for (packed, from_partial, to_partial, accumulate) in [
                            (true, false, false, false),
                            (true, false, false, true),
                            (false, false, false, true),
                            (true, true, false, true),
                            (false, true, true, false),
                            (true, false, true, false),
                        ] {
                            let rs = if packed { 0 } else { k + 3 };
                            let a_len = if packed { k * MR } else { rows * rs };
                            let a: Vec<f32> = (0..a_len).map(|_| rng.random_range(-1.0..1.0)).collect();
                            let a_at = |r: usize, kk: usize| if packed { a[kk * MR + r] } else { a[r * rs + kk] };
                            let mut b = vec![Line::default(); 3 * k];
                            let bf = lines_f32(&mut b, k * NR);
                            bf.iter_mut().for_each(|x| *x = rng.random_range(-1.0..1.0));
                            let bf = bf.to_vec();
                            let mut partial = vec![Line::default(); MR * NR / 16];
                            let pf = lines_f32(&mut partial, MR * NR);
                            pf.iter_mut().for_each(|x| *x = rng.random_range(-1.0..1.0));
                            let p0 = pf.to_vec();
                            let c0: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                            let next = vec![0.5f32; 16 * 40];
                            let mut c = c0.clone();
                            let chain = Chain { from_partial, to_partial };
                            let b_slice = &lines_f32(&mut b, k * NR)[..];
                            let pslice = lines_f32(&mut partial, MR * NR);
                            block(
                                rows,
                                MatMut::rows(&mut c, rows, cols),
                                Rows { data: &a, rs },
                                b_slice,
                                k,
                                accumulate,
                                &next,
                                (chain, pslice),
                            );
                            for r in 0..rows {
                                for j in 0..cols {
                                    let mut sum = if from_partial { p0[r * NR + j] } else { 0.0f32 };
                                    for kk in 0..k {
                                        sum = a_at(r, kk).mul_add(bf[kk * NR + j], sum);
                                    }
                                    let what = format!("{name}: rows {rows} cols {cols} k {k} {chain:?} ({r}, {j})");
                                    if to_partial {
                                        assert_eq!(pslice[r * NR + j].to_bits(), sum.to_bits(), "{what}");
                                        assert_eq!(c[r * cols + j], c0[r * cols + j], "{what}: C untouched");
                                    } else {
                                        let want = if accumulate { sum + c0[r * cols + j] } else { sum };
                                        assert_eq!(c[r * cols + j].to_bits(), want.to_bits(), "{what}");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// A register block's entry (`tile_rows`' arguments).
    type TileFn = fn(usize, MatMut<'_, f32>, Rows<'_>, &[f32], usize, bool, &[f32], (Chain, &mut [f32]));

    /// The AVX2 block, called as `tile_rows` calls it (on a CPU with AVX-512F too).
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn avx2_rows(
        rows: usize,
        c: MatMut<'_, f32>,
        ap: Rows<'_>,
        b: &[f32],
        k: usize,
        accumulate: bool,
        next: &[f32],
        (chain, partial): (Chain, &mut [f32]),
    ) {
        assert!(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"));
        assert!(b.len() >= k * NR && b.as_ptr().addr().is_multiple_of(64) && partial.len() >= MR * NR);
        // SAFETY: AVX2 and FMA are present; the operands hold what `tile_rows` asserts.
        unsafe { avx2::tile(rows, c, ap.data, ap.rs, b, k, accumulate, next, chain, partial.as_mut_ptr()) };
    }

    /// Deep chunks: as few as chunks of KC take, whole lines of floats, the last one never
    /// empty (6400 = 6 × 928 + 832).
    #[test]
    fn deep_chunks_are_as_few_and_as_even_as_whole_lines_allow() {
        assert_eq!(chunk_depth(6400), 928);
        for k in (1..5000).chain([6400, 12800, 100_000]) {
            let depth = chunk_depth(k);
            let chunks = k.div_ceil(depth);
            assert!(depth <= KC && depth.is_multiple_of(16), "k {k}: depth {depth}");
            assert_eq!(chunks, k.div_ceil(KC), "k {k}: depth {depth}");
            assert!(k - (chunks - 1) * depth > 0, "k {k}");
        }
    }

    /// The calls' shares of the next panel's lines cover each line once, in order, whole.
    #[test]
    fn shares_of_the_next_panel_cover_its_lines_once() {
        let next: Vec<f32> = (0..16 * 50).map(|i| i as f32).collect();
        for lines in [0, 1, 7, 16, 50] {
            let next = &next[..16 * lines];
            for calls in 1..12 {
                let joined: Vec<f32> = (0..calls).flat_map(|q| share(next, calls, q).to_vec()).collect();
                assert_eq!(joined, next, "{lines} lines in {calls} calls");
            }
        }
    }

    /// Deep products (the weight gradients' shapes, k over several chunks with a short last
    /// one, rows past whole blocks and super-blocks, A transposed as dpreᵀ or plain): against
    /// the definition and the crate, bit for bit the same on 1, 2, 3 and 5 threads.
    #[test]
    fn deep_products_match_the_definition_and_the_crate_on_any_thread_count() {
        if !native() {
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for (m, n, k, transposed, accumulate) in [
            (32, 48, DEEP_K, true, true),
            (77, 100, 1300, true, false),
            (300, 61, 1100, false, true),
            (40, 200, 2 * KC + DEEP_K + 3, false, false),
            // (A wide product over many rows: a stacked layer's input projection.)
            (WIDE_ROWS + 6, WIDE_COLS + 4, DEEP_K_WIDE + 8, false, true),
        ] {
            let ad: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let bd: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            // a(r, kk): row-major (m, k), or the transpose of a row-major (k, m) (dpreᵀ).
            let av = if transposed { Mat::rows(&ad, k, m).t() } else { Mat::rows(&ad, m, k) };
            let a_at = |r: usize, kk: usize| if transposed { ad[kk * m + r] } else { ad[r * k + kk] };
            let bv = Mat::rows(&bd, k, n);
            assert!(takes_deep(m, n, k, 1));
            let mut c = c0.clone();
            gemm_deep(MatMut::rows(&mut c, m, n), av, bv, accumulate, 1);
            let mut crate_c = c0.clone();
            super::super::crate_gemm(MatMut::rows(&mut crate_c, m, n), av, bv, accumulate);
            let b_at = |kk: usize, j: usize| bd[kk * n + j];
            check(Product { c: &c, crate_c: &crate_c, c0: &c0, m, n, k, accumulate }, a_at, b_at);
            // A second product sharing A (dW_ih beside dW_hh), 50 columns wide (as wide as the
            // first where a narrow one is not deep enough).
            let n2 = if takes_deep(m, 50, k, 1) { 50 } else { n };
            let bd2: Vec<f32> = (0..k * n2).map(|_| rng.random_range(-1.0..1.0)).collect();
            let c2_0: Vec<f32> = (0..m * n2).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut c2 = c2_0.clone();
            gemm_deep(MatMut::rows(&mut c2, m, n2), av, Mat::rows(&bd2, k, n2), accumulate, 1);
            for (threads, pace) in [(2, [1024; 5]), (3, [1024; 5]), (5, [1024; 5]), (2, [300, 3000, 1024, 1024, 1024])]
            {
                // (Skewed paces cut the rows unequally: the same bits.)
                team::set_paces(&pace);
                let mut t = c0.clone();
                gemm_deep(MatMut::rows(&mut t, m, n), av, bv, accumulate, threads);
                assert_eq!(t, c, "m={m} n={n} k={k}: {threads} threads, paces {pace:?} differ");
                // C's rows starting as a sum of two rows (or one), each block filled as it is
                // reached: the bits of C filled first and then accumulated.
                let (first, second): (Vec<f32>, Vec<f32>) =
                    (0..n).map(|j| (j as f32 / 7.0, 1.0 / (j + 1) as f32)).unzip();
                let second = if threads == 3 { &[][..] } else { &second[..] };
                let mut want: Vec<f32> = (0..m * n)
                    .map(|i| if second.is_empty() { first[i % n] } else { first[i % n] + second[i % n] })
                    .collect();
                gemm_deep(MatMut::rows(&mut want, m, n), av, bv, true, 1);
                let mut t = vec![f32::NAN; m * n];
                let start = Start::Rows { first: &first, second };
                gemm_deep_shared(av, &mut [(MatMut::rows(&mut t, m, n), bv)], None, start, threads);
                assert_eq!(t, want, "m={m} n={n} k={k}: rows to start from on {threads} threads");
                // Both products at once, A packed once: each the bits of its own product.
                let (mut t, mut t2) = (c0.clone(), c2_0.clone());
                let mut both =
                    [(MatMut::rows(&mut t, m, n), bv), (MatMut::rows(&mut t2, m, n2), Mat::rows(&bd2, k, n2))];
                gemm_deep_shared(av, &mut both, None, Start::of(accumulate), threads);
                assert!(t == c && t2 == c2, "m={m} n={n} k={k}: shared A on {threads} threads differs");
                // With A's row sums added while it is packed (a layer's bias gradients): the
                // products' bits unchanged, each sum the chain over k in order from its start.
                let (mut t, mut t2) = (c0.clone(), c2_0.clone());
                let mut both =
                    [(MatMut::rows(&mut t, m, n), bv), (MatMut::rows(&mut t2, m, n2), Mat::rows(&bd2, k, n2))];
                let start: Vec<f32> = (0..2 * m).map(|i| (i % 7) as f32 - 3.0).collect();
                let (mut out, mut also) = (start[..m].to_vec(), start[m..].to_vec());
                let sums = RowSums { out: &mut out, also: &mut also };
                gemm_deep_shared(av, &mut both[..1 + threads % 2], Some(sums), Start::of(accumulate), threads);
                assert!(t == c && (threads % 2 == 0 || t2 == c2), "m={m} n={n} k={k}: products beside sums differ");
                let (mut want, mut want_also) = (start[..m].to_vec(), start[m..].to_vec());
                for kk in 0..k {
                    for r in 0..m {
                        want[r] += a_at(r, kk);
                        want_also[r] += a_at(r, kk);
                    }
                }
                assert!(out == want && also == want_also, "m={m} k={k}: row sums on {threads} threads differ");
                if transposed {
                    let (mut o, mut al) = (start[..m].to_vec(), start[m..].to_vec());
                    super::super::add_col_sums_twice(&mut o, &mut al, &ad, k, m);
                    assert!(o == out && al == also, "m={m} k={k}: not add_col_sums_twice's bits");
                }
            }
        }
    }
}
