//! A team of threads that runs the parts of a pass: `work(part, phase)` for every part and
//! phase, on the calling thread plus up to N − 1 long-lived helpers, which wait for each other
//! only where the data needs it.
//!
//! *What is cut* is the caller's affair (`kernels::parts` and `net::layer` choose the parts from
//! the sizes alone); this module decides only *who runs it*. A recurrent pass is a chain of small
//! steps: a thread hand-off per step through the kernel (tens of µs on a virtual machine) costs
//! more than a step of a small model. So helpers spin while passes are coming (≈ 0.1–0.3 µs to
//! meet), park when idle for `IDLE`, and are woken when a pass is posted, before anyone waits.
//!
//! Phases run in *segments*: a phase p with `sync(p)` starts only after every part has finished
//! phase p − 1 (a barrier); between barriers each part runs its phases back to back on one
//! thread. Part p belongs to lane `p % lanes` (lane 0 is the caller), so in the steady state a
//! part runs on the same core at every step and its data (a slice of W_hh) stays in that core's
//! cache.
//!
//! No deadlock whatever the threads do: parts are *claimed*, not assigned. A lane that has run
//! its own parts of a segment takes over the others' parts still unclaimed, last first, but
//! never a lane's first part (the cores of a virtual machine run at different speeds from
//! moment to moment: one measured 137 and 109 GFLOP/s of FMAs on its two cores, and minutes
//! later 126 and 138). A thread waiting at a barrier claims and runs any part whose owner has
//! not joined the pass within `GRACE`, or any part still unclaimed after it has waited `GRACE`
//! itself; a team with no helper at all runs every part on the caller. Each part's arithmetic
//! is the same whoever runs it, so results never depend on the thread count or on who ran
//! what.
//!
//! Where one part per lane does work whose bits do not depend on how it is cut (the panel and
//! deep products), the caller cuts it in proportion to the lanes' *paces* ([`paced_cuts`]):
//! each lane's recent work per second, measured by those passes ([`record_pace`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The most parts one pass may have (callers cap their cuts at this).
pub(crate) const MAX_PARTS: usize = 64;
/// The most threads (lanes) one pass runs on.
pub(crate) const MAX_LANES: usize = 64;

/// How long an idle helper spins for the next pass before it parks.
const IDLE: Duration = Duration::from_millis(5);
/// How long a waiting thread leaves an absent or late owner's parts alone before it runs them.
const GRACE: Duration = Duration::from_micros(200);

/// Runs `work(part, phase)` for every part in 0..parts and phase in 0..phases: phase p of a part
/// after phase p − 1 of the same part and, if `sync(p)`, after phase p − 1 of every part. Up to
/// `threads` threads (the caller and helpers) share the parts.
///
/// # Panics
/// If `parts` > [`MAX_PARTS`] (a caller's invariant), or if a part panicked (on any thread).
pub(crate) fn run(
    threads: usize,
    parts: usize,
    phases: usize,
    sync: impl Fn(usize) -> bool + Sync,
    work: impl Fn(usize, usize) + Sync,
) {
    assert!(parts <= MAX_PARTS, "a pass of {parts} parts (at most {MAX_PARTS})");
    let lanes = threads.min(parts).min(MAX_LANES);
    if lanes <= 1 || phases == 0 {
        JOINED.set(1);
        // The reference order: segment by segment, every part in turn (timed for the schedule
        // model when it is on, outside any pass that is itself a part of one).
        let timed = MODEL_ON.load(Ordering::Relaxed) && DEPTH.get() == 0;
        let mut took = [0u64; MAX_PARTS];
        let mut start = 0;
        while start < phases {
            let end = next_barrier(start, phases, &sync);
            for (p, took) in took.iter_mut().enumerate().take(parts) {
                let t0 = timed.then(Instant::now);
                DEPTH.set(DEPTH.get() + 1);
                for ph in start..end {
                    work(p, ph);
                }
                DEPTH.set(DEPTH.get() - 1);
                *took = t0.map_or(0, |t0| t0.elapsed().as_nanos() as u64);
            }
            if timed {
                model_segment(&took[..parts]);
            }
            start = end;
        }
        if timed {
            for (n, passes) in MODEL_LANES.iter().zip(&MODEL.passes) {
                passes.fetch_add((parts.min(*n).max(1) - 1) as u64, Ordering::Relaxed);
            }
        }
        if threads > 1 {
            record(0, parts * segments(phases, &sync));
        }
        return;
    }
    let team = Team::new(parts, lanes, phases, &sync, &work);
    let join = || {
        let lane = team.joined.fetch_add(1, Ordering::AcqRel);
        if lane < lanes {
            let ran = team.lane(lane);
            record(lane, ran);
        }
    };
    Pool::get().post(lanes - 1, &join, || {
        let ran = team.lane(0);
        record(0, ran);
    });
    // A panic on a helper was caught there (the helper lives on); report it here.
    assert!(!team.failed.load(Ordering::Acquire), "a part of a parallel pass panicked");
    JOINED.set(team.joined.load(Ordering::Acquire).min(lanes));
}

thread_local! {
    /// Lanes that took part in this thread's last pass (1: it ran alone).
    static JOINED: Cell<usize> = const { Cell::new(1) };
}

/// Each lane's pace — work per second, relative to the lanes' mean, in 1/[`PACE_ONE`]ths — over
/// the recent passes that ran one part per lane ([`record_pace`]). The cores of a virtual
/// machine run at different speeds for seconds at a time (one measured 137 and 109 GFLOP/s of
/// FMAs on its two cores, and minutes later 126 and 138), so equal shares leave the faster
/// core waiting: 4–8% of a per-step product's time at LSTM H = 1024 on two cores.
static PACE: [AtomicU32; MAX_LANES] = [const { AtomicU32::new(PACE_ONE) }; MAX_LANES];
/// An average lane's pace.
const PACE_ONE: u32 = 1024;

