//! Mixed precision (`Workspace::set_precision(Precision::Bf16)`): the large products take bf16
//! operands with f32 accumulation. On a CPU with AVX512-BF16 the loss and gradients follow the
//! f32 ones within bf16's rounding, and they do not depend on the thread count; elsewhere the
//! setting falls back to f32 bit for bit.

use bptt::kernels::{Precision, bf16};
use bptt::{CellKind, Head, Input, InputKind, LossKind, Net, NetConfig, Targets};

fn run(net: &Net, precision: Precision, threads: usize, b: usize, t: usize) -> (f32, Vec<f32>) {
    let params = net.init_params::<f32>(3);
    let mut ws = net.workspace::<f32>(t, b, threads).unwrap();
    ws.set_precision(precision);
    let ids: Vec<u32> = (0..t * b).map(|k| ((k * 7 + k / 3) % 11) as u32).collect();
    let y: Vec<u32> = (0..t * b).map(|k| ((k * 5 + 1) % 11) as u32).collect();
    let loss = net.forward(&params, &mut ws, Input::Tokens(&ids), Some(Targets::classes(&y)), None).unwrap();
    let mut grads = vec![0.0f32; net.num_params()];
    net.backward(&params, &mut ws, &mut grads).unwrap();
    (loss, grads)
}

fn net(cell: CellKind, hidden: usize) -> Net {
    Net::new(NetConfig {
        cell,
        input: InputKind::Tokens { vocab: 11, embedding_dim: 16 },
        hidden,
        layers: 2,
        output: 11,
        loss: LossKind::CrossEntropy,
        head: Head::PerStep,
        bidirectional: false,
        proj_size: 0,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    })
    .unwrap()
}

/// Every cell, 2 layers, whole steps (B = 4) and row blocks (B = 64): the bf16 loss within
/// 1% of f32's and the gradient's cosine with f32's above 0.999, its norm within 2%; the same
/// bits at 1, 2, 3, 4 and 8 threads.
#[test]
fn bf16_products_follow_f32_and_ignore_the_thread_count() {
    if !bf16::native() {
        for cell in CellKind::ALL {
            let n = net(cell, 32);
            assert_eq!(run(&n, Precision::Bf16, 2, 8, 5), run(&n, Precision::F32, 2, 8, 5), "{cell}: no bf16 here");
        }
        eprintln!("skipped the bf16 comparison: this CPU has no AVX512-BF16 (bf16 falls back to f32, checked)");
        return;
    }
    for cell in CellKind::ALL {
        for (hidden, b) in [(48, 4), (64, 64)] {
            let n = net(cell, hidden);
            let t = 12;
            let (loss32, g32) = run(&n, Precision::F32, 1, b, t);
            let (loss16, g16) = run(&n, Precision::Bf16, 1, b, t);
            let what = format!("{cell} H={hidden} B={b}");
            assert!(((loss16 - loss32) / loss32).abs() < 1e-2, "{what}: loss {loss16} vs f32 {loss32}");
            let dot: f64 = g16.iter().zip(&g32).map(|(&a, &b)| a as f64 * b as f64).sum();
            let (n16, n32) = (
                g16.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt(),
                g32.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt(),
            );
            let cosine = dot / (n16 * n32);
            assert!(cosine > 0.999, "{what}: gradient cosine {cosine} with f32's");
            assert!((n16 / n32 - 1.0).abs() < 0.02, "{what}: gradient norm {n16} vs f32 {n32}");
            assert!(g16 != g32, "{what}: the bf16 gradient is the f32 one: bf16 did not run");
            for threads in [2, 3, 4, 8] {
                let (l, g) = run(&n, Precision::Bf16, threads, b, t);
                assert!(l.to_bits() == loss16.to_bits() && g == g16, "{what}: {threads} threads give other bits");
            }
        }
    }
}
