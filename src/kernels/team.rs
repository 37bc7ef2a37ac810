//! Two halves of a pass in lockstep: `work(half, phase)` for phases 0, 1, …, on two threads
//! that wait for each other only where the data needs it.
//!
//! A recurrent pass is a chain of small steps: a thread hand-off per step (a thread pool wakes a
//! worker through the kernel, tens of µs on a virtual machine) costs more than a step of a small
//! model. Here each thread runs its half of every phase and, before a phase marked `sync`, spins
//! until the other half has finished the phase before (≈ 0.3 µs between two cores). Which
//! elements each half touches is the caller's affair; this module only orders the phases.
//!
//! No deadlock whatever the pool does: the second half is claimed, not assigned. If no second
//! thread has claimed it by the time the first one would wait for it, the first claims it and
//! runs both halves itself, phase by phase — the same arithmetic in the same per-half order, so
//! results never depend on how many threads showed up.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Runs `work(half, p)` for half ∈ {0, 1} and p ∈ 0..phases. Phase p of a half starts after
/// phase p − 1 of the same half and, if `sync(p)`, after phase p − 1 of the other half too.
/// With `parallel` the calling thread runs half 0 and the helper thread (see [`Helper`]) half 1
/// when it is free; otherwise (or if it is not) the calling thread runs half 0 then half 1 of
/// each phase.
pub fn lockstep(
    parallel: bool,
    phases: usize,
    sync: impl Fn(usize) -> bool + Sync,
    work: impl Fn(usize, usize) + Sync,
) {
    if !parallel {
        for p in 0..phases {
            work(0, p);
            work(1, p);
        }
        return;
    }
    let team = Team {
        claimed: [AtomicBool::new(false), AtomicBool::new(false)],
        done: Default::default(),
        failed: AtomicBool::new(false),
    };
    Helper::get().with(&|| team.run(phases, &sync, &work));
    // A panic on the helper was caught there (the helper lives on); report it here.
    assert!(!team.failed.load(Ordering::Acquire), "a half of a two-thread pass panicked");
}

/// Runs `a` and `b`, on the calling thread and the helper if `parallel` (and it is free).
pub fn join(parallel: bool, a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
    let (a, b) = (std::sync::Mutex::new(Some(a)), std::sync::Mutex::new(Some(b)));
    let take = |half: usize| match half {
        0 => a.lock().ok().and_then(|mut f| f.take()).map(|f| f()),
        _ => b.lock().ok().and_then(|mut f| f.take()).map(|f| f()),
    };
    lockstep(
        parallel,
        1,
        |_| false,
        |half, _| {
            take(half);
        },
    );
}

/// A job posted to the helper: a closure on the poster's stack, and whether the helper is done
/// with it.
struct Job<'a> {
    run: &'a (dyn Fn() + Sync),
    done: AtomicBool,
}

/// One long-lived helper thread that spins while there is work about, so that the per-step
/// meetings of a lockstep pass cost ≈ 0.3 µs and a pass starts without waking a sleeping thread
/// (tens of µs on a virtual machine). After `IDLE` without a job it parks.
///
/// One job at a time: a poster that finds it busy runs both halves itself.
pub struct Helper {
    slot: AtomicPtr<Job<'static>>,
    parked: AtomicBool,
    thread: std::thread::Thread,
}

/// How long the helper spins for the next job before it parks.
const IDLE: Duration = Duration::from_millis(5);