/// The items of `n` (cut at multiples of `align`) of each of `parts` parts that run one per
/// lane on `threads` threads: in proportion to the lanes' recent paces (equal shares when the
/// parts outnumber the threads, or at the start). Taken once, before the pass, so that every
/// part sees the same cut whatever the paces do meanwhile (another pass may record its own).
/// Which items a part runs never changes a result: the callers' parts do the same arithmetic
/// on each item wherever it falls.
pub(crate) fn paced_cuts(n: usize, parts: usize, threads: usize, align: usize) -> Cuts {
    let parts = parts.clamp(1, MAX_PARTS);
    if parts > threads.min(MAX_LANES) || parts <= 1 {
        let mut at = [n; MAX_PARTS + 1];
        for (p, at) in at.iter_mut().enumerate().take(parts) {
            *at = super::parts::range(n, parts, align, p).0;
        }
        Cuts { at, parts, align }
    } else {
        Cuts::by_pace(n, parts, align, &paces()[..parts])
    }
}

/// The lanes' paces now.
fn paces() -> [u32; MAX_LANES] {
    let mut pace = [0; MAX_LANES];
    for (pace, lane) in pace.iter_mut().zip(&PACE) {
        *pace = lane.load(Ordering::Relaxed);
    }
    pace
}

/// A pass's cut of its items into parts ([`paced_cuts`]).
pub(crate) struct Cuts {
    at: [usize; MAX_PARTS + 1],
    parts: usize,
    align: usize,
}

impl Cuts {
    /// `n` items cut at multiples of `align` in proportion to `pace` (one per part).
    fn by_pace(n: usize, parts: usize, align: usize, pace: &[u32]) -> Cuts {
        let mut at = [n; MAX_PARTS + 1];
        for (p, at) in at.iter_mut().enumerate().take(parts) {
            *at = cut_by_pace(n, align, pace, p).0;
        }
        Cuts { at, parts, align }
    }

    /// Part p's items [start, end).
    pub(crate) fn range(&self, p: usize) -> (usize, usize) {
        (self.at[p], self.at[p + 1])
    }

    /// The same items cut for the next phase of one long pass (a deep product's next chunk of
    /// k), in proportion to each part's rate in the phase just run (`ran`: each part's items and
    /// time in ns, [`Claims::ran`]) — not the lanes' smoothed paces, which lag a drift within
    /// the pass. The same cut if the phase did not run one part per lane, or a part ran nothing.
    pub(crate) fn rebalanced(&self, ran: &[(usize, u64)]) -> Cuts {
        let same = Cuts { at: self.at, parts: self.parts, align: self.align };
        let parts = self.parts;
        if parts <= 1 || parts > MAX_LANES || ran.len() < parts || JOINED.get() != parts {
            return same;
        }
        match relative_rates(&ran[..parts]) {
            Some(rate) => {
                let mut pace = [0; MAX_LANES];
                for (pace, r) in pace.iter_mut().zip(&rate[..parts]) {
                    *pace = (f64::from(PACE_ONE) * r).clamp(f64::from(PACE_ONE / 4), f64::from(PACE_ONE * 4)) as u32;
                }
                Cuts::by_pace(self.at[parts], parts, self.align, &pace[..parts])
            }
            None => same,
        }
    }
}

/// The items of a [`Cuts`] handed out while a pass runs: each part takes its own items from the
/// front of its range, half of what is left at a time (at least `grain`), and a part whose
/// range is empty takes `grain` items at a time from the back of the range with the most left.
/// A cut made before the pass cannot follow a core that slows down within it (a virtual
/// machine's cores drift from moment to moment); the faster lane takes over the end of the
/// slower one's share instead of waiting for it. Every item goes to exactly one part, and the
/// callers' items do the same arithmetic wherever they run, so the results are the same bits.
/// Items are taken over only where the parts run one per lane (not on one thread, nor under
/// the schedule model, which times each part's own share); there each part takes its whole
/// range at once.
pub(crate) struct Claims {
    /// Each part's items left: front in the low 32 bits, end in the high 32.
    left: [AtomicU64; MAX_PARTS],
    /// The items each part took, and its time in ns ([`Claims::time`]).
    ran: [AtomicUsize; MAX_PARTS],
    took: [AtomicU64; MAX_PARTS],
    parts: usize,
    grain: usize,
    take_over: bool,
}

impl Claims {
    /// The ranges of `cuts`, handed out `grain` items at a time at least, on `threads` threads.
    pub(crate) fn new(cuts: &Cuts, grain: usize, threads: usize) -> Claims {
        assert!(cuts.at[cuts.parts] <= u32::MAX as usize, "claims count items in 32 bits");
        let left = std::array::from_fn(|p| {
            let (a, b) = if p < cuts.parts { cuts.range(p) } else { (0, 0) };
            AtomicU64::new(a as u64 | ((b as u64) << 32))
        });
        let take_over = cuts.parts > 1 && cuts.parts <= threads.min(MAX_LANES) && !MODEL_ON.load(Ordering::Relaxed);
        let (ran, took) = ([const { AtomicUsize::new(0) }; MAX_PARTS], [const { AtomicU64::new(0) }; MAX_PARTS]);
        Claims { left, ran, took, parts: cuts.parts, grain: grain.max(1), take_over }
    }

