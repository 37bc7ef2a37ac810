//! Data-parallel training: a group of ranks (one process each, under `mpirun` with the `mpi`
//! feature), and the gradient all-reduce that runs while the backward pass is still going.
//!
//! Every rank holds the same parameters and trains on its own share of the batch. After its
//! backward pass the gradients are averaged over the ranks, so every rank applies the same
//! update. Like PyTorch DDP, the average is taken in buckets, one per finished slab range
//! ([`crate::net::GradReady`]: the readout's first, then each layer from the top down): a
//! bucket travels while the layers below it are still being differentiated.
//!
//! All communication happens on one thread per process (the "link" thread, which also
//! initialises and finalises MPI), fed through a mutex and condition variable with room for
//! every bucket of a pass, so the training thread never allocates or blocks to hand a bucket
//! over. Waiting for the other ranks is a test-and-sleep loop (100 µs), which leaves the cores
//! to the training threads and notices an interrupt: a rank that died makes the others stop
//! with [`Error::Dist`] instead of hanging.
//!
//! Determinism: for a given rank count the reductions are the same sums in the same order
//! (MPI's algorithm is chosen from the sizes and the rank count), so a run is reproducible bit
//! for bit; against one process with the same global batch, results agree to the rounding of
//! the reduction order.

// Without the `mpi` feature only `Group::single` exists and the link thread's code is unused.
#![cfg_attr(not(feature = "mpi"), allow(dead_code))]

mod loopback;
#[cfg(feature = "mpi")]
mod mpi;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::net::{GradReady, GradValues};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// The element type of a reduction.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Elem {
    F32,
    F64,
}

impl Elem {
    fn of<F: Float>() -> Elem {
        if std::mem::size_of::<F>() == 8 { Elem::F64 } else { Elem::F32 }
    }
}

/// A blocking request to the link thread (outside the gradient reduction).
enum Job {
    /// Sum these values over the ranks (all get the sums).
    SumF64(Vec<f64>),
    /// Concatenate every rank's values in rank order (all get the whole).
    GatherF32(Vec<f32>),
    /// Every rank gets rank 0's bytes (their length must agree).
    BroadcastBytes(Vec<u8>),
}

