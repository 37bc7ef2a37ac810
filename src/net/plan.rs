//! The plan of one pass: every decision `forward` makes from the sizes, the machine and the
//! workspace's settings — T, the embedding path, how the time loops are cut into parts, the
//! layout W_hh is read in, dropout, lengths, diagnostics — made once, here, and kept in the
//! workspace so that `backward` runs the pass its forward made, whatever is set in between.
//!
//! Splits are chosen from the sizes and the machine (its cores, `machine::plan_cores`: the
//! wavefront, the grid), never the thread count, so results are the same at
//! any `--threads` (one thread runs the parts in turn).

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::{Precision, parts, team};
use crate::net::{Input, InputKind, NetConfig, Workspace};

/// How the work of one layer's time loop is cut into parts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Split {
    /// Too little work per step to share (under ~0.5 µs), or too few rows.
    Whole,
    /// This many blocks of batch rows: independent for the whole pass, no meeting at all. Each
    /// part reads all of W_hh.
    Rows(usize),
    /// This many blocks of hidden units (whole SIMD vectors) of every row: each part reads only
    /// its rows of W_hh (they stay in its core's cache), and the parts meet once per step.
    Units(usize),
    /// The whole step, its recurrent products cut into GEMM tiles of W_hh's columns (`kernels::
    /// gemm`): for a W_hh too large for any cache, each tile's slice is streamed once per step.
    Tiles,
    /// Row blocks × unit blocks (rows, units): each part runs its units of its rows, reading
    /// only its units' rows of W_hh, and the parts meet once per step — more parts than row
    /// blocks for machines with many cores (`Workspace::set_grid`).
    Grid(usize, usize),
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Split::Whole => write!(f, "whole steps"),
            Split::Rows(rows) => write!(f, "{rows} row blocks"),
            Split::Units(units) => write!(f, "{units} unit blocks"),
            Split::Tiles => write!(f, "whole steps in GEMM tiles"),
            Split::Grid(rows, units) => write!(f, "{rows} × {units} row × unit blocks"),
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Layers(split) => write!(f, "layer by layer, {split}"),
            Schedule::Wavefront(units) => write!(f, "a wavefront of {units} unit blocks per layer"),
            Schedule::Directions(1) => write!(f, "both directions at once"),
            Schedule::Directions(rows) => write!(f, "both directions at once, {rows} row blocks each"),
        }
    }
}

impl Split {
    /// (Row blocks, unit blocks) of a split run by the unit-block driver (`layer/wavefront.rs`).
    pub(crate) fn blocks(self) -> (usize, usize) {
        match self {
            Split::Grid(rows, units) => (rows, units),
            Split::Units(units) => (1, units),
            _ => (1, 1),
        }
    }
}

/// How the layers of one direction of a pass (forward or backward) run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Schedule {
    /// Layer by layer, each time loop cut by this split.
    Layers(Split),
    /// All layers at once as a wavefront (`layer/wavefront.rs`), each cut into this many unit
    /// blocks.
    Wavefront(usize),
    /// Layer by layer, the two directions of each bidirectional layer at once (`layer/pair.rs`),
    /// each cut into this many row blocks (1: whole steps): 2 × this many parts, which never
    /// meet.
    Directions(usize),
}

/// Where the first layer's input rows come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum InputPath {
    /// The dense input, (T·B, I).
    Dense,
    /// Token input, fewer tokens than vocabulary entries (or dropout on the embedding output):
    /// their embedding rows gathered into (T·B, E) and projected like dense input.
    Gathered,
    /// Token input folded into the first layer's projection: a (V, G·H) table of biases +
    /// E · W_ihᵀ, cheaper than projecting T·B ≥ V rows one by one.
    Folded,
}