    /// Notes part `p`'s time in the pass (from its start, before its first [`Claims::next`]).
    pub(crate) fn time(&self, p: usize, started: Instant) {
        self.took[p].store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Each part's (items, ns) in the pass: for [`record_pace`] and [`Cuts::rebalanced`].
    pub(crate) fn ran(&self) -> [(usize, u64); MAX_PARTS] {
        std::array::from_fn(|p| (self.ran[p].load(Ordering::Relaxed), self.took[p].load(Ordering::Relaxed)))
    }

    /// Part `p`'s next items [a, b): its own first, then (where taking over is on) another's.
    pub(crate) fn next(&self, p: usize) -> Option<(usize, usize)> {
        let own = &self.left[p];
        let mut v = own.load(Ordering::Acquire);
        loop {
            let (a, b) = ((v & 0xffff_ffff) as usize, (v >> 32) as usize);
            if a >= b {
                break;
            }
            // (Alone, the whole run at once: nothing to take over, and one run keeps the
            // callers' prefetch of their next unit across it.)
            let n = if self.take_over { ((b - a) / 2).max(self.grain).min(b - a) } else { b - a };
            match own.compare_exchange_weak(v, (a + n) as u64 | ((b as u64) << 32), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.ran[p].fetch_add(n, Ordering::Relaxed);
                    return Some((a, a + n));
                }
                Err(now) => v = now,
            }
        }
        if !self.take_over {
            return None;
        }
        loop {
            // The range with the most left, from its back.
            let (mut best, mut most) = (None, 0);
            for (q, left) in self.left.iter().enumerate().take(self.parts) {
                let v = left.load(Ordering::Acquire);
                let n = ((v >> 32) as usize).saturating_sub((v & 0xffff_ffff) as usize);
                if q != p && n > most {
                    (best, most) = (Some((q, v)), n);
                }
            }
            let (q, v) = best?;
            let (a, b) = ((v & 0xffff_ffff) as usize, (v >> 32) as usize);
            let n = self.grain.min(b - a);
            let taken = (a as u64) | (((b - n) as u64) << 32);
            if self.left[q].compare_exchange(v, taken, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.ran[p].fetch_add(n, Ordering::Relaxed);
                return Some((b - n, b));
            }
        }
    }
}

/// Part `p`'s items of `n`, cut at multiples of `align` in proportion to `pace`.
fn cut_by_pace(n: usize, align: usize, pace: &[u32], p: usize) -> (usize, usize) {
    let total: usize = pace.iter().map(|&x| x as usize).sum();
    if total == 0 {
        return super::parts::range(n, pace.len(), align, p);
    }
    let blocks = n.div_ceil(align);
    let at = |q: usize| {
        let before: usize = pace[..q].iter().map(|&x| x as usize).sum();
        (blocks * before / total * align).min(n)
    };
    (at(p), at(p + 1))
}

/// Records this thread's last pass, if it ran one part per lane: part i ran `took[i].0` items
/// in `took[i].1` ns (a pass that ran on fewer lanes than parts records nothing).
pub(crate) fn record_pace(took: &[(usize, u64)]) {
    let parts = took.len();
    if parts <= 1 || parts > MAX_LANES || JOINED.get() != parts {
        return;
    }
    let mut pace = paces();
    next_pace(&mut pace[..parts], took);
    for (lane, &pace) in PACE.iter().zip(&pace[..parts]) {
        lane.store(pace, Ordering::Relaxed);
    }
}

/// Moves each lane's pace a quarter of the way toward its pace in one pass (items per ns over
/// the lanes' mean), kept within ¼–4× the mean; a pass with an idle part changes nothing.
fn next_pace(pace: &mut [u32], took: &[(usize, u64)]) {
    let Some(rate) = relative_rates(took) else { return };
    for (pace, r) in pace.iter_mut().zip(&rate) {
        let old = f64::from(*pace);
        let new = old + (f64::from(PACE_ONE) * r - old) / 4.0;
        *pace = new.clamp(f64::from(PACE_ONE / 4), f64::from(PACE_ONE * 4)) as u32;
    }
}

/// Each part's items per ns over the parts' mean (`took`: (items, ns) per part); none if a
/// part ran nothing.
fn relative_rates(took: &[(usize, u64)]) -> Option<[f64; MAX_LANES]> {
    if took.is_empty() || took.len() > MAX_LANES || took.iter().any(|&(items, ns)| items == 0 || ns == 0) {
        return None;
    }
    let mut rate = [0.0; MAX_LANES];
    for (r, &(items, ns)) in rate.iter_mut().zip(took) {
        *r = items as f64 / ns as f64;
    }
    let mean = rate[..took.len()].iter().sum::<f64>() / took.len() as f64;
    rate.iter_mut().for_each(|r| *r /= mean);
    Some(rate)
}

/// Sets the lanes' paces (tests: skewed cuts must give the same bits).
#[cfg(test)]
pub(crate) fn set_paces(pace: &[u32]) {
    for (lane, &pace) in PACE.iter().zip(pace) {
        lane.store(pace, Ordering::Relaxed);
    }
}

/// Runs `work(part)` for every part in 0..parts, on up to `threads` threads.
pub(crate) fn for_each(threads: usize, parts: usize, work: impl Fn(usize) + Sync) {
    run(threads, parts, 1, |_| false, |p, _| work(p));
}

