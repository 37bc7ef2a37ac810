//! Data-parallel training check (feature `mpi`): 20 Adam updates of a two-layer LSTM on fixed
//! random sequences, in f32 or f64, alone or as the ranks of `mpirun -np N` (each rank takes
//! its share of the global batch). Rank 0 writes the final weights, as little-endian f64, to
//! the given file; `tests/it/mpi.rs` compares the files of different rank counts.
//!
//! `mpirun -np 2 target/release/examples/dist_check f64 /tmp/w2.bin`

use bptt::dist::Group;
use bptt::{Clip, Float, Head, Input, InputKind, LossKind, Net, NetConfig, Optimizer, OptimizerConfig, Targets, Tbptt};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

const STEPS: usize = 20;
const T: usize = 12;
const BATCH: usize = 8;
const I: usize = 3;
const O: usize = 2;

fn train<F: Float>(group: &Group) -> anyhow::Result<Vec<f64>> {
    let cfg = NetConfig {
        cell: bptt::CellKind::Lstm,
        input: InputKind::Dense { size: I },
        hidden: 24,
        layers: 2,
        output: O,
        loss: LossKind::Mse,
        head: Head::PerStep,
        bidirectional: false,
        proj_size: 0,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    };
    let net = Net::new(cfg)?;
    let mut params: Vec<F> = net.init_params(7);
    let mut grads = vec![F::zero(); params.len()];
    let (ranks, rank) = (group.size(), group.rank());
    anyhow::ensure!(BATCH.is_multiple_of(ranks), "the batch of {BATCH} cannot be shared by {ranks} ranks");
    let b = BATCH / ranks;
    let mut tbptt = Tbptt::<F>::new(&net, T, T, b, 1)?;
    let mut reducer = group.reducer::<F>(params.len(), cfg.layers + 1);
    tbptt.workspace_mut().set_grad_ready(reducer.hook());
    let mut opt = Optimizer::new(OptimizerConfig::adam(), params.len())?;
    let clip = Clip { max_norm: Some(1.0), max_value: None };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (mut x, mut y) = (vec![F::zero(); T * b * I], vec![F::zero(); T * b * O]);
    for _ in 0..STEPS {
        // The global batch, (T, B, ·); this rank keeps its B/N columns.
        let xs: Vec<f64> = (0..T * BATCH * I).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
        let ys: Vec<f64> = (0..T * BATCH * O).map(|_| rng.random::<f64>()).collect();
        for (src, dst, w) in [(&xs, &mut x, I), (&ys, &mut y, O)] {
            for (row, out) in src.chunks_exact(BATCH * w).zip(dst.chunks_exact_mut(b * w)) {
                for (o, v) in out.iter_mut().zip(&row[rank * b * w..(rank + 1) * b * w]) {
                    *o = F::of(*v);
                }
            }
        }
        grads.fill(F::zero());
        tbptt.reset(None);
        reducer.reduce(&mut grads, |g| tbptt.step(&net, &params, Input::Dense(&x), Targets::values(&y), g))?;
        bptt::apply_update(&mut params, &mut grads, &mut opt, 1e-2, clip);
    }
    Ok(params.iter().map(|v| v.f64()).collect())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: dist_check f32|f64 OUT");
    let group = if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() {
        Group::mpi(Arc::new(AtomicUsize::new(0)))?
    } else {
        Group::single()
    };
    let w = match args[1].as_str() {
        "f32" => train::<f32>(&group)?,
        "f64" => train::<f64>(&group)?,
        other => anyhow::bail!("unknown precision {other}: give f32 or f64"),
    };
    if group.is_root() {
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&args[2], bytes)?;
    }
    Ok(())
}