/// Every decision of one forward/backward pair.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Plan {
    /// T, from the input's length.
    pub steps: usize,
    pub input: InputPath,
    pub forward: Schedule,
    pub backward: Schedule,
    /// The forward time loops read W_hhᵀ (H, G·H), transposed once per pass into each layer's
    /// cache, instead of W_hh: the GEMM crate would otherwise repack W_hh at every step. Not
    /// for a single step (nothing to amortise) nor a single row split by units (matrix-vector
    /// products stream W_hh's rows).
    pub w_hh_t_forward: bool,
    /// The backward time loops read W_hhᵀ's rows: a single row split by units.
    pub w_hh_t_backward: bool,
    /// Dropout masks apply (drawn for this pass, or fixed ones).
    pub masked: bool,
    /// The rows have their own lengths.
    pub lengths: bool,
    /// Record ‖dL/dh_t‖ per step in the backward pass (it needs whole steps).
    pub dh_norms: bool,
    /// Compute dL/dx of dense input.
    pub input_grad: bool,
    pub threads: usize,
    /// The products' precision: the workspace's where this data and CPU run it
    /// (`Precision::effective`).
    pub precision: Precision,
}

impl Plan {
    /// The plan of a forward pass of `input` with `ws`'s settings, or the reason there is none.
    pub(crate) fn make<F: Float>(cfg: &NetConfig, ws: &Workspace<F>, input: &Input<'_, F>) -> Result<Plan> {
        let b = ws.batch;
        let per_step = match (cfg.input, input) {
            (InputKind::Dense { size }, Input::Dense(_)) => b * size,
            (InputKind::Tokens { .. }, Input::Tokens(_)) => b,
            _ => return Err(Error::Config("input kind does not match the network's (dense vs tokens)".into())),
        };
        let steps = input.len() / per_step;
        if steps == 0 || steps > ws.max_steps || steps * per_step != input.len() {
            return Err(Error::Config(format!(
                "input of {} values is not T·{per_step} for a T between 1 and {}",
                input.len(),
                ws.max_steps
            )));
        }
        // A projected or layer-norm layer runs its own time loop (`layer/proj.rs`, whole steps;
        // `layer/norm.rs`, whole rows): no folded table, wavefront or pair of directions.
        let whole = cfg.proj_size > 0 || cfg.layer_norm;
        let masked = match ws.fixed_masks {
            Some(t) if t != steps => {
                return Err(Error::Config(format!("the dropout masks set are for {t} steps, the input has {steps}")));
            }
            Some(_) => true,
            None => ws.dropout.is_some_and(|d| d.p > 0.0),
        };
        let input = match cfg.input {
            InputKind::Dense { .. } => InputPath::Dense,
            // (A bidirectional net's reverse direction reads the rows in reverse order.)
            // (A projected or layer-norm layer reads rows, never the folded table.)
            InputKind::Tokens { vocab, .. } if steps * b < vocab || masked || cfg.bidirectional || whole => {
                InputPath::Gathered
            }
            InputKind::Tokens { .. } => InputPath::Folded,
        };
        let (h, gh) = (cfg.hidden, cfg.cell.gates() * cfg.hidden);
        let lengths = !ws.lengths.is_empty();
        let zoneout = !cfg.zoneout.is_none();
        // The cores the plan is made for (`Workspace::set_plan_cores`, else the machine's).
        let cores = ws.plan_cores.unwrap_or_else(crate::kernels::machine::plan_cores);
        // bf16 products read W_hh packed once per pass by the row paths (`layer/rows.rs`); a
        // batch small enough for unit blocks (B = 1 …) keeps them and f32 instead, as bf16 whole
        // steps ran slower there (LSTM H = 256, B = 1: 15k tokens/s against 19–33k).
        let units = matches!(split(b, gh, h), Split::Units(_));
        let precision = if units { Precision::F32 } else { ws.precision.effective::<F>() };
        let bf16 = precision == Precision::Bf16;
        let split = match split(b, gh, h) {
            _ if cfg.proj_size > 0 => Split::Whole,
            // Every norm needs a whole row: row blocks, whole steps, never unit blocks. (So does
            // zoneout here: its blends run on the row paths, `layer/rows.rs`.)
            Split::Units(_) if cfg.layer_norm || zoneout || bf16 => Split::Whole,
            // (A bidirectional layer's row blocks run as a pair instead, below, unless forced.)
            Split::Rows(rows)
                if !(cfg.layer_norm || zoneout || bf16)
                    && ws.grid.unwrap_or_else(|| !cfg.bidirectional && grid_by_default(cores, b, gh, h, rows)) =>
            {
                grid(rows, h)
            }
            split => split,
        };
        let wavefront = wavefront_units(cfg, b)
            .filter(|_| ws.wavefront && !masked && !cfg.bidirectional && !whole && !zoneout && !bf16);
        // A bidirectional layer runs both directions at once: with too few rows to cut into row
        // blocks one direction per part — no meeting per step (a unit split meets at every
        // step) — and with row blocks (f32: the pair reads W_hh unpacked), each direction's
        // row blocks as parts of one pass, twice the parts of one direction.
        let pair = match split {
            _ if !cfg.bidirectional || whole => None,
            Split::Whole | Split::Units(_) => Some(1),
            Split::Rows(rows) if !bf16 && cores >= GRID_CORES => Some(rows),
            _ => None,
        };
        let forward = match (wavefront, pair) {
            (Some(units), _) => Schedule::Wavefront(units),
            (None, Some(rows)) => Schedule::Directions(rows),
            (None, None) => Schedule::Layers(split),
        };
        let dh_norms = ws.record_dh_norms;
        let backward = if dh_norms { Schedule::Layers(Split::Whole) } else { forward };
        let units = |s: Schedule| matches!(s, Schedule::Wavefront(_) | Schedule::Layers(Split::Units(_)));
        Ok(Plan {
            steps,
            input,
            forward,
            backward,
            w_hh_t_forward: steps > 1 && !(b == 1 && units(forward)),
            w_hh_t_backward: steps > 1 && b == 1 && units(backward),
            masked,
            lengths,
            dh_norms,
            input_grad: ws.input_grad,
            threads: ws.threads,
            precision,
        })
    }
}