/// Runs `work(p, &mut items[p])` for every item, each handed to exactly one thread.
pub(crate) fn for_each_mut<X: Send + Sync>(threads: usize, items: &mut [X], work: impl Fn(usize, &mut X) + Sync) {
    let parts = items.len();
    let base = Shared::of(items);
    // SAFETY: one phase, so `run` calls every part exactly once: each item is borrowed once, and
    // `items` outlives the pass.
    for_each(threads, parts, |p| work(p, unsafe { &mut base.slice(p, 1)[0] }));
}

/// Parts run by each lane (0: the calling thread) since the last [`take_shares`], over every pass
/// of this process.
static SHARES: [AtomicU64; MAX_LANES] = [const { AtomicU64::new(0) }; MAX_LANES];

fn record(lane: usize, parts: usize) {
    SHARES[lane].fetch_add(parts as u64, Ordering::Relaxed);
}

/// How many part-segments each lane (0: the calling thread, 1…: helpers) has run since the last
/// call, in passes asked to run on more than one thread, up to the highest lane that ran any;
/// resets the counts. `bptt bench` reports it.
pub fn take_shares() -> Vec<u64> {
    let all: Vec<u64> = SHARES.iter().map(|s| s.swap(0, Ordering::Relaxed)).collect();
    let used = all.iter().rposition(|&n| n > 0).map_or(0, |k| k + 1);
    all[..used].to_vec()
}

/// Lane counts the schedule model predicts for (`bptt bench --plan`).
pub const MODEL_LANES: [usize; 5] = [1, 2, 4, 8, 16];

/// The schedule model: passes run in the reference order (one thread) time each part's share
/// of each segment; for each lane count n of [`MODEL_LANES`] a segment then takes as long as the
/// slowest of min(n, parts) lanes (part p on lane p % lanes, as [`run`] shares them in the steady
/// state) and ends in a meeting of those lanes; a pass is handed to its min(n, parts) − 1
/// helpers once. Meetings and hand-offs are counted per helper taking part (lanes − 1).
struct Model {
    busy_ns: [AtomicU64; MODEL_LANES.len()],
    meetings: [AtomicU64; MODEL_LANES.len()],
    passes: [AtomicU64; MODEL_LANES.len()],
}

static MODEL_ON: AtomicBool = AtomicBool::new(false);
static MODEL: Model = Model {
    busy_ns: [const { AtomicU64::new(0) }; MODEL_LANES.len()],
    meetings: [const { AtomicU64::new(0) }; MODEL_LANES.len()],
    passes: [const { AtomicU64::new(0) }; MODEL_LANES.len()],
};

thread_local! {
    /// How many passes' parts this thread is inside (the model times the outermost only).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// One segment's part times into the model.
fn model_segment(took: &[u64]) {
    for (i, &n) in MODEL_LANES.iter().enumerate() {
        let lanes = n.min(took.len()).max(1);
        let slowest = (0..lanes).map(|l| took.iter().skip(l).step_by(lanes).sum::<u64>()).max().unwrap_or(0);
        MODEL.busy_ns[i].fetch_add(slowest, Ordering::Relaxed);
        MODEL.meetings[i].fetch_add((lanes - 1) as u64, Ordering::Relaxed);
    }
}

/// What the schedule model summed for one lane count since [`model_start`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelSums {
    /// The lane count.
    pub lanes: usize,
    /// Seconds of the slowest lane, summed over every segment of every pass.
    pub busy_s: f64,
    /// Meetings at the ends of segments, one per helper that takes part (lanes − 1 each).
    pub meetings: u64,
    /// Passes handed to helpers, one per helper (lanes − 1 each).
    pub passes: u64,
}

/// Clears the schedule model and turns it on (`on`) or off. It times passes that run on one
/// thread only (`Workspace::set_threads(1)`).
pub fn model_start(on: bool) {
    for v in MODEL.busy_ns.iter().chain(&MODEL.meetings).chain(&MODEL.passes) {
        v.store(0, Ordering::Relaxed);
    }
    MODEL_ON.store(on, Ordering::Relaxed);
}

/// The schedule model's sums per lane count of [`MODEL_LANES`] since [`model_start`].
pub fn model_sums() -> Vec<ModelSums> {
    let get = |v: &[AtomicU64; MODEL_LANES.len()], i: usize| v[i].load(Ordering::Relaxed);
    (0..MODEL_LANES.len())
        .map(|i| ModelSums {
            lanes: MODEL_LANES[i],
            busy_s: get(&MODEL.busy_ns, i) as f64 * 1e-9,
            meetings: get(&MODEL.meetings, i),
            passes: get(&MODEL.passes, i),
        })
        .collect()
}

/// Seconds per meeting and per hand-off of a pass on `threads` threads, measured: `rounds`
/// phases of two parts that all meet, and `rounds` passes of one phase.
pub fn meeting_costs(threads: usize, rounds: usize) -> (f64, f64) {
    let rounds = rounds.max(1);
    let t0 = Instant::now();
    run(threads, 2, rounds, |_| true, |_, _| std::hint::black_box(()));
    let meeting = t0.elapsed().as_secs_f64() / rounds as f64;
    let t0 = Instant::now();
    for _ in 0..rounds {
        run(threads, 2, 1, |_| false, |_, _| std::hint::black_box(()));
    }
    (meeting, t0.elapsed().as_secs_f64() / rounds as f64)
}

/// The first phase after `start` that waits for every part (or `phases`).
fn next_barrier(start: usize, phases: usize, sync: &impl Fn(usize) -> bool) -> usize {
    (start + 1..phases).find(|&e| sync(e)).unwrap_or(phases)
}

fn segments(phases: usize, sync: &impl Fn(usize) -> bool) -> usize {
    (1..phases).filter(|&p| sync(p)).count() + usize::from(phases > 0)
}