/// A bucket's values, owned by the pipe: the hook copies a finished range in, the link thread
/// takes them out to reduce (so no thread ever touches the training thread's slab), and
/// `GradReducer::reduce` copies the sums back after the backward pass has returned.
enum BucketData {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl BucketData {
    /// A buffer of `elem`'s type holding `values` (`None` if they are of the other type),
    /// reusing `spare`'s allocation when it has the right type.
    fn of(spare: Option<BucketData>, values: GradValues<'_>) -> BucketData {
        match (spare, values) {
            (Some(BucketData::F32(mut v)), GradValues::F32(x)) => {
                v.clear();
                v.extend_from_slice(x);
                BucketData::F32(v)
            }
            (Some(BucketData::F64(mut v)), GradValues::F64(x)) => {
                v.clear();
                v.extend_from_slice(x);
                BucketData::F64(v)
            }
            (_, GradValues::F32(x)) => BucketData::F32(x.to_vec()),
            (_, GradValues::F64(x)) => BucketData::F64(x.to_vec()),
        }
    }
}

/// One bucket: a slab range and a copy of its values (taken out while the link thread reduces
/// them).
struct Bucket {
    range: (usize, usize),
    data: Option<BucketData>,
}

/// What the training thread and the link thread share.
struct PipeState {
    /// The buckets of the current pass (capacity fixed when the reducer is made), the next one
    /// to reduce, and how many are done.
    buckets: Vec<Bucket>,
    limit: usize,
    next: usize,
    done: usize,
    /// A reduction is running (buckets are accepted), its element type and slab length.
    active: bool,
    elem: Elem,
    len: usize,
    /// Spare bucket buffers, kept across passes so a pass after the first allocates nothing.
    pool: Vec<BucketData>,
    /// A blocking request and its answer.
    job: Option<Job>,
    answer: Option<std::result::Result<Job, String>>,
    /// A failed reduction: every later call returns it.
    failed: Option<String>,
    shutdown: bool,
}

impl PipeState {
    fn new() -> Self {
        PipeState {
            buckets: Vec::new(),
            limit: 0,
            next: 0,
            done: 0,
            active: false,
            elem: Elem::F32,
            len: 0,
            pool: Vec::new(),
            job: None,
            answer: None,
            failed: None,
            shutdown: false,
        }
    }
}

struct Pipe {
    state: Mutex<PipeState>,
    wake: Condvar,
    /// Set by the caller (a signal, say): a wait for the other ranks that lasts over half a
    /// second after it is set gives up.
    interrupt: Arc<AtomicUsize>,
    /// Asks the link thread to abort the whole job (MPI_Abort).
    abort: AtomicUsize,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What carries the bytes: implemented by MPI (feature `mpi`), called on the link thread only.
/// Every wait polls `w.give_up()`; when it says so the transport calls `w.fail()`, which never
/// returns (an unfinished MPI request cannot be dropped: the process exits instead).
trait Transport {
    fn size(&self) -> usize;
    /// Writes the sums of `data` over the ranks into `out` (as long as `data`).
    fn sum_f32(&self, data: &[f32], out: &mut [f32], w: &Waiter<'_>) -> std::result::Result<(), String>;
    fn sum_f64(&self, data: &[f64], out: &mut [f64], w: &Waiter<'_>) -> std::result::Result<(), String>;
    fn gather_f32(&self, local: &[f32], all: &mut [f32], w: &Waiter<'_>) -> std::result::Result<(), String>;
    fn broadcast(&self, bytes: &mut [u8], w: &Waiter<'_>) -> std::result::Result<(), String>;
    fn abort(&self, code: i32) -> !;
}

/// How the link thread waits for the other ranks: it notices an abort request and an interrupt.
struct Waiter<'a> {
    pipe: &'a Pipe,
    transport: &'a dyn Transport,
    /// When the interrupt was first seen.
    since: std::cell::Cell<Option<std::time::Instant>>,
}

impl Waiter<'_> {
    /// True once the interrupt has been set for half a second (`mpirun` kills a job one second
    /// after its SIGTERM, so this leaves time to say why); aborts the job if asked to.
    fn give_up(&self) -> bool {
        let abort = self.pipe.abort.load(Ordering::SeqCst);
        if abort != 0 {
            self.transport.abort(abort as i32);
        }
        if self.pipe.interrupt.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let first = *self.since.get().get_or_insert_with(std::time::Instant::now);
        self.since.set(Some(first));
        first.elapsed().as_secs_f64() > 0.5
    }

    /// Reports the failure to the training thread and parks this thread for good.
    fn fail(&self) -> ! {
        let mut st = self.pipe.lock();
        st.failed = Some(
            "stopped while waiting for the other ranks (a signal arrived: a rank may have died); the last checkpoint \
             is intact"
                .into(),
        );
        // Whoever waits for a bucket or an answer wakes up to the failure.
        st.done = st.buckets.len();
        st.answer = Some(Err(st.failed.clone().unwrap_or_default()));
        drop(st);
        self.pipe.wake.notify_all();
        loop {
            std::thread::park();
        }
    }
}

/// A group of ranks training one model: a single process, or the processes of an `mpirun`.
pub struct Group {
    rank: usize,
    size: usize,
    link: Option<(Arc<Pipe>, JoinHandle<()>)>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group {{ rank: {}, size: {} }}", self.rank, self.size)
    }
}

impl Default for Group {
    fn default() -> Self {
        Group::single()
    }
}

impl Group {
    /// One process: every collective is the identity.
    pub fn single() -> Group {
        Group { rank: 0, size: 1, link: None }
    }