/// W_hh elements (4 MB in f32) from which a step with enough rows is cut into GEMM tiles
/// instead of row blocks: every row block would stream all of W_hh at every step (at H = 1024,
/// B = 64, two 32-row blocks on one core ran at 2.4k tokens/s, the whole step at 3.7k).
const TILED_WEIGHTS: usize = 1 << 20;
/// Multiply-adds per step from which [`Split::Tiles`] pays for one hand-off per product.
const TILED_WORK: usize = 1 << 24;
/// Rows per part of a row split: fewer and the per-step GEMM runs below its best rate (16-row
/// parts cost LSTM H = 512, B = 64 about 10% on two cores).
const ROWS_PER_PART: usize = 32;
/// Units per part of a unit split: a part's G·u·H weights (128 units of an H = 256 LSTM:
/// 512 KB in f32) stay in a core's L2 across all steps. (64-unit parts cost B = 1, H = 256
/// 8% on two cores: twice the per-step products per thread.)
const UNITS_PER_PART: usize = 128;
/// Unit blocks start at multiples of this (whole AVX-512 vectors of f32 / AVX2 of f64).
pub(crate) const UNIT_ALIGN: usize = 8;
/// The most layers a wavefront runs (deeper nets run layer by layer).
pub(crate) const MAX_LAYERS: usize = 8;
/// Machines with at least this many cores run stacked layers as a wavefront by default.
const WAVEFRONT_CORES: usize = 4;

/// See [`Split`]: `b·G·H·H` multiply-adds per step and the size of W_hh decide. Rows need no
/// meeting, so they win wherever each core can hold all of a small W_hh (≤ 256 KB in f32) or
/// has enough rows to amortise reading a large one.
pub(crate) fn split(b: usize, gh: usize, h: usize) -> Split {
    let work = b * gh * h;
    if gh * h >= TILED_WEIGHTS && work >= TILED_WORK && b <= 512 {
        return Split::Tiles;
    }
    if b >= 8 && (work >= 1 << 21 || gh * h <= 1 << 16) {
        Split::Rows((b / ROWS_PER_PART).clamp(2, team::MAX_PARTS))
    } else if h >= 32 && work >= 1 << 16 {
        Split::Units(parts::count(h, UNITS_PER_PART, UNIT_ALIGN).max(2))
    } else {
        Split::Whole
    }
}

/// Machines with at least this many cores cut row blocks into a grid by default.
const GRID_CORES: usize = 8;

/// Units per block of a grid ([`Split::Grid`]): half the unit split's, so that a 2-row-block
/// batch of H = 256 has 8 parts (the schedule model, `bench --plan --grid on`, LSTM H = 256,
/// B = 32: 169k tokens/s predicted at 8–16 threads with 64-unit blocks, 163k with 128, 113k with
/// the 2 row blocks alone, in one run; 195k against 122k in another).
const GRID_UNITS: usize = 64;