/// An atomic counter on a cache line of its own (threads claiming neighbouring parts do not
/// contend for one line).
#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicUsize);

/// One pass in flight: the claims and the barrier counters, on the poster's stack.
struct Team<'a, S, W> {
    parts: usize,
    lanes: usize,
    phases: usize,
    sync: &'a S,
    work: &'a W,
    /// Lanes taken so far (the caller holds lane 0 from the start).
    joined: AtomicUsize,
    /// Per part: segments claimed so far.
    claimed: [Padded; MAX_PARTS],
    /// Per part: segments finished so far (stored, not incremented: a waiting thread reads each
    /// part's line, and no two threads ever contend to write one).
    done: [Padded; MAX_PARTS],
    /// Set when a part panicked, so that waiting threads stop waiting (and panic too).
    failed: AtomicBool,
    started: Instant,
}

/// Sets `failed` if dropped during a panic.
struct PanicFlag<'a>(&'a AtomicBool);

impl Drop for PanicFlag<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

impl<'a, S: Fn(usize) -> bool + Sync, W: Fn(usize, usize) + Sync> Team<'a, S, W> {
    fn new(parts: usize, lanes: usize, phases: usize, sync: &'a S, work: &'a W) -> Self {
        Team {
            parts,
            lanes,
            phases,
            sync,
            work,
            joined: AtomicUsize::new(1),
            claimed: std::array::from_fn(|_| Padded::default()),
            done: std::array::from_fn(|_| Padded::default()),
            failed: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// Claims part p for segment `seg`; true if this thread is to run it.
    fn claim(&self, p: usize, seg: usize) -> bool {
        self.claimed[p].0.compare_exchange(seg, seg + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    fn run_part(&self, p: usize, seg: usize, start: usize, end: usize) {
        for ph in start..end {
            (self.work)(p, ph);
        }
        self.done[p].0.store(seg + 1, Ordering::Release);
    }

    /// Runs lane `lane`'s parts, segment by segment; returns how many part-segments it ran.
    fn lane(&self, lane: usize) -> usize {
        let _flag = PanicFlag(&self.failed);
        let (mut ran, mut seg, mut start) = (0, 0, 0);
        while start < self.phases {
            let end = next_barrier(start, self.phases, self.sync);
            for p in (lane..self.parts).step_by(self.lanes) {
                if self.claim(p, seg) {
                    self.run_part(p, seg, start, end);
                    ran += 1;
                }
            }
            ran += self.take_late_parts(seg, start, end);
            // Helpers need not wait for the last segment; the caller must (its results).
            if end < self.phases || lane == 0 {
                ran += self.barrier(seg, start, end);
            }
            start = end;
            seg += 1;
        }
        ran
    }

    /// Runs the parts of the segment still unclaimed after this lane's own, the last first —
    /// never a lane's first part (its owner claims that on arrival) — and returns how many:
    /// a lane on a faster core (a virtual machine's cores run at different speeds from moment
    /// to moment) takes over the end of a slower lane's share instead of waiting for it. The
    /// owners run their parts first to last, so a part taken over is one its owner had not
    /// reached; each part's arithmetic is the same on any thread.
    fn take_late_parts(&self, seg: usize, start: usize, end: usize) -> usize {
        let mut ran = 0;
        for p in (self.lanes..self.parts).rev() {
            if self.claimed[p].0.load(Ordering::Relaxed) == seg && self.claim(p, seg) {
                self.run_part(p, seg, start, end);
                ran += 1;
            }
        }
        ran
    }

    /// Waits until every part has finished segment `seg`, running the parts of absent or late
    /// owners itself; returns how many it ran.
    fn barrier(&self, seg: usize, start: usize, end: usize) -> usize {
        let (mut ran, mut spins, mut next) = (0, 0u32, 0);
        let mut since: Option<Instant> = None;
        loop {
            // Parts before `next` are known to have finished the segment.
            while next < self.parts && self.done[next].0.load(Ordering::Acquire) > seg {
                next += 1;
            }
            if next == self.parts {
                break;
            }
            if self.failed.load(Ordering::Acquire) {
                panic!("another part of a parallel pass panicked");
            }
            if spins % 64 == 63 {
                let patient = since.get_or_insert_with(Instant::now).elapsed() > GRACE;
                let absent_for = self.started.elapsed() > GRACE;
                let joined = self.joined.load(Ordering::Acquire).min(self.lanes);
                for p in 0..self.parts {
                    if (patient || (absent_for && p % self.lanes >= joined)) && self.claim(p, seg) {
                        self.run_part(p, seg, start, end);
                        ran += 1;
                    }
                }
            }
            spins = backoff(spins);
        }
        ran
    }
}

/// One round of waiting: spin first, then yield the core (the thread we wait for was
/// descheduled: tests run 16 threads on 2 cores).
fn backoff(spins: u32) -> u32 {
    if spins < 1 << 12 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
    spins.saturating_add(1)
}

/// A pass offered to the helpers: a closure on the poster's stack and how many helpers it wants.
struct Job<'a> {
    run: &'a (dyn Fn() + Sync),
    want: usize,
}

/// The helper threads, spawned on first demand and kept for the life of the process. One job
/// at a time: a poster that finds another pass in flight runs its own pass alone.
struct Pool {
    /// The job in flight (null: none).
    slot: AtomicPtr<Job<'static>>,
    /// Bumped after each post; helpers spin on it (a read-only cache line while idle).
    seq: AtomicU64,
    /// Helpers between noticing a post and leaving its job: a poster waits for 0 before its job
    /// (on its stack) goes away.
    active: AtomicUsize,
    /// Helper i + 1's thread handle and whether it is parked.
    helpers: [OnceLock<std::thread::Thread>; MAX_LANES],
    parked: [AtomicBool; MAX_LANES],
    /// Helpers spawned so far (grown under the lock, read without it).
    spawned: AtomicUsize,
    grow: Mutex<()>,
}

thread_local! {
    /// True on helper threads: a pass posted from inside a part runs alone.
    static IS_HELPER: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    fn get() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool {
            slot: AtomicPtr::new(std::ptr::null_mut()),
            seq: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            helpers: std::array::from_fn(|_| OnceLock::new()),
            parked: std::array::from_fn(|_| AtomicBool::new(false)),
            spawned: AtomicUsize::new(0),
            grow: Mutex::new(()),
        })
    }

    /// Makes sure `want` helpers exist (fewer if threads cannot be spawned); returns how many do.
    fn ensure(&'static self, want: usize) -> usize {
        let have = self.spawned.load(Ordering::Acquire);
        if have >= want {
            return have;
        }
        let Ok(_guard) = self.grow.lock() else { return have };
        let mut have = self.spawned.load(Ordering::Acquire);
        while have < want.min(MAX_LANES - 1) {
            let index = have + 1;
            let spawned =
                std::thread::Builder::new().name(format!("bptt-helper-{index}")).spawn(move || self.serve(index));
            let Ok(handle) = spawned else { break };
            let _ = self.helpers[index].set(handle.thread().clone());
            have += 1;
            self.spawned.store(have, Ordering::Release);
        }
        have
    }

    /// Runs `mine` on the calling thread while offering `join` to `want` helpers (each runs it
    /// once); returns when the helpers that joined are done with it. Passes posted while another
    /// is in flight, or from a helper, get no helpers (`mine` must then do all the work).
    fn post(&'static self, want: usize, join: &(dyn Fn() + Sync), mine: impl FnOnce()) {
        if IS_HELPER.with(Cell::get) {
            return mine();
        }
        let want = want.min(self.ensure(want));
        let job = Job { run: join, want };
        // SAFETY: the lifetime is erased for the slot only; `Retract` does not let this function
        // return or unwind before the job is out of the slot and no helper holds it.
        let ptr = unsafe { std::mem::transmute::<*const Job<'_>, *mut Job<'static>>(&job) };
        let posted = want > 0
            && self.slot.compare_exchange(std::ptr::null_mut(), ptr, Ordering::SeqCst, Ordering::SeqCst).is_ok();
        let _retract = posted.then(|| {
            self.seq.fetch_add(1, Ordering::SeqCst);
            for i in 1..=want {
                if self.parked[i].load(Ordering::SeqCst)
                    && let Some(t) = self.helpers[i].get()
                {
                    t.unpark();
                }
            }
            Retract(self)
        });
        mine();
    }

    fn serve(&self, index: usize) {
        IS_HELPER.with(|h| h.set(true));
        let mut seen = self.seq.load(Ordering::SeqCst);
        let mut idle_since = Instant::now();
        loop {
            let seq = self.seq.load(Ordering::SeqCst);
            if seq != seen {
                seen = seq;
                self.active.fetch_add(1, Ordering::SeqCst);
                let ptr = self.slot.load(Ordering::SeqCst);
                if !ptr.is_null() {
                    // SAFETY: the poster keeps the job alive until `active` is back to 0, which
                    // it cannot be before the `fetch_sub` below (see `Retract`).
                    let job = unsafe { &*ptr };
                    if index <= job.want {
                        // A panic is the poster's to report (through the team's `failed`).
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)()));
                        idle_since = Instant::now();
                    }
                }
                self.active.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            if idle_since.elapsed() < IDLE {
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
                continue;
            }
            self.parked[index].store(true, Ordering::SeqCst);
            if self.seq.load(Ordering::SeqCst) == seen {
                std::thread::park();
            }
            self.parked[index].store(false, Ordering::SeqCst);
            idle_since = Instant::now();
        }
    }
}