impl Helper {
    fn get() -> &'static Helper {
        static HELPER: OnceLock<Helper> = OnceLock::new();
        HELPER.get_or_init(|| {
            // The thread's first `get` waits until this initialisation has finished.
            let spawned = std::thread::Builder::new().name("bptt-helper".into()).spawn(|| Helper::get().serve());
            // Without a helper thread (spawn failed) the slot is never served: posters take
            // their jobs back and run both halves themselves.
            let thread = match &spawned {
                Ok(handle) => handle.thread().clone(),
                Err(_) => std::thread::current(),
            };
            Helper { slot: AtomicPtr::new(std::ptr::null_mut()), parked: AtomicBool::new(false), thread }
        })
    }

    /// Runs `f` on the calling thread and offers it to the helper too (every `f` here is a
    /// `Team::run`, which either thread may join); returns when both are done with it.
    fn with(&self, f: &(dyn Fn() + Sync)) {
        let job = Job { run: f, done: AtomicBool::new(false) };
        // SAFETY: the lifetime is erased for the slot only; `Posted` does not let this function
        // return or unwind before the job is out of the slot and the helper is done with it.
        let ptr = unsafe { std::mem::transmute::<*const Job<'_>, *mut Job<'static>>(&job) };
        let slot = &self.slot;
        // (Not `bool::then_some`: that would build, and so drop, a `Posted` for a failed post.)
        let posted = match slot.compare_exchange(std::ptr::null_mut(), ptr, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => Some(Posted { helper: self, job: &job, ptr, back: Default::default() }),
            Err(_) => None,
        };
        if posted.is_some() && self.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        f();
        if posted.as_ref().is_none_or(Posted::take_back) {
            // No helper ran it: whatever `f` left unclaimed, the calling thread runs now.
            f();
        }
    }

    fn serve(&self) {
        let mut idle_since = Instant::now();
        loop {
            let ptr = self.slot.load(Ordering::SeqCst);
            if !ptr.is_null()
                && self.slot.compare_exchange(ptr, std::ptr::null_mut(), Ordering::SeqCst, Ordering::SeqCst).is_ok()
            {
                // SAFETY: the poster keeps the job alive until `done` is set (`with`).
                let job = unsafe { &*ptr };
                // A panic in the job is the poster's to report (through `Team::failed`).
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)()));
                job.done.store(true, Ordering::Release);
                idle_since = Instant::now();
                continue;
            }
            if idle_since.elapsed() < IDLE {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                continue;
            }
            self.parked.store(true, Ordering::SeqCst);
            if self.slot.load(Ordering::SeqCst).is_null() {
                std::thread::park();
            }
            self.parked.store(false, Ordering::SeqCst);
            idle_since = Instant::now();
        }
    }
}

/// A job in the helper's slot; dropping it takes the job back or waits until the helper is done.
struct Posted<'a> {
    helper: &'a Helper,
    job: &'a Job<'a>,
    ptr: *mut Job<'static>,
    /// The job is out of the slot and the helper never had it.
    back: std::cell::Cell<bool>,
}

impl Posted<'_> {
    /// Takes the job back if the helper has not taken it; true if so.
    fn take_back(&self) -> bool {
        let slot = &self.helper.slot;
        if !self.back.get() {
            let ok = slot.compare_exchange(self.ptr, std::ptr::null_mut(), Ordering::SeqCst, Ordering::SeqCst).is_ok();
            self.back.set(ok);
        }
        self.back.get()
    }
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        if !self.take_back() {
            // The helper took the job: wait until it has finished with it.
            let mut spins = 0u32;
            while !self.job.done.load(Ordering::Acquire) {
                spins = backoff(spins);
            }
        }
    }
}

/// One round of waiting: spin first, then yield the core (the other thread was descheduled).
fn backoff(spins: u32) -> u32 {
    if spins < 1 << 14 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
    spins.saturating_add(1)
}

/// How long the first thread waits for a second one before it runs both halves.
const GRACE: Duration = Duration::from_micros(200);

struct Team {
    /// Whether some thread has taken each half.
    claimed: [AtomicBool; 2],
    /// Phases finished by each half.
    done: [AtomicUsize; 2],
    /// Set when a half panicked, so that the other stops waiting (and panics too, so that the
    /// caller sees it whichever thread had it).
    failed: AtomicBool,
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

impl Team {
    fn claim(&self, half: usize) -> bool {
        !self.claimed[half].swap(true, Ordering::AcqRel)
    }

    fn run(&self, phases: usize, sync: &(impl Fn(usize) -> bool + Sync), work: &(impl Fn(usize, usize) + Sync)) {
        let _flag = PanicFlag(&self.failed);
        let mine = if self.claim(0) {
            0
        } else if self.claim(1) {
            1
        } else {
            return; // both halves are being run already
        };
        let other = 1 - mine;
        let mut solo = false;
        for p in 0..phases {
            if !solo && p > 0 && sync(p) {
                solo = self.wait(other, p, work);
            }
            if solo {
                // Half 0 first, as the single-threaded path does.
                work(0, p);
                work(1, p);
            } else {
                work(mine, p);
                self.done[mine].store(p + 1, Ordering::Release);
            }
        }
    }