/// Row blocks `rows` cut into a grid with blocks of [`GRID_UNITS`] units (at least 2), as long
/// as the parts fit a pass; H under 32 keeps its row blocks.
fn grid(rows: usize, h: usize) -> Split {
    let units = parts::count(h, GRID_UNITS, UNIT_ALIGN).max(2).min(team::MAX_PARTS / rows);
    if h < 32 || units < 2 { Split::Rows(rows) } else { Split::Grid(rows, units) }
}

/// Multiply-adds per part and step from which a grid's meeting per step pays (≈ 1.8 µs): the
/// schedule model predicts LSTM H = 128, B = 32 (2 × 2 parts of 16 rows × 256 × 128 = 2¹⁹) 10%
/// faster at 4–16 threads than its 2 row blocks, and LSTM H = 64, B = 16 (8 × 128 × 64 per
/// part) 35% slower.
const GRID_WORK: usize = 1 << 19;

/// Whether row blocks are cut into a grid by default (`Workspace::set_grid`): on machines with
/// 8+ cores (more than the row split's parts for mid-size batches), where each part's work per
/// step pays for its meeting.
pub(crate) fn grid_by_default(cores: usize, b: usize, gh: usize, h: usize, rows: usize) -> bool {
    cores >= GRID_CORES && grid_pays(b, gh, h, rows)
}

/// Whether the grid of `rows` row blocks gives each part [`GRID_WORK`] per step.
fn grid_pays(b: usize, gh: usize, h: usize, rows: usize) -> bool {
    let Split::Grid(rows, units) = grid(rows, h) else { return false };
    b.div_ceil(rows) * gh.div_ceil(units) * h >= GRID_WORK
}

/// Unit blocks per layer if a net of these sizes runs its layers as a wavefront: two or more
/// layers whose steps are cut into blocks of hidden units (small batches). Row blocks need no
/// wavefront (a block of rows never meets the others), and steps too small to cut gain nothing.
pub(crate) fn wavefront_units(cfg: &NetConfig, b: usize) -> Option<usize> {
    let (h, gh) = (cfg.hidden, cfg.cell.gates() * cfg.hidden);
    match split(b, gh, h) {
        Split::Units(units) if (2..=MAX_LAYERS).contains(&cfg.layers) && units * cfg.layers <= team::MAX_PARTS => {
            Some(units)
        }
        _ => None,
    }
}

/// Whether stacked layers run as a wavefront by default (where the sizes allow): on machines
/// with 4+ cores whose L2 caches, half of each, hold the recurrent and upper input weights of
/// every layer between them (each core then keeps its slice of every layer resident). On 2
/// cores it gains nothing (±5% measured) and loses up to 2× when the weights do not fit.
pub(crate) fn wavefront_by_default<F>(cfg: &NetConfig) -> bool {
    use crate::kernels::machine::{l2_bytes, plan_cores};
    let (gh, h, l) = (cfg.cell.gates() * cfg.hidden, cfg.hidden, cfg.layers);
    let weights = (2 * l).saturating_sub(1) * gh * h * std::mem::size_of::<F>();
    let cores = plan_cores();
    cores >= WAVEFRONT_CORES && weights / cores <= l2_bytes() / 2
}

/// Steps per run of a wavefront: each layer above the first projects its input a run at a time
/// (one GEMM of `chunk`·B rows instead of one per step), and a layer runs `chunk` steps behind the
/// one below. Eight runs per pass: long enough runs for the GEMM, a short pipeline fill.
pub(crate) fn chunk(steps: usize) -> usize {
    steps.div_ceil(8).max(1)
}

#[cfg(test)]
mod tests {
    use super::{Split, grid, split, wavefront_units};