/// Takes a posted job out of the slot and waits until no helper holds it (on return or unwind).
struct Retract(&'static Pool);

impl Drop for Retract {
    fn drop(&mut self) {
        self.0.slot.store(std::ptr::null_mut(), Ordering::SeqCst);
        // A helper that incremented `active` before the store may have the job; one that did so
        // after it sees the null slot (sequentially consistent order).
        let mut spins = 0u32;
        while self.0.active.load(Ordering::SeqCst) != 0 {
            spins = backoff(spins);
        }
    }
}

/// A buffer that the parts of a pass share out: each part turns it into slices or matrix views
/// over the elements it owns (rows of a batch, or columns of units), never overlapping another's.
/// A null-length buffer (unused by a cell) gives empty slices.
pub struct Shared<F>(*mut F, usize);

impl<F> Clone for Shared<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F> Copy for Shared<F> {}

// SAFETY: a `Shared` is only turned into slices or views over elements that one thread owns
// (the `unsafe` methods' contracts); F itself is Send + Sync.
unsafe impl<F: Send> Send for Shared<F> {}
unsafe impl<F: Sync> Sync for Shared<F> {}

impl<F> Shared<F> {
    /// Shares `v` out; the borrow must outlive every slice taken from it.
    pub fn of(v: &mut [F]) -> Self {
        Shared(v.as_mut_ptr(), v.len())
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.1
    }

    /// True for an unused (empty) buffer.
    pub fn is_empty(&self) -> bool {
        self.1 == 0
    }

    pub(crate) fn ptr(&self) -> *mut F {
        self.0
    }

    /// `len` elements from `at`, read-only (empty if the buffer is unused).
    ///
    /// # Safety
    /// Nothing may write the range while the slice lives, and the buffer must outlive it; the
    /// range must be in bounds (asserted).
    pub unsafe fn read<'a>(&self, at: usize, len: usize) -> &'a [F] {
        if self.1 == 0 {
            return &[];
        }
        assert!(at + len <= self.1, "shared range out of bounds");
        // SAFETY: in bounds (asserted); no writer is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.0.add(at), len) }
    }

    /// `len` elements from `at` (empty if the buffer is unused).
    ///
    /// # Safety
    /// No other live reference may overlap the range while the slice lives, and the buffer must
    /// outlive it; the range must be in bounds (asserted).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice<'a>(&self, at: usize, len: usize) -> &'a mut [F] {
        if self.1 == 0 {
            return &mut [];
        }
        assert!(at + len <= self.1, "shared range out of bounds");
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        Claims, Cuts, JOINED, PACE_ONE, cut_by_pace, for_each, model_segment, model_sums, next_pace, relative_rates,
        run,
    };
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    /// The schedule model gives a segment the time of its slowest lane (part p on lane p % lanes)
    /// for each lane count, and a meeting per helper that takes part (no more lanes than parts).
    #[test]
    fn the_schedule_model_takes_the_slowest_lane() {
        // (The model's sums are global, and only a pass run with the model on adds to them.)
        let before = model_sums();
        model_segment(&[5, 1, 1, 1, 3]);
        let after = model_sums();
        let ns = |i: usize| ((after[i].busy_s - before[i].busy_s) * 1e9).round() as u64;
        // 1 lane: 11; 2: {5, 1, 3} against {1, 1}; 4: {5, 3}, {1}, {1}, {1}; 8 and 16: 5 lanes.
        assert_eq!((0..5).map(ns).collect::<Vec<_>>(), [11, 9, 8, 5, 5]);
        let meetings: Vec<u64> = (0..5).map(|i| after[i].meetings - before[i].meetings).collect();
        assert_eq!(meetings, [0, 1, 3, 4, 4]);
    }

    /// Lane 1's parts (the odd ones) are slow, lane 0's instant: the caller, done with its own,
    /// runs lane 1's last part first rather than wait, and every part still runs exactly once.
    #[test]
    fn a_lane_done_first_takes_over_the_end_of_a_slower_ones_share() {
        for _ in 0..3 {
            let ran = Mutex::new(Vec::new());
            let caller = std::thread::current().id();
            run(
                2,
                8,
                1,
                |_| false,
                |part, _| {
                    if part % 2 == 1 {
                        std::thread::sleep(std::time::Duration::from_millis(30));
                    }
                    ran.lock().unwrap().push((part, std::thread::current().id() == caller));
                },
            );
            let ran = ran.into_inner().unwrap();
            // At once and from the end (waiting out `GRACE` would take them first to last).
            let first_taken = ran.iter().find(|r| r.0 % 2 == 1 && r.1).map(|r| r.0);
            assert_eq!(first_taken, Some(7), "the caller took over {first_taken:?} first: {ran:?}");
            let mut parts: Vec<usize> = ran.iter().map(|r| r.0).collect();
            parts.sort();
            assert_eq!(parts, (0..8).collect::<Vec<_>>());
        }
    }

    /// Paces follow the lanes' measured rates (a lane twice as fast ends up with about two
    /// thirds of the items), stay within ¼–4× the mean, and the cuts cover the items in
    /// order, at multiples of the alignment.
    #[test]
    fn paces_follow_the_lanes_rates_and_cut_the_items_in_order() {
        let mut pace = [PACE_ONE; 3];
        for _ in 0..40 {
            // Lane 0 ran 200 items, lanes 1 and 2 ran 100, in the same time.
            next_pace(&mut pace, &[(200, 1000), (100, 1000), (100, 1000)]);
        }
        assert!((1520..=1540).contains(&pace[0]) && (760..=770).contains(&pace[1]), "{pace:?}");
        let (a, b) = (cut_by_pace(1000, 8, &pace, 0), cut_by_pace(1000, 8, &pace, 1));
        assert_eq!((a.0, a.1 % 8, a.1, b.1 % 8), (0, 0, b.0, 0));
        assert!((496..=504).contains(&a.1), "{a:?}");
        assert_eq!(cut_by_pace(1000, 8, &pace, 2).1, 1000);
        next_pace(&mut pace, &[(1000, 1), (1, 1000), (1, 1000)]);
        next_pace(&mut pace, &[(1000, 1), (1, 1000), (1, 1000)]);
        assert!(pace[0] <= 4 * PACE_ONE && pace[1] >= PACE_ONE / 4, "{pace:?}");
        // Equal paces cut as `parts::range` does.
        for p in 0..3 {
            assert_eq!(cut_by_pace(1001, 4, &[PACE_ONE; 3], p), super::super::parts::range(1001, 3, 4, p));
        }
    }

    /// Claimed items go out exactly once however the lanes race for them: on two lanes a part
    /// takes its own range in halves (front first), and a part done first takes the end of a
    /// slow one's range, `grain` items at a time; on one thread (or under the schedule model)
    /// each part runs exactly its own range, at once.
    #[test]
    fn claims_hand_every_item_out_once_and_a_slow_parts_end_to_a_fast_one() {
        let cuts = Cuts::by_pace(1000, 2, 1, &[PACE_ONE; 2]);
        let alone = Claims::new(&cuts, 10, 1);
        let mut got = Vec::new();
        while let Some(r) = alone.next(0) {
            got.push(r);
        }
        assert_eq!(got, [(0, 500)], "alone, a part's whole run at once");
        assert_eq!(alone.next(0), None, "no taking over on one thread");
        let mut took_over = false;
        for _ in 0..20 {
            let claims = Claims::new(&cuts, 10, 2);
            let seen: Vec<AtomicU32> = (0..1000).map(|_| AtomicU32::new(0)).collect();
            for_each(2, 2, |p| {
                while let Some((a, b)) = claims.next(p) {
                    assert!(a < b && b - a <= 500, "({a}, {b})");
                    for s in &seen[a..b] {
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                    if p == 1 {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
            });
            assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1), "every item exactly once");
            let ran = claims.ran();
            assert_eq!(ran[0].0 + ran[1].0, 1000);
            if JOINED.get() == 2 && ran[0].0 > 500 {
                took_over = true;
                break;
            }
        }
        // (Only where the helper joined: a loaded machine may run both parts on the caller.)
        assert!(took_over || JOINED.get() < 2, "the fast part took over the slow one's end");
    }

    /// A long pass's next phase is cut by the last phase's rates at once (not a quarter of the
    /// way, as the paces move): a lane that ran its equal half in twice the time gets a third.
    #[test]
    fn a_next_phase_is_cut_by_the_last_phases_rates() {
        for _ in 0..20 {
            // Two lanes joined (rebalancing needs every part on a lane of its own).
            for_each(2, 2, |_| std::thread::sleep(std::time::Duration::from_millis(2)));
            if JOINED.get() == 2 {
                break;
            }
        }
        let cuts = Cuts::by_pace(1200, 2, 8, &[PACE_ONE; 2]);
        assert_eq!((cuts.range(0), cuts.range(1)), ((0, 600), (600, 1200)));
        let next = cuts.rebalanced(&[(600, 1000), (600, 2000)]);
        if JOINED.get() == 2 {
            assert_eq!((next.range(0), next.range(1)), ((0, 800), (800, 1200)));
        } else {
            assert_eq!(next.range(0), (0, 600), "a phase not one part per lane keeps its cut");
        }
        // A part that ran nothing keeps the cut.
        let idle = Cuts::by_pace(1200, 2, 8, &[PACE_ONE * 4, PACE_ONE / 4]);
        let same = idle.rebalanced(&[(1100, 0), (100, 5)]);
        assert_eq!(same.range(1), idle.range(1));
        assert_eq!(relative_rates(&[(100, 10), (100, 30)]).map(|r| (r[0], r[1])), Some((1.5, 0.5)));
    }

    /// Every (part, phase) runs exactly once, in phase order per part, and a synced phase of any
    /// part never starts before every part has finished the phase before; at 1 to 16 threads.
    #[test]
    fn phases_run_once_in_order() {
        for threads in [1, 2, 3, 4, 8, 16] {
            for parts in [1, 2, 5, 16, 64] {
                let log = Mutex::new(Vec::new());
                let sync = |p: usize| !p.is_multiple_of(3);
                run(threads, parts, 20, sync, |part, p| log.lock().unwrap().push((part, p)));
                let log = log.into_inner().unwrap();
                assert_eq!(log.len(), parts * 20);
                for part in 0..parts {
                    let mine: Vec<usize> = log.iter().filter(|e| e.0 == part).map(|e| e.1).collect();
                    assert_eq!(mine, (0..20).collect::<Vec<_>>(), "part {part} ran out of order");
                }
                for (at, &(part, p)) in log.iter().enumerate() {
                    if p > 0 && sync(p) {
                        let done = (0..parts).all(|q| log[..at].contains(&(q, p - 1)));
                        assert!(done, "{threads} threads: part {part} phase {p} started before the barrier");
                    }
                }
            }
        }
    }

    /// Many threads posting at once (one pool): every pass still runs every (part, phase)
    /// exactly once, and none hangs.
    #[test]
    fn concurrent_passes_share_the_pool() {
        std::thread::scope(|s| {
            for id in 0..4 {
                s.spawn(move || {
                    for i in 0..2000 {
                        let count = AtomicUsize::new(0);
                        let add = || {
                            count.fetch_add(1, Ordering::Relaxed);
                        };
                        let threads = 1 + (i + id) % 5;
                        let want = match (i + id) % 3 {
                            0 => {
                                run(threads, 7, 5, |p| p % 2 == 1, |_, _| add());
                                35
                            }
                            1 => {
                                run(threads, 3, 3, |_| false, |_, _| add());
                                9
                            }
                            _ => {
                                for_each(threads, 2, |_| add());
                                2
                            }
                        };
                        assert_eq!(count.load(Ordering::Relaxed), want, "thread {id}, pass {i}");
                    }
                });
            }
        });
    }

    /// A panic in any part reaches the caller, whichever thread ran it, and the helpers keep
    /// serving afterwards.
    #[test]
    fn a_panicking_part_reaches_the_caller() {
        for k in 0..20 {
            let bad = k % 4;
            let r = std::panic::catch_unwind(|| {
                for_each(4, 4, |p| {
                    if p == bad {
                        panic!("part {p} fails")
                    }
                })
            });
            assert!(r.is_err(), "a panic in part {bad} was lost");
        }
        let cells: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        for_each(4, 4, |p| cells[p].store(p + 1, Ordering::Relaxed));
        assert_eq!(cells.iter().map(|c| c.load(Ordering::Relaxed)).collect::<Vec<_>>(), [1, 2, 3, 4]);
    }
}
