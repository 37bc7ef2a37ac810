//! A counting global allocator: after a warm-up pass, forward + backward must not allocate
//! (allocations made inside the GEMM crate's own calls are counted apart).

use bptt::{CellKind, Head, Input, InputKind, LossKind, Net, NetConfig, Targets};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static OURS: Cell<usize> = const { Cell::new(0) };
    static GEMM: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let counter = if bptt::kernels::in_gemm() { &GEMM } else { &OURS };
        let _ = counter.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn ours() -> usize {
    OURS.with(Cell::get)
}

#[test]
fn forward_backward_do_not_allocate_after_warm_up() {
    // Unsplit on one thread; row blocks, unit blocks and GEMM tiles on four; dropout and
    // variable lengths (row blocks and whole steps) on two of the shapes.
    for (t, b, hidden, threads) in [(20, 4, 16, 1), (5, 128, 16, 4), (5, 1, 256, 4), (5, 4, 256, 4)] {
        for cell in CellKind::ALL {
            // (The LSTM also as a LayerNorm-LSTM, on the token paths; every cell with zoneout.)
            let norms = [
                (false, false, false, false),
                (true, false, false, false),
                (true, b >= 4, false, false),
                (true, b >= 4, true, false),
                (false, b >= 4, false, true),
            ];
            let norms = norms.into_iter().filter(|n| !n.2 || cell == CellKind::Lstm);
            for (tokens, extras, layer_norm, zoned) in norms {
                let zoneout = match (zoned, cell) {
                    (false, _) => bptt::Zoneout::NONE,
                    (true, CellKind::Lstm) => bptt::Zoneout { h: 0.1, c: 0.3 },
                    (true, _) => bptt::Zoneout { h: 0.2, c: 0.0 },
                };
                let input = if tokens {
                    InputKind::Tokens { vocab: 7, embedding_dim: 5 }
                } else {
                    InputKind::Dense { size: 5 }
                };
                let cfg = NetConfig {
                    cell,
                    input,
                    hidden,
                    layers: 2,
                    output: 7,
                    loss: LossKind::CrossEntropy,
                    head: Head::PerStep,
                    bidirectional: false,
                    proj_size: 0,
                    layer_norm,
                    zoneout,
                };
                let net = Net::new(cfg).unwrap();
                let params = net.init_params::<f32>(1);
                let mut grads = vec![0.0f32; net.num_params()];
                let mut ws = net.workspace::<f32>(t, b, threads).unwrap();
                ws.set_wavefront(threads > 1);
                ws.set_record_dh_norms(threads == 1); // (recording runs the backward pass unsplit)
                if zoned {
                    // (A training pass: its masks are drawn from the seed.)
                    ws.set_dropout(Some(bptt::net::Dropout { p: 0.0, locked: false, seed: 3 })).unwrap();
                }
                if extras {
                    let lengths: Vec<usize> = (0..b).map(|r| 1 + r % t).collect();
                    ws.set_lengths(Some(&lengths)).unwrap();
                    ws.set_dropout(Some(bptt::net::Dropout { p: 0.3, locked: false, seed: 3 })).unwrap();
                }
                let x: Vec<f32> = (0..t * b * 5).map(|k| (k as f32 * 0.37).sin()).collect();
                let ids: Vec<u32> = (0..t * b).map(|k| (k % 7) as u32).collect();
                let input = if tokens { Input::Tokens(&ids) } else { Input::Dense(&x) };
                let mut run = || {
                    net.forward(&params, &mut ws, input, Some(Targets::classes(&ids)), None).unwrap();
                    net.backward(&params, &mut ws, &mut grads).unwrap();
                };
                run();
                let before = ours();
                run();
                run();
                assert_eq!(
                    ours() - before,
                    0,
                    "{cell} tokens={tokens} B={b} H={hidden}: bptt allocated during forward/backward"
                );
            }
        }
    }
}

/// Learning online by SnAp-1 (the per-unit form): after a first step, a step of the learner
/// allocates nothing — every cell, 2 layers, token input.
#[test]
fn an_online_snap_step_does_not_allocate_after_warm_up() {
    use bptt::Target;
    use bptt::online::{Learner, Method};
    for cell in CellKind::ALL {
        let net = token_net(cell, 16);
        let params = net.init_params::<f32>(1);
        let mut learner = Learner::<f32>::new(&net, Method::Snap1).unwrap();
        learner.reset(&net, None);
        let mut step = |k: u32| {
            learner.step(&net, &params, Input::Tokens(&[k % 7]), Target::Classes(&[(k + 1) % 7]), 1.0).unwrap();
        };
        step(0);
        let before = ours();
        for k in 1..6 {
            step(k);
        }
        assert_eq!(ours() - before, 0, "{cell}: an online SnAp-1 step allocated");
    }
}

/// bf16 products (`Precision::Bf16`): their packing scratch (W_hh once per pass, each tile's
/// operands) is sized on the first pass and reused — nothing is allocated after it.
#[test]
fn bf16_passes_do_not_allocate_after_warm_up() {
    for (cell, b) in [(CellKind::Lstm, 32), (CellKind::Gru, 4)] {
        let net = token_net(cell, 64);
        let params = net.init_params::<f32>(1);
        let mut grads = vec![0.0f32; net.num_params()];
        let mut ws = net.workspace::<f32>(10, b, 1).unwrap();
        ws.set_precision(bptt::kernels::Precision::Bf16);
        let ids: Vec<u32> = (0..10 * b).map(|k| (k % 7) as u32).collect();
        let mut run = || {
            net.forward(&params, &mut ws, Input::Tokens(&ids), Some(Targets::classes(&ids)), None).unwrap();
            net.backward(&params, &mut ws, &mut grads).unwrap();
        };
        run();
        let before = ours();
        run();
        run();
        assert_eq!(ours() - before, 0, "{cell} B={b}: a bf16 pass allocated");
    }
}

/// Two layers of `cell` (width `hidden`) over 7 tokens embedded in 5 values, a per-step readout.
fn token_net(cell: CellKind, hidden: usize) -> Net {
    Net::new(NetConfig {
        cell,
        input: InputKind::Tokens { vocab: 7, embedding_dim: 5 },
        hidden,
        layers: 2,
        output: 7,
        loss: LossKind::CrossEntropy,
        head: Head::PerStep,
        bidirectional: false,
        proj_size: 0,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    })
    .unwrap()
}