    /// Waits until half `other` has finished phase p − 1. Returns true if `other` had not been
    /// claimed: then this thread has claimed it, caught it up to phase p − 1, and runs both.
    fn wait(&self, other: usize, p: usize, work: &impl Fn(usize, usize)) -> bool {
        let mut spins = 0u32;
        let mut since: Option<Instant> = None;
        while self.done[other].load(Ordering::Acquire) < p {
            if self.failed.load(Ordering::Acquire) {
                panic!("the other half of a lockstep pass panicked");
            }
            // A sleeping pool thread takes tens of µs to wake: give it GRACE before taking its
            // half over.
            if !self.claimed[other].load(Ordering::Acquire)
                && since.get_or_insert_with(std::time::Instant::now).elapsed() > GRACE
                && self.claim(other)
            {
                for q in 0..p {
                    work(other, q);
                }
                return true;
            }
            spins = backoff(spins);
        }
        false
    }
}

/// A buffer that the two halves of a pass share out: each turns it into slices or matrix views
/// over the elements it owns (rows of a batch, or columns of units), never overlapping the
/// other's. A null-length buffer (unused by a cell) gives empty slices.
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
    use super::lockstep;
    use std::sync::Mutex;

    /// Every (half, phase) runs exactly once, in phase order per half, and a synced phase of one
    /// half never starts before the previous phase of the other has finished.
    #[test]
    fn phases_run_once_in_order() {
        for parallel in [false, true] {
            let log = Mutex::new(Vec::new());
            lockstep(parallel, 50, |p| p % 3 != 0, |half, p| log.lock().unwrap().push((half, p)));
            let log = log.into_inner().unwrap();
            assert_eq!(log.len(), 100);
            for half in 0..2 {
                let mine: Vec<usize> = log.iter().filter(|e| e.0 == half).map(|e| e.1).collect();
                assert_eq!(mine, (0..50).collect::<Vec<_>>(), "half {half} ran out of order");
            }
            for (at, &(half, p)) in log.iter().enumerate() {
                if p > 0 && p % 3 != 0 {
                    let before = log[..at].contains(&(1 - half, p - 1));
                    assert!(before, "half {half} phase {p} started before the other half's phase {}", p - 1);
                }
            }
        }
    }

    /// Many threads posting at once (one helper): every pass still runs every (half, phase)
    /// exactly once, and none hangs.
    #[test]
    fn concurrent_passes_share_the_helper() {
        use super::join;
        use std::sync::atomic::{AtomicUsize, Ordering};
        std::thread::scope(|s| {
            for id in 0..4 {
                s.spawn(move || {
                    for i in 0..3000 {
                        let count = AtomicUsize::new(0);
                        let add = || {
                            count.fetch_add(1, Ordering::Relaxed);
                        };
                        let want = match (i + id) % 3 {
                            0 => {
                                lockstep(true, 5, |p| p % 2 == 1, |_, _| add());
                                10
                            }
                            1 => {
                                lockstep(true, 3, |_| false, |_, _| add());
                                6
                            }
                            _ => {
                                join(true, add, add);
                                2
                            }
                        };
                        assert_eq!(count.load(Ordering::Relaxed), want, "thread {id}, pass {i}");
                    }
                });
            }
        });
    }

    /// A panic in either half reaches the caller, whichever thread ran it, and the helper keeps
    /// serving afterwards.
    #[test]
    fn a_panicking_half_reaches_the_caller() {
        use super::join;
        for _ in 0..20 {
            let r = std::panic::catch_unwind(|| join(true, || {}, || panic!("half 1 fails")));
            assert!(r.is_err(), "a panic in a half was lost");
        }
        let (mut x, mut y) = (0, 0);
        join(true, || x = 1, || y = 2);
        assert_eq!((x, y), (1, 2));
    }
}
