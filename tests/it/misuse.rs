//! A pass used the wrong way is a typed error, never a panic or a wrong gradient: a workspace
//! of another network, and a workspace setting changed between `forward` and `backward`.

use crate::common::{Mode, Problem};
use bptt::net::Dropout;
use bptt::{CellKind, Error, Head, InputKind, Net, NetConfig};

/// A workspace built for another network (larger H, smaller H, other input kind, other cell,
/// other head) is refused by `forward` and `backward` with `Error::Config`.
#[test]
fn a_workspace_of_another_net_is_a_typed_error() {
    let p = Problem::new(CellKind::Lstm, 2, Mode::ManyToManyCe, false, 3, 4, 7);
    let cfg = *p.net.config();
    let others = [
        NetConfig { hidden: cfg.hidden + 3, ..cfg },
        NetConfig { hidden: 1, ..cfg },
        NetConfig { input: InputKind::Tokens { vocab: 5, embedding_dim: 3 }, ..cfg },
        NetConfig { cell: CellKind::Gru, ..cfg },
        NetConfig { layers: 1, ..cfg },
        NetConfig { head: Head::Pooled("last".parse().unwrap()), ..cfg },
    ];
    for other in others {
        let mut ws = Net::new(other).unwrap().workspace::<f64>(4, 3, 1).unwrap();
        let r = p.net.forward(&p.params, &mut ws, p.input(), Some(p.targets()), Some(&p.init));
        assert!(matches!(r, Err(Error::Config(ref m)) if m.contains("another network")), "{other:?}: {r:?}");
        let mut grads = vec![0.0; p.net.num_params()];
        let r = p.net.backward(&p.params, &mut ws, &mut grads);
        assert!(matches!(r, Err(Error::Config(_))), "{other:?}: {r:?}");
    }
}

/// Each setting the backward pass depends on, changed after `forward`: the backward pass
/// either gives the gradient of the pass that ran (bit for bit) or refuses with a typed error.
#[test]
fn settings_changed_between_forward_and_backward_never_give_a_wrong_gradient() {
    let p = Problem::new(CellKind::Gru, 2, Mode::WeightedCe, false, 3, 5, 11);
    let net = &p.net;
    let reference = {
        let mut ws = net.workspace::<f64>(5, 3, 1).unwrap();
        net.forward(&p.params, &mut ws, p.input(), Some(p.targets()), Some(&p.init)).unwrap();
        let mut g = vec![0.0; net.num_params()];
        net.backward(&p.params, &mut ws, &mut g).unwrap();
        g
    };
    type Setter = fn(&mut bptt::Workspace<f64>);
    let setters: [(&str, Setter); 8] = [
        ("set_lengths", |ws| ws.set_lengths(Some(&[2, 5, 1])).unwrap()),
        ("set_dropout", |ws| ws.set_dropout(Some(Dropout { p: 0.5, locked: false, seed: 3 })).unwrap()),
        ("set_dropout_masks", |ws| ws.set_dropout_masks(&[2.0; 5 * 3 * 3], &[2.0; 2 * 5 * 3 * 4]).unwrap()),
        ("set_wavefront(true)", |ws| ws.set_wavefront(true)),
        ("set_wavefront(false)", |ws| ws.set_wavefront(false)),
        ("set_record_dh_norms", |ws| ws.set_record_dh_norms(true)),
        ("set_threads", |ws| ws.set_threads(3)),
        ("set_input_grad", |ws| ws.set_input_grad(true)),
    ];
    for (name, set) in setters {
        let mut ws = net.workspace::<f64>(5, 3, 1).unwrap();
        net.forward(&p.params, &mut ws, p.input(), Some(p.targets()), Some(&p.init)).unwrap();
        set(&mut ws);
        let mut g = vec![0.0; net.num_params()];
        match net.backward(&p.params, &mut ws, &mut g) {
            Ok(()) => assert_eq!(g, reference, "{name}: backward gave another gradient"),
            Err(e) => assert!(matches!(e, Error::Config(_)), "{name}: {e:?}"),
        }
    }
}

/// At sizes where stacked layers run as a wavefront (L = 2, H = 256, B = 4: two unit blocks per
/// layer), the settings that choose how the backward pass runs — the wavefront, the per-step
/// norms (which need whole steps), the threads, dL/dx — changed after `forward` leave the pass
/// as its forward planned it: the same gradient bit for bit (a backward pass that re-read the
/// wavefront setting would refuse or run the other schedule).
#[test]
fn backward_runs_the_plan_its_forward_made() {
    let cfg = NetConfig {
        cell: CellKind::Lstm,
        input: InputKind::Dense { size: 5 },
        hidden: 256,
        layers: 2,
        output: 3,
        loss: bptt::LossKind::CrossEntropy,
        head: Head::PerStep,
        bidirectional: false,
        proj_size: 0,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    };
    let net = Net::new(cfg).unwrap();
    let (t, b) = (6, 4);
    let mut r = crate::common::rng(5);
    let params = crate::common::uniform(&mut r, net.num_params(), 0.1);
    let x = crate::common::uniform(&mut r, t * b * 5, 1.0);
    let y: Vec<u32> = (0..t * b).map(|k| (k % 3) as u32).collect();
    let run = |set: &dyn Fn(&mut bptt::Workspace<f64>)| {
        let mut ws = net.workspace::<f64>(t, b, 2).unwrap();
        ws.set_wavefront(true);
        net.forward(&params, &mut ws, bptt::Input::Dense(&x), Some(bptt::Targets::classes(&y)), None).unwrap();
        set(&mut ws);
        let mut g = vec![0.0; net.num_params()];
        net.backward(&params, &mut ws, &mut g).unwrap();
        g
    };
    let reference = run(&|_| {});
    type Setter = fn(&mut bptt::Workspace<f64>);
    let setters: [(&str, Setter); 4] = [
        ("set_wavefront(false)", |ws| ws.set_wavefront(false)),
        ("set_record_dh_norms", |ws| ws.set_record_dh_norms(true)),
        ("set_threads(1)", |ws| ws.set_threads(1)),
        ("set_input_grad", |ws| ws.set_input_grad(true)),
    ];
    for (name, set) in setters {
        assert!(run(&set) == reference, "{name}: backward gave another gradient");
    }
}