    /// The sizes the grid's tests use (tests/it/determinism.rs, gradcheck.rs) reach row blocks
    /// and are cut into 2 × 2 and 2 × 4 parts; narrow layers keep their row blocks, and a grid
    /// never exceeds a pass's parts.
    #[test]
    fn the_tests_sizes_reach_the_grid() {
        for g in [1, 3, 4] {
            assert_eq!(split(16, g * 64, 64), Split::Rows(2));
            assert_eq!(split(32, g * 256, 256), Split::Rows(2));
        }
        assert_eq!(grid(2, 64), Split::Grid(2, 2));
        assert_eq!(grid(2, 256), Split::Grid(2, 4));
        assert_eq!(grid(4, 16), Split::Rows(4));
        assert_eq!(grid(32, 1024), Split::Grid(32, 2));
        // Where a part's step pays for a meeting (the default on 8+ cores).
        use super::grid_pays;
        assert!(grid_pays(32, 4 * 256, 256, 2) && grid_pays(32, 3 * 256, 256, 2) && grid_pays(32, 4 * 128, 128, 2));
        assert!(!grid_pays(16, 4 * 64, 64, 2) && !grid_pays(64, 4 * 16, 16, 2));
    }

    /// The sizes the integration tests use to reach each split do reach it with at least four
    /// parts, for every cell (G = 1, 3, 4): tests/it/gradcheck.rs and tests/it/determinism.rs.
    #[test]
    fn test_sizes_engage_the_splits() {
        for g in [1, 3, 4] {
            assert_eq!(split(32, g * 256, 256), Split::Rows(2));
            assert_eq!(split(128, g * 16, 16), Split::Rows(4));
            assert_eq!(split(1, g * 512, 512), Split::Units(4));
            assert_eq!(split(4, g * 128, 128), Split::Units(2));
            assert_eq!(split(4, g * 512, 512), Split::Units(4));
            assert_eq!(split(2, g * 8, 8), Split::Whole);
            // tests/it/torch.rs: the PyTorch known answers at split sizes.
            assert_eq!(split(128, g * 16, 16), Split::Rows(4));
            assert_eq!(split(1, g * 256, 256), Split::Units(2));
            assert_eq!(split(2, g * 512, 512), Split::Units(4));
            assert_eq!(split(16, g * 1024, 1024), Split::Tiles);
        }
        assert_eq!(split(16, 4 * 512, 512), Split::Tiles);
        assert_eq!(split(16, 3 * 592, 592), Split::Tiles);
        assert_eq!(split(32, 3 * 512, 512), Split::Rows(2));
        // tests/it/gradcheck.rs, torch.rs and misuse.rs: the wavefront over layers.
        use crate::net::{Head, InputKind, LossKind, NetConfig};
        for cell in crate::cell::CellKind::ALL {
            let input = InputKind::Dense { size: 4 };
            let cfg = |layers, hidden| NetConfig {
                cell,
                input,
                hidden,
                layers,
                output: 3,
                loss: LossKind::CrossEntropy,
                head: Head::PerStep,
                bidirectional: false,
                proj_size: 0,
                layer_norm: false,
                zoneout: crate::net::Zoneout::NONE,
            };
            assert_eq!(wavefront_units(&cfg(3, 256), 1), Some(2));
            assert_eq!(wavefront_units(&cfg(2, 256), 4), Some(2));
            assert_eq!(wavefront_units(&cfg(1, 256), 4), None);
            assert_eq!(wavefront_units(&cfg(2, 16), 128), None);
        }
        // tests/it/gradcheck.rs and determinism.rs: bidirectional schedules.
        let bidir = |b: usize, h: usize| {
            let cfg = NetConfig {
                cell: "lstm".parse().unwrap(),
                input: InputKind::Dense { size: 4 },
                hidden: h,
                layers: 1,
                output: 3,
                loss: LossKind::CrossEntropy,
                head: Head::PerStep,
                bidirectional: true,
                proj_size: 0,
                layer_norm: false,
                zoneout: crate::net::Zoneout::NONE,
            };
            let net = crate::net::Net::new(cfg).unwrap();
            let ws = net.workspace::<f64>(3, b, 1).unwrap();
            super::Plan::make(&cfg, &ws, &crate::net::Input::Dense(&vec![0.0; 3 * b * 4])).unwrap().forward
        };
        assert_eq!(bidir(4, 512), super::Schedule::Directions(1));
        assert_eq!(bidir(1, 64), super::Schedule::Directions(1));
        assert_eq!(bidir(32, 256), super::Schedule::Layers(Split::Rows(2)));
        assert_eq!(bidir(16, 512), super::Schedule::Layers(Split::Tiles));
    }
}
