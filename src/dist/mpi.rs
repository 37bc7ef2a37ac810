//! The MPI transport (feature `mpi`): Open MPI through rsmpi, driven from the link thread only.

use super::{Pipe, Transport, Waiter, serve_with};
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::sync::Arc;
use std::sync::mpsc::Sender;

struct Mpi {
    world: SimpleCommunicator,
}

/// Polls a non-blocking request until it completes, sleeping between tests so the waiting
/// thread leaves the cores to training; fails (for good) when the waiter gives up.
macro_rules! poll {
    ($req:expr, $w:expr) => {{
        let mut req = $req;
        let mut spins = 0u32;
        loop {
            match req.test() {
                Ok(_) => break Ok::<(), String>(()),
                Err(r) => {
                    if $w.give_up() {
                        $w.fail();
                    }
                    req = r;
                    spins += 1;
                    if spins > 20 {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }};
}

impl Mpi {
    /// Writes the sums of `data` over the ranks into `out`.
    fn sum<T: Equivalence + Copy>(&self, data: &[T], out: &mut [T], w: &Waiter<'_>) -> Result<(), String> {
        mpi::request::scope(|scope| {
            let req = self.world.immediate_all_reduce_into(scope, data, out, SystemOperation::sum());
            poll!(req, w)
        })
    }
}

impl Transport for Mpi {
    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum_f32(&self, data: &[f32], out: &mut [f32], w: &Waiter<'_>) -> Result<(), String> {
        self.sum(data, out, w)
    }

    fn sum_f64(&self, data: &[f64], out: &mut [f64], w: &Waiter<'_>) -> Result<(), String> {
        self.sum(data, out, w)
    }

    fn gather_f32(&self, local: &[f32], all: &mut [f32], w: &Waiter<'_>) -> Result<(), String> {
        mpi::request::scope(|scope| {
            let req = self.world.immediate_all_gather_into(scope, local, all);
            poll!(req, w)
        })
    }

    fn broadcast(&self, bytes: &mut [u8], w: &Waiter<'_>) -> Result<(), String> {
        let root = self.world.process_at_rank(0);
        mpi::request::scope(|scope| {
            let req = root.immediate_broadcast_into(scope, bytes);
            poll!(req, w)
        })
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// The link thread: initialises MPI, reports (rank, size), serves the pipe, finalises.
pub(super) fn serve(pipe: Arc<Pipe>, started: Sender<crate::error::Result<(usize, usize)>>) {
    let Some((universe, _level)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
        let _ = started.send(Err(crate::error::Error::Dist("MPI was already initialised".into())));
        return;
    };
    let t = Mpi { world: universe.world() };
    let _ = started.send(Ok((t.world.rank() as usize, t.size())));
    serve_with(&t, &pipe);
    drop(t);
    drop(universe); // MPI_Finalize
}