    /// The processes of this MPI job (`mpirun -np N …`; a process started without `mpirun` is
    /// a group of one). Starts the link thread, which initialises MPI. `interrupt`: when it
    /// becomes non-zero (a signal handler's flag), a wait for the other ranks gives up half
    /// a second later (`mpirun` kills a job one second after its SIGTERM) with [`Error::Dist`].
    #[cfg(feature = "mpi")]
    pub fn mpi(interrupt: Arc<AtomicUsize>) -> Result<Group> {
        let pipe = Arc::new(Pipe {
            state: Mutex::new(PipeState::new()),
            wake: Condvar::new(),
            interrupt,
            abort: AtomicUsize::new(0),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let p = pipe.clone();
        let handle = std::thread::Builder::new()
            .name("bptt-link".into())
            .spawn(move || mpi::serve(p, tx))
            .map_err(|e| Error::Dist(format!("cannot start the communication thread: {e}")))?;
        let (rank, size) = rx
            .recv()
            .map_err(|_| Error::Dist("MPI failed to initialise: is this an Open MPI build run by mpirun?".into()))??;
        if size == 1 {
            // No peers: nothing to communicate, and the plain single-process path.
            pipe.lock().shutdown = true;
            pipe.wake.notify_all();
            let _ = handle.join();
            return Ok(Group::single());
        }
        Ok(Group { rank, size, link: Some((pipe, handle)) })
    }

    /// `n` ranks inside this process, connected in memory, for tests of the reduction without
    /// MPI (each group has its own link thread; use each from its own thread). `interrupt` plays
    /// the signal flag.
    #[doc(hidden)]
    pub fn loopback(n: usize, interrupt: Arc<AtomicUsize>) -> Result<Vec<Group>> {
        loopback::groups(n.max(1), interrupt)
    }

    /// This process's rank, 0-based.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// True on rank 0, the one that writes files and prints progress.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Runs `job` on the link thread and waits for its answer.
    fn call(&self, job: Job) -> Result<Job> {
        let Some((pipe, _)) = &self.link else { return Ok(job) };
        let mut st = pipe.lock();
        if let Some(e) = &st.failed {
            return Err(Error::Dist(e.clone()));
        }
        st.job = Some(job);
        pipe.wake.notify_all();
        loop {
            if let Some(a) = st.answer.take() {
                return a.map_err(Error::Dist);
            }
            st = pipe.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sums `values` over the ranks, in place (small control vectors: losses, flags).
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        if self.link.is_none() {
            return Ok(()); // one rank: the sums are the values
        }
        if let Job::SumF64(v) = self.call(Job::SumF64(values.to_vec()))? {
            values.copy_from_slice(&v);
        }
        Ok(())
    }

    /// Every rank's `local` (all of the same length), concatenated in rank order.
    pub fn gather(&self, local: &[f32]) -> Result<Vec<f32>> {
        match self.call(Job::GatherF32(local.to_vec()))? {
            Job::GatherF32(v) => Ok(v),
            _ => Err(Error::Dist("unexpected answer to a gather".into())),
        }
    }

    /// True on every rank if `ok` is true on every rank: the ranks agree to go on (or all
    /// stop) after a step that could fail on some of them.
    pub fn all_ok(&self, ok: bool) -> Result<bool> {
        let mut v = [if ok { 0.0 } else { 1.0 }];
        self.sum(&mut v)?;
        Ok(v[0] == 0.0)
    }

    /// Rank 0's `bytes` on every rank (others pass a buffer of the same length).
    pub fn broadcast(&self, bytes: &mut [u8]) -> Result<()> {
        if self.link.is_none() {
            return Ok(());
        }
        if let Job::BroadcastBytes(v) = self.call(Job::BroadcastBytes(bytes.to_vec()))? {
            bytes.copy_from_slice(&v);
        }
        Ok(())
    }

    /// The start handshake of a data-parallel run: every rank passes the same named hashes
    /// (settings, vocabulary, data, position), and all go on only if every rank's hashes are
    /// rank 0's. Otherwise every rank gets the same [`Error::Disagree`] naming the fields that
    /// differ and on how many ranks. The names are exchanged as a count first, so ranks of
    /// different builds are refused rather than exchanging buffers of different sizes.
    pub fn agree(&self, fields: &[(String, u64)]) -> Result<()> {
        if self.link.is_none() {
            return Ok(());
        }
        let mine = (fields.len() as u64).to_le_bytes();
        let mut count = mine;
        self.broadcast(&mut count)?;
        if !self.all_ok(count == mine)? {
            return Err(Error::Disagree(
                "the ranks check different things at the start (different builds of bptt?): run one build on every host"
                    .into(),
            ));
        }
        let local: Vec<u8> = fields.iter().flat_map(|(_, h)| h.to_le_bytes()).collect();
        let mut root = local.clone();
        self.broadcast(&mut root)?;
        let mut differ: Vec<f64> =
            local.chunks(8).zip(root.chunks(8)).map(|(a, b)| if a == b { 0.0 } else { 1.0 }).collect();
        self.sum(&mut differ)?;
        let names: Vec<String> = fields
            .iter()
            .zip(&differ)
            .filter(|(_, d)| **d > 0.0)
            .map(|((name, _), d)| format!("{name} ({d} of {} ranks differ from rank 0)", self.size()))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        Err(Error::Disagree(format!(
            "the ranks were not started alike: {}; give every rank the same flags and the same files (compare each \
             host's copy)",
            names.join(", ")
        )))
    }

    /// Ends the whole job at once (every rank), exiting with `code`: for a rank that cannot go
    /// on while the others would wait for it. A single process just exits.
    pub fn abort(&self, code: i32) -> ! {
        if let Some((pipe, _)) = &self.link {
            pipe.abort.store(code.max(1) as usize, Ordering::SeqCst);
            pipe.wake.notify_all();
            // The link thread aborts the job (and this process with it).
            std::thread::sleep(std::time::Duration::from_secs(10));
        }
        std::process::exit(code)
    }

    /// A reducer of gradient slabs of `len` elements of `F`, averaging over the ranks in up
    /// to `buckets` pieces per pass.
    pub fn reducer<F: Float>(&self, len: usize, buckets: usize) -> GradReducer<F> {
        let pipe = self.link.as_ref().map(|(p, _)| {
            let mut st = p.lock();
            // Reported buckets plus the gaps between them.
            st.buckets = Vec::with_capacity(2 * buckets + 2);
            st.limit = buckets;
            p.clone()
        });
        GradReducer { pipe, size: self.size, len, reported: Vec::with_capacity(buckets + 2), _f: PhantomData }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some((pipe, handle)) = self.link.take() {
            pipe.lock().shutdown = true;
            pipe.wake.notify_all();
            let _ = handle.join();
        }
    }
}

/// Averages a gradient slab over the ranks, bucket by bucket as a backward pass finishes
/// them. Install [`GradReducer::hook`] in the workspace that runs the pass
/// ([`crate::net::Workspace::set_grad_ready`]), then run the pass inside [`GradReducer::reduce`].
pub struct GradReducer<F> {
    pipe: Option<Arc<Pipe>>,
    size: usize,
    len: usize,
    /// The ranges reported in the last pass, sorted (reused).
    reported: Vec<(usize, usize)>,
    _f: PhantomData<F>,
}

/// The hook a backward pass calls: copies the finished range into a bucket buffer and queues it
/// for the link thread.
struct Hook(Arc<Pipe>);

impl GradReady for Hook {
    fn ready(&self, range: Range<usize>, values: GradValues<'_>) {
        let mut st = self.0.lock();
        let matches = matches!((st.elem, values), (Elem::F32, GradValues::F32(_)) | (Elem::F64, GradValues::F64(_)));
        if !st.active || !matches || range.is_empty() || range.end > st.len || st.buckets.len() >= st.limit {
            return; // outside a reduction, or more buckets than planned: `reduce` covers it
        }
        let spare = st.pool.pop();
        let data = BucketData::of(spare, values);
        st.buckets.push(Bucket { range: (range.start, range.end), data: Some(data) });
        self.0.wake.notify_all();
    }
}

impl<F: Float> GradReducer<F> {
    /// The hook for [`crate::net::Workspace::set_grad_ready`] (`None` for a single process).
    pub fn hook(&self) -> Option<Arc<dyn GradReady>> {
        self.pipe.as_ref().map(|p| Arc::new(Hook(p.clone())) as Arc<dyn GradReady>)
    }

    /// The number of ranks averaged over.
    pub fn ranks(&self) -> usize {
        self.size
    }

    /// Runs `backward` (which adds this rank's gradient into `grads` and reports finished
    /// ranges through the hook), then waits until every range of `grads` has been averaged
    /// over the ranks. Ranges the pass did not report are reduced at the end. With one rank
    /// this is just `backward(grads)`.
    ///
    /// While `backward` runs, the link thread reads and writes the ranges already reported; the
    /// backward pass never touches a range again after reporting it (the contract of
    /// [`GradReady`]).
    pub fn reduce<T>(&mut self, grads: &mut [F], backward: impl FnOnce(&mut [F]) -> Result<T>) -> Result<T> {
        let Some(pipe) = self.pipe.clone() else { return backward(grads) };
        crate::error::check_len("gradient slab", self.len, grads.len())?;
        {
            let mut st = pipe.lock();
            if let Some(e) = &st.failed {
                return Err(Error::Dist(e.clone()));
            }
            st.buckets.clear();
            (st.next, st.done) = (0, 0);
            (st.active, st.elem, st.len) = (true, Elem::of::<F>(), grads.len());
        }
        let out = backward(grads);
        let mut st = pipe.lock();
        // The ranges the pass did not report (all of them after a failed pass, whose gradient
        // the ranks still exchange so that none is left waiting), in slab order.
        self.reported.clear();
        self.reported.extend(st.buckets.iter().map(|b| b.range));
        self.reported.sort_unstable();
        let mut at = 0;
        for i in 0..=self.reported.len() {
            let (s, e) = self.reported.get(i).copied().unwrap_or((self.len, self.len));
            if s > at {
                let spare = st.pool.pop();
                let data = BucketData::of(spare, F::values(&grads[at..s]));
                st.buckets.push(Bucket { range: (at, s), data: Some(data) });
            }
            at = at.max(e);
        }
        pipe.wake.notify_all();
        while st.done < st.buckets.len() && st.failed.is_none() {
            st = pipe.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.active = false;
        if let Some(e) = &st.failed {
            return Err(Error::Dist(e.clone()));
        }
        // The averages into the slab (the pass is over: the training thread owns it again): the
        // buckets cover it, each copied and divided by the rank count a cache-sized piece at a
        // time (one pass over memory).
        let mut buckets = std::mem::take(&mut st.buckets);
        for b in buckets.drain(..) {
            let (s, e) = b.range;
            if let Some(data) = b.data {
                self.average_into(&mut grads[s..e], &data);
                st.pool.push(data);
            }
        }
        st.buckets = buckets;
        out
    }

    /// `dst` = the summed `sums` / the rank count: exact for a power-of-two count (a product
    /// by its inverse), a true division otherwise.
    fn average_into(&self, dst: &mut [F], sums: &BucketData) {
        const PIECE: usize = 4096;
        let (n, inv) = (F::of(self.size as f64), F::one() / F::of(self.size as f64));
        let exact = self.size.is_power_of_two();
        let (mut at, len) = (0, dst.len());
        while at < len {
            let end = (at + PIECE).min(len);
            let piece = &mut dst[at..end];
            match (sums, F::values(piece)) {
                (BucketData::F32(v), GradValues::F32(_)) => F::copy_from_f32(piece, &v[at..end]),
                (BucketData::F64(v), GradValues::F64(_)) => F::copy_from_f64(piece, &v[at..end]),
                _ => return,
            }
            for g in piece.iter_mut() {
                if exact { *g *= inv } else { *g /= n }
            }
            at = end;
        }
    }
}

/// The link thread's loop: hands buckets and jobs to the transport until shut down.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn serve_with(t: &dyn Transport, pipe: &Pipe) {
    let (mut scratch32, mut scratch64): (Vec<f32>, Vec<f64>) = (Vec::new(), Vec::new());
    let w = Waiter { pipe, transport: t, since: std::cell::Cell::new(None) };
    let mut st = pipe.lock();
    loop {
        if pipe.abort.load(Ordering::SeqCst) != 0 {
            t.abort(pipe.abort.load(Ordering::SeqCst) as i32);
        }
        if st.next < st.buckets.len() {
            let i = st.next;
            st.next += 1;
            // The bucket's values are this thread's while it reduces them.
            let mut data = st.buckets[i].data.take();
            drop(st);
            // The sums go into a scratch buffer that then takes the bucket's place (no copy
            // back); the bucket's old buffer is the next scratch.
            let r = match &mut data {
                Some(BucketData::F32(d)) => {
                    scratch32.resize(d.len(), 0.0);
                    t.sum_f32(d, &mut scratch32, &w).map(|_| std::mem::swap(d, &mut scratch32))
                }
                Some(BucketData::F64(d)) => {
                    scratch64.resize(d.len(), 0.0);
                    t.sum_f64(d, &mut scratch64, &w).map(|_| std::mem::swap(d, &mut scratch64))
                }
                None => Ok(()),
            };
            st = pipe.lock();
            st.buckets[i].data = data;
            st.done += 1;
            if let Err(e) = r {
                st.failed = Some(e);
            }
            pipe.wake.notify_all();
            continue;
        }
        if let Some(job) = st.job.take() {
            drop(st);
            let answer = match job {
                Job::SumF64(v) => {
                    let mut sums = vec![0.0; v.len()];
                    t.sum_f64(&v, &mut sums, &w).map(|_| Job::SumF64(sums))
                }
                Job::GatherF32(v) => {
                    let mut all = vec![0.0; v.len() * t.size()];
                    t.gather_f32(&v, &mut all, &w).map(|_| Job::GatherF32(all))
                }
                Job::BroadcastBytes(mut v) => t.broadcast(&mut v, &w).map(|_| Job::BroadcastBytes(v)),
            };
            st = pipe.lock();
            if let Err(e) = &answer {
                st.failed = Some(e.clone());
            }
            st.answer = Some(answer);
            pipe.wake.notify_all();
            continue;
        }
        if st.shutdown {
            return;
        }
        // Woken by a bucket, a job, shutdown; the timeout only polls `abort`.
        st = pipe
            .wake
            .wait_timeout(st, std::time::Duration::from_millis(50))
            .map(|r| r.0)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

/// The named hashes of a run's settings for [`Group::agree`]: one per field of `settings` as
/// JSON, nested fields by their dotted path (so a difference is named: `model.hidden_size`,
/// `seed`, `steps`, …).
pub fn setting_hashes(settings: &impl serde::Serialize) -> Vec<(String, u64)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, u64)>) {
        match v {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            _ => out.push((prefix.to_string(), crate::files::fnv1a64(v.to_string().into_bytes()))),
        }
    }
    let mut out = Vec::new();
    walk("", &serde_json::to_value(settings).unwrap_or_default(), &mut out);
    out
}

/// A hash of `values`' bits (data or parameters) for [`Group::agree`].
pub fn hash_f32(values: &[f32]) -> u64 {
    crate::files::fnv1a64(values.iter().flat_map(|v| v.to_bits().to_le_bytes()))
}
