//! `bptt._core`: the Python bindings — the char-LM (train with the `bptt train` flags as
//! keywords, sample, evaluate, save/load), gradients of a net on given data, gradient flow, and
//! model files as NumPy arrays with PyTorch names. `bptt/__init__.py` re-exports it.

// Python keyword arguments mirror the CLI's flags, one parameter each.
#![allow(clippy::too_many_arguments)]

use bptt::charlm::train::TrainConfig;
use bptt::charlm::{CharModel, ModelSpec, Sampler, Trainer, Vocab};
use bptt::seq::fit::{FitConfig, FitStep, Fitter, Score};
use bptt::seq::{Dataset, Labels, SeqModel};
use bptt::{CellKind, Error, Head, Input, InputKind, LossKind, Net, NetConfig, Targets};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyMemoryError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// A library error as the Python exception a user expects: file problems are `OSError`, too
/// little memory `MemoryError` (with the estimate), everything else `ValueError`; the message
/// is the CLI's one line.
fn py_err(e: Error) -> PyErr {
    match e {
        Error::Io { .. } => PyOSError::new_err(e.to_string()),
        Error::Memory { .. } => PyMemoryError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

fn value_err(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

/// `MemoryError` (before anything is allocated) if `bytes` for `what` do not fit in the memory
/// available now: every allocation whose size a caller chose is checked first, so a huge size
/// or a broadcast (zero-stride) array of billions of elements is refused, never an abort.
fn ensure_memory(what: &str, bytes: u64) -> PyResult<()> {
    bptt::kernels::machine::ensure_available(|| what.to_string(), bytes).map_err(py_err)
}

/// The bytes of `n` values of `size` bytes each (saturating).
fn bytes_of(n: usize, size: usize) -> u64 {
    (n as u64).saturating_mul(size as u64)
}

/// True unless a callback's answer asks to stop: `False` or anything false but `None` (a
/// NumPy `False_`, 0), as Python's `if` reads it.
fn go_on(answer: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(answer.is_none() || answer.is_truthy()?)
}

/// The thread count: `threads`, else all cores.
fn threads(threads: Option<usize>) -> PyResult<usize> {
    match threads {
        Some(0) => Err(value_err("threads must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// One update's metrics as a dict.
fn metrics_dict<'py>(
    py: Python<'py>,
    m: &bptt::charlm::train::StepMetrics,
    val: Option<f64>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("step", m.step)?;
    d.set_item("epoch", m.epoch)?;
    d.set_item("tokens", m.tokens)?;
    d.set_item("train_loss", m.train_loss)?;
    d.set_item("grad_norm", m.grad_norm)?;
    d.set_item("clipped", m.clipped)?;
    d.set_item("skipped", m.skipped)?;
    d.set_item("lr", m.lr)?;
    if let Some(v) = val {
        d.set_item("val_loss", v)?;
    }
    Ok(d)
}

/// Every tensor of a slab as a dict of arrays named as in PyTorch's `state_dict`.
fn state_dict<'py, T: numpy::Element + Copy>(py: Python<'py>, net: &Net, slab: &[T]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for p in net.params() {
        let n: usize = p.shape.iter().product();
        let a = ArrayD::from_shape_vec(IxDyn(&p.shape), slab[p.offset..p.offset + n].to_vec())
            .map_err(|e| value_err(e.to_string()))?;
        d.set_item(&p.name, a.into_pyarray(py))?;
    }
    Ok(d)
}

/// A character-level language model (embedding → RNN/LSTM/GRU → linear decoder), trained by
/// truncated BPTT. Its files are the CLI's (`bptt sample --model`, `bptt eval --model`).
#[pyclass(name = "CharLM", module = "bptt")]
struct CharLM {
    model: CharModel,
    history: Vec<(bptt::charlm::train::StepMetrics, Option<f64>)>,
}

#[pymethods]
impl CharLM {
    /// Trains a new model on `text` with the keywords of `bptt train` (same defaults); the
    /// same seed gives the same weights as the CLI, bit for bit. Training runs on the engine's
    /// threads with the GIL released. `callback(step, metrics)` is called after every update;
    /// returning `False` stops training there. Ctrl-C raises `KeyboardInterrupt` after the
    /// current update.
    #[staticmethod]
    #[pyo3(signature = (
        text, *, cell = "lstm", embedding_dim = 64, hidden = 256, layers = 2, seq_len = 100,
        batch = None, tbptt = None, checkpoint_every = 0, optimizer = "adam", lr = 2e-3,
        momentum = None, weight_decay = None, lr_schedule = "constant", warmup = 0,
        clip_norm = 5.0, clip_value = None, steps = None, epochs = None, val_fraction = 0.1,
        seed = 1337, max_bad_steps = 10, abort_loss_factor = None, dropout = 0.0,
        locked_dropout = 0.0, weight_drop = 0.0, online = None, precision = "f32", eval_every = 200,
        threads = None, callback = None
    ))]
    fn train(
        py: Python<'_>,
        text: &str,
        cell: &str,
        embedding_dim: usize,
        hidden: usize,
        layers: usize,
        seq_len: usize,
        batch: Option<usize>,
        tbptt: Option<&str>,
        checkpoint_every: usize,
        optimizer: &str,
        lr: f64,
        momentum: Option<f64>,
        weight_decay: Option<f64>,
        lr_schedule: &str,
        warmup: u64,
        clip_norm: f64,
        clip_value: Option<f64>,
        steps: Option<u64>,
        epochs: Option<u64>,
        val_fraction: f64,
        seed: u64,
        max_bad_steps: u32,
        abort_loss_factor: Option<f64>,
        dropout: f64,
        locked_dropout: f64,
        weight_drop: f64,
        online: Option<String>,
        precision: &str,
        eval_every: u64,
        threads: Option<usize>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<CharLM> {
        let threads = self::threads(threads)?;
        let cell: CellKind = cell.parse().map_err(py_err)?;
        let spec = ModelSpec { cell, embedding_dim, hidden, layers, layer_norm: false, zoneout: bptt::Zoneout::NONE };
        let vocab = Vocab::from_text(text).map_err(py_err)?;
        spec.validate(vocab.len()).map_err(py_err)?;
        let ids = vocab.encode(text).map_err(py_err)?;
        let (k1, k2) = match tbptt {
            None => (seq_len, seq_len),
            Some(s) => {
                let parse = |v: &str| v.trim().parse::<usize>().ok();
                match s.split_once(':').map(|(x, y)| (parse(x), parse(y))) {
                    Some((Some(k1), Some(k2))) => (k1, k2),
                    _ => {
                        return Err(value_err(format!(
                            "tbptt takes 'K1:K2', two whole numbers such as '50:100', got '{s}'"
                        )));
                    }
                }
            }
        };
        let mut cfg = TrainConfig {
            model: spec,
            seq_len: k2,
            k1,
            batch: batch.unwrap_or(if online.is_some() { 1 } else { 32 }),
            optimizer: optimizer.into(),
            lr,
            momentum,
            weight_decay,
            lr_schedule: lr_schedule.into(),
            warmup,
            clip_norm,
            clip_value,
            steps: steps.unwrap_or(1),
            val_fraction,
            seed,
            max_bad_steps: max_bad_steps.max(1),
            abort_loss_factor,
            checkpoint_every,
            schedule_steps: None,
            dropout: if locked_dropout != 0.0 { locked_dropout } else { dropout },
            locked_dropout: locked_dropout > 0.0,
            weight_drop,
            online,
            precision: precision.parse().map_err(py_err)?,
        };
        cfg.validate().map_err(py_err)?;
        let per_epoch = cfg.updates_per_epoch(ids.len()).map_err(py_err)? as u64;
        cfg.steps = match (steps, epochs) {
            (Some(0), _) => return Err(value_err("steps must be at least 1")),
            (Some(s), _) => s,
            (None, Some(0)) => return Err(value_err("epochs must be at least 1")),
            (None, Some(e)) => e.checked_mul(per_epoch).ok_or_else(|| {
                value_err(format!("{e} epochs are more updates than can be counted: give fewer epochs"))
            })?,
            (None, None) => per_epoch,
        };
        ensure_memory("training this model", cfg.estimate_bytes(vocab.len()).map_err(py_err)?)?;
        // The history keeps a line per update: a huge `steps` or `epochs` is refused, not an abort.
        let line = std::mem::size_of::<(bptt::charlm::train::StepMetrics, Option<f64>)>();
        ensure_memory("the per-update history", bytes_of(usize::try_from(cfg.steps).unwrap_or(usize::MAX), line))?;
        let model = CharModel::new(spec, vocab, seed).map_err(py_err)?;
        let mut trainer = Trainer::new(cfg, model, ids, threads).map_err(py_err)?;
        let mut history = Vec::new();
        while !trainer.done() {
            // The engine's threads run the update while other Python threads go on.
            let (m, val) = py
                .detach(|| -> bptt::Result<_> {
                    let m = trainer.train_step()?;
                    trainer.health()?;
                    let eval_now = trainer.done() || (eval_every > 0 && m.step % eval_every == 0);
                    let val = if eval_now { trainer.validate()?.map(|e| e.loss) } else { None };
                    Ok((m, val))
                })
                .map_err(py_err)?;
            history.push((m, val));
            py.check_signals()?;
            if let Some(cb) = &callback
                && !go_on(cb.call1(py, (m.step, metrics_dict(py, &m, val)?))?.bind(py))?
            {
                break;
            }
        }
        Ok(CharLM { model: trainer.model, history })
    }

    /// Loads a model file written by `save` or by `bptt train` (`model.safetensors`).
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<CharLM> {
        Ok(CharLM { model: CharModel::load(&path).map_err(py_err)?, history: Vec::new() })
    }

    /// Writes the model file (safetensors, PyTorch names), atomically.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        self.model.save(&path).map_err(py_err)
    }

    /// `length` characters generated after `prime` (which is included), as `bptt sample` does.
    /// Made in pieces of up to 4,096 characters: Ctrl-C raises KeyboardInterrupt between them,
    /// and `callback(piece)` sees each piece as it is made (returning False stops: the text so
    /// far is returned).
    #[pyo3(signature = (prime = "", length = 500, temperature = 1.0, top_k = None, seed = 0, threads = Some(1),
        callback = None))]
    fn sample(
        &self,
        py: Python<'_>,
        prime: &str,
        length: usize,
        temperature: f64,
        top_k: Option<usize>,
        seed: u64,
        threads: Option<usize>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let threads = self::threads(threads)?;
        let model = &self.model;
        let prime_ids = model.vocab.encode(prime).map_err(py_err)?.to_vec();
        if top_k == Some(0) {
            return Err(value_err("top_k must be at least 1 (or None for every character)"));
        }
        // Up to 4 bytes a character, plus the sampler's state.
        ensure_memory("the sampled text", bytes_of(length, 4).saturating_add(1 << 20))?;
        let mut s = py
            .detach(|| -> bptt::Result<Sampler> {
                let mut s = Sampler::new(model, seed, threads)?;
                s.feed(&[model.vocab.id('\n').unwrap_or(0)])?;
                s.feed(&prime_ids)?;
                Ok(s)
            })
            .map_err(py_err)?;
        let mut out = String::from(prime);
        // In pieces, so Ctrl-C (KeyboardInterrupt) stops a long sample between them.
        let mut left = length;
        while left > 0 {
            let n = left.min(4096);
            let start = out.len();
            py.detach(|| -> bptt::Result<()> {
                for _ in 0..n {
                    out.push(model.vocab.char(s.next(temperature, top_k)?));
                }
                Ok(())
            })
            .map_err(py_err)?;
            left -= n;
            py.check_signals()?;
            if let Some(cb) = &callback
                && !go_on(cb.call1(py, (&out[start..],))?.bind(py))?
            {
                break;
            }
        }
        Ok(out)
    }

    /// Loss (nats per character), bits per character and perplexity on `text`, as `bptt eval`.
    #[pyo3(signature = (text, threads = None))]
    fn evaluate<'py>(&self, py: Python<'py>, text: &str, threads: Option<usize>) -> PyResult<Bound<'py, PyDict>> {
        let threads = self::threads(threads)?;
        let ids = self.model.vocab.encode(text).map_err(py_err)?;
        let e = py.detach(|| self.model.evaluate_stream(&ids, threads)).map_err(py_err)?;
        let d = PyDict::new(py);
        d.set_item("loss", e.loss)?;
        d.set_item("bits_per_char", e.bits_per_char)?;
        d.set_item("perplexity", e.perplexity)?;
        d.set_item("tokens", e.tokens)?;
        Ok(d)
    }

    /// The weights as a dict of float32 arrays with PyTorch names (`encoder.weight`,
    /// `rnn.weight_ih_l0`, …, `decoder.bias`): `torch_model.load_state_dict({k: torch.from_numpy(v)})`.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        state_dict(py, &self.model.net, &self.model.params)
    }

    /// One dict per update of the last `train` (`step`, `train_loss`, `grad_norm`, `lr`, …,
    /// and `val_loss` where validation ran).
    #[getter]
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.history.iter().map(|(m, v)| metrics_dict(py, m, *v)).collect()
    }

    /// The vocabulary, in id order.
    #[getter]
    fn vocab(&self) -> String {
        (0..self.model.vocab.len() as u32).map(|i| self.model.vocab.char(i)).collect()
    }

    /// `(cell, embedding_dim, hidden, layers)`.
    #[getter]
    fn spec(&self) -> (String, usize, usize, usize) {
        let s = &self.model.spec;
        (s.cell.to_string(), s.embedding_dim, s.hidden, s.layers)
    }

    fn __repr__(&self) -> String {
        let s = &self.model.spec;
        format!(
            "CharLM(cell='{}', embedding_dim={}, hidden={}, layers={}, vocab={})",
            s.cell,
            s.embedding_dim,
            s.hidden,
            s.layers,
            self.model.vocab.len()
        )
    }

    /// ‖dL/dh_t‖ per layer and step for the first `seq_len` characters of `text` (one stream,
    /// from the zero state): an array (layers, seq_len), and the loss.
    #[pyo3(signature = (text, seq_len = 100))]
    fn gradient_flow<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        seq_len: usize,
    ) -> PyResult<(Bound<'py, PyArrayDyn<f64>>, f64)> {
        let ids = self.model.vocab.encode(text).map_err(py_err)?.to_vec();
        if ids.len() < seq_len + 1 || seq_len == 0 {
            return Err(value_err(format!(
                "gradient_flow needs a text of at least seq_len + 1 = {} characters, got {}",
                seq_len + 1,
                ids.len()
            )));
        }
        let net = &self.model.net;
        let params: Vec<f64> = self.model.params.iter().map(|&v| v as f64).collect();
        let mut ws = net.workspace::<f64>(seq_len, 1, 1).map_err(py_err)?;
        ws.set_record_dh_norms(true);
        let (x, y) = (&ids[..seq_len], &ids[1..seq_len + 1]);
        let loss = net.forward(&params, &mut ws, Input::Tokens(x), Some(Targets::classes(y)), None).map_err(py_err)?;
        let mut grads = vec![0.0; params.len()];
        net.backward(&params, &mut ws, &mut grads).map_err(py_err)?;
        let layers = net.config().layers;
        let flat: Vec<f64> = (0..layers).flat_map(|k| ws.dh_norms(k).to_vec()).collect();
        let a = ArrayD::from_shape_vec(IxDyn(&[layers, seq_len]), flat).map_err(|e| value_err(e.to_string()))?;
        Ok((a.into_pyarray(py), loss))
    }
}

/// Reads an (…) float64 array in logical (C) order whatever its memory layout, checking its
/// shape and that every value is finite.
fn read_f64(a: &PyReadonlyArrayDyn<'_, f64>, what: &str, shape: &[usize]) -> PyResult<Vec<f64>> {
    if a.shape() != shape {
        return Err(value_err(format!("{what} must have shape {shape:?}, got {:?}", a.shape())));
    }
    ensure_memory(&format!("a copy of {what}"), bytes_of(a.len(), 8))?;
    let v: Vec<f64> = a.as_array().iter().copied().collect();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(value_err(format!("{what} holds a non-finite value (NaN or infinity) at flat index {i}")));
    }
    Ok(v)
}

/// Loss and gradients of a fresh or given net on one batch, in float64: `x` is (T, B, I);
/// `y` (T, B, O) float64 targets for `loss="mse"`, or (T, B) int64 classes in [0, output) for
/// `loss="cross_entropy"`. `params`: a dict of arrays with PyTorch names (else initialised
/// from `seed` like PyTorch). Returns (loss, grads, params), both dicts of float64 arrays.
#[pyfunction]
#[pyo3(signature = (x, y, *, cell = "lstm", hidden = 16, layers = 1, loss = "mse", output = None, params = None, seed = 0))]
fn gradient<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f64>,
    y: &Bound<'py, PyAny>,
    cell: &str,
    hidden: usize,
    layers: usize,
    loss: &str,
    output: Option<usize>,
    params: Option<&Bound<'py, PyDict>>,
    seed: u64,
) -> PyResult<(f64, Bound<'py, PyDict>, Bound<'py, PyDict>)> {
    let &[t, b, i] = x.shape() else {
        return Err(value_err(format!("x must be 3-dimensional (T, B, I), got shape {:?}", x.shape())));
    };
    let xs = read_f64(&x, "x", &[t, b, i])?;
    let cell: CellKind = cell.parse().map_err(py_err)?;
    let (loss_kind, out, classes, values) = match loss {
        "mse" => {
            let y: PyReadonlyArrayDyn<'py, f64> =
                y.extract().map_err(|_| value_err("for loss='mse', y must be a float64 array (T, B, O)"))?;
            let &[_, _, o] = y.shape() else {
                return Err(value_err(format!("y must be (T, B, O) for loss='mse', got shape {:?}", y.shape())));
            };
            (LossKind::Mse, o, Vec::new(), read_f64(&y, "y", &[t, b, o])?)
        }
        "cross_entropy" => {
            let y: PyReadonlyArrayDyn<'py, i64> =
                y.extract().map_err(|_| value_err("for loss='cross_entropy', y must be an int64 array (T, B)"))?;
            if y.shape() != [t, b] {
                return Err(value_err(format!("y must have shape {:?}, got {:?}", [t, b], y.shape())));
            }
            let o = output.ok_or_else(|| value_err("loss='cross_entropy' needs output= (the number of classes)"))?;
            let ys: Vec<i64> = y.as_array().iter().copied().collect();
            if let Some(bad) = ys.iter().find(|&&c| c < 0 || c as usize >= o) {
                return Err(value_err(format!("y holds class {bad}, outside [0, {o})")));
            }
            (LossKind::CrossEntropy, o, ys.iter().map(|&c| c as u32).collect(), Vec::new())
        }
        other => return Err(value_err(format!("loss must be 'mse' or 'cross_entropy', got '{other}'"))),
    };
    let cfg = NetConfig {
        cell,
        input: InputKind::Dense { size: i },
        hidden,
        layers,
        output: out,
        loss: loss_kind,
        head: Head::PerStep,
        bidirectional: false,
        proj_size: 0,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    };
    let net = Net::new(cfg).map_err(py_err)?;
    // Parameters, gradients and their two dicts, and the workspace, before any is allocated.
    let workspace = bptt::net::Workspace::<f64>::estimate_bytes(net.config(), t, b);
    ensure_memory(
        "this net's parameters, gradients and workspace",
        bytes_of(net.num_params(), 32).saturating_add(workspace),
    )?;
    let mut p: Vec<f64> = net.init_params(seed);
    if let Some(given) = params {
        for info in net.params() {
            let a = given.get_item(&info.name)?.ok_or_else(|| value_err(format!("params lacks '{}'", info.name)))?;
            let a: PyReadonlyArrayDyn<'py, f64> =
                a.extract().map_err(|_| value_err(format!("params['{}'] must be a float64 array", info.name)))?;
            let v = read_f64(&a, &format!("params['{}']", info.name), &info.shape)?;
            p[info.offset..info.offset + v.len()].copy_from_slice(&v);
        }
    }
    let (loss_value, grads) = py
        .detach(|| -> bptt::Result<(f64, Vec<f64>)> {
            let mut ws = net.workspace::<f64>(t, b, 1)?;
            let targets = if classes.is_empty() { Targets::values(&values) } else { Targets::classes(&classes) };
            let l = net.forward(&p, &mut ws, Input::Dense(&xs), Some(targets), None)?;
            let mut g = vec![0.0; p.len()];
            net.backward(&p, &mut ws, &mut g)?;
            Ok((l, g))
        })
        .map_err(py_err)?;
    Ok((loss_value, state_dict(py, &net, &grads)?, state_dict(py, &net, &p)?))
}

/// The weights of a model file (`bptt train`'s `model.safetensors`, or `CharLM.save`) as a
/// dict of float32 arrays with PyTorch names.
#[pyfunction]
fn load_state_dict(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let m = CharModel::load(&path).map_err(py_err)?;
    state_dict(py, &m.net, &m.params)
}

/// Sequences from Python: `values` a 1-D float32 array of every sequence's steps back to back
/// (each step `features` values), `lengths` their step counts; checked for size and finiteness.
fn dataset(
    values: &PyReadonlyArrayDyn<'_, f32>,
    lengths: Vec<usize>,
    features: usize,
    labels: Labels,
) -> PyResult<Dataset> {
    if features == 0 {
        return Err(value_err("sequences need at least one feature per step"));
    }
    if let Some(i) = lengths.iter().position(|&l| l == 0) {
        return Err(value_err(format!("sequence {i} has no steps: every sequence needs at least one")));
    }
    let total = lengths.iter().try_fold(0usize, |a, &l| a.checked_add(l.checked_mul(features)?));
    if total != Some(values.len()) {
        return Err(value_err(format!(
            "the sequences hold {} values, their lengths × {features} features make {total:?}",
            values.len()
        )));
    }
    ensure_memory("a copy of the sequences", bytes_of(values.len(), 4))?;
    let v: Vec<f32> = values.as_array().iter().copied().collect();
    if let Some(k) = v.iter().position(|x| !x.is_finite()) {
        let (mut seq, mut at) = (0, k / features);
        while seq < lengths.len() && at >= lengths[seq] {
            at -= lengths[seq];
            seq += 1;
        }
        return Err(value_err(format!(
            "sequence {seq} step {at} holds a missing or non-finite value (NaN or infinity): fill or drop it first"
        )));
    }
    Ok(Dataset { features, lengths, values: v, labels })
}

/// The labels from Python: class ids with their names, or target values, or none.
fn labels(
    class_names: Option<Vec<String>>,
    class_ids: Option<Vec<usize>>,
    targets: Option<Vec<f32>>,
) -> PyResult<Labels> {
    match (class_names, class_ids, targets) {
        (Some(names), Some(ids), None) => {
            if let Some(bad) = ids.iter().find(|&&i| i >= names.len()) {
                return Err(value_err(format!("class id {bad} is outside the {} classes", names.len())));
            }
            Ok(Labels::Classes { names, ids })
        }
        (None, None, Some(v)) => {
            if v.iter().any(|x| !x.is_finite()) {
                return Err(value_err("y holds a missing or non-finite target (NaN or infinity)"));
            }
            Ok(Labels::Values(v))
        }
        _ => Ok(Labels::None),
    }
}

/// One update's metrics (and the epoch's validation) as a dict.
fn fit_dict<'py>(py: Python<'py>, m: &FitStep, val: Option<&Score>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("step", m.step)?;
    d.set_item("epoch", m.epoch)?;
    d.set_item("sequences", m.sequences)?;
    d.set_item("train_loss", m.train_loss)?;
    d.set_item("grad_norm", m.grad_norm)?;
    d.set_item("clipped", m.clipped)?;
    d.set_item("skipped", m.skipped)?;
    d.set_item("lr", m.lr)?;
    if let Some(s) = val {
        d.set_item("val_loss", s.loss)?;
        if let Some(a) = s.accuracy {
            d.set_item("val_accuracy", a)?;
        }
        if let Some(a) = s.mae {
            d.set_item("val_mae", a)?;
        }
    }
    Ok(d)
}

/// Validation data from Python: values, lengths, class ids or targets.
type ValidSet<'py> = (PyReadonlyArrayDyn<'py, f32>, Vec<usize>, Option<Vec<usize>>, Option<Vec<f32>>);

/// A file's sequences for Python: values, lengths, features, labels.
type SequencesRead<'py> = (Bound<'py, PyArrayDyn<f32>>, Vec<usize>, usize, Bound<'py, PyAny>);

/// A fitted sequence model: the engine behind `bptt.SequenceModel` (which handles the
/// scikit-learn conventions and the array layouts). Its files are `bptt fit`'s.
#[pyclass(name = "SeqCore", module = "bptt")]
struct SeqCore {
    model: SeqModel,
    history: Vec<(FitStep, Option<Score>)>,
}

#[pymethods]
impl SeqCore {
    /// Fits a model as `bptt fit` does: `config` is the JSON of its settings (`FitConfig`);
    /// the data as `dataset` takes it; the best-on-validation weights are kept when there is
    /// validation data, else the last. GIL released; `callback(step, metrics)` after every
    /// update (returning False stops); Ctrl-C raises KeyboardInterrupt after the update.
    #[staticmethod]
    #[pyo3(signature = (config, values, lengths, features, class_names=None, class_ids=None, targets=None,
        valid=None, threads=None, callback=None))]
    fn fit(
        py: Python<'_>,
        config: &str,
        values: PyReadonlyArrayDyn<'_, f32>,
        lengths: Vec<usize>,
        features: usize,
        class_names: Option<Vec<String>>,
        class_ids: Option<Vec<usize>>,
        targets: Option<Vec<f32>>,
        valid: Option<ValidSet<'_>>,
        threads: Option<usize>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<SeqCore> {
        let threads = self::threads(threads)?;
        let cfg: FitConfig = serde_json::from_str(config).map_err(|e| value_err(format!("settings: {e}")))?;
        let train = dataset(&values, lengths, features, labels(class_names.clone(), class_ids, targets)?)?;
        let valid = match valid {
            Some((v, l, ids, t)) => {
                Some(dataset(&v, l, features, labels(ids.as_ref().and(class_names.clone()), ids, t)?)?)
            }
            None => None,
        };
        ensure_memory("training this model", Fitter::estimate_bytes(&cfg, &train).map_err(py_err)?)?;
        let mut f = Fitter::new(cfg, train, valid, threads).map_err(py_err)?;
        let line = std::mem::size_of::<(FitStep, Option<Score>)>();
        ensure_memory("the per-update history", bytes_of(usize::try_from(f.total).unwrap_or(usize::MAX), line))?;
        let mut history = Vec::new();
        let mut best: Option<Vec<f32>> = None;
        while !f.done() {
            let (m, val) = py
                .detach(|| -> bptt::Result<_> {
                    let m = f.step()?;
                    f.health()?;
                    let val = if f.epoch_ended() || f.done() { f.validate()? } else { None };
                    Ok((m, val))
                })
                .map_err(py_err)?;
            if val.is_some() && f.since_best == 0 {
                best = Some(f.model.params.clone());
            }
            history.push((m, val));
            py.check_signals()?;
            if let Some(cb) = &callback
                && !go_on(cb.call1(py, (m.step, fit_dict(py, &m, val.as_ref())?))?.bind(py))?
            {
                break;
            }
        }
        let mut model = f.model;
        if let Some(p) = best {
            model.params = p;
        }
        Ok(SeqCore { model, history })
    }

    /// (N, O) class probabilities or predicted values for sequences given as `dataset` takes
    /// them.
    #[pyo3(signature = (values, lengths, features, batch=256, threads=None))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        values: PyReadonlyArrayDyn<'py, f32>,
        lengths: Vec<usize>,
        features: usize,
        batch: usize,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let threads = self::threads(threads)?;
        if batch == 0 {
            return Err(value_err("batch must be at least 1"));
        }
        let data = dataset(&values, lengths, features, Labels::None)?;
        let n = data.len();
        let out = py.detach(|| self.model.predict(&data, batch, threads)).map_err(py_err)?;
        let a = ArrayD::from_shape_vec(IxDyn(&[n, self.model.spec.outputs()]), out)
            .map_err(|e| value_err(e.to_string()))?;
        Ok(a.into_pyarray(py))
    }

    /// Loads a `bptt fit` model file.
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<SeqCore> {
        Ok(SeqCore { model: SeqModel::load(&path).map_err(py_err)?, history: Vec::new() })
    }

    /// Writes the model file (`bptt predict --model` reads it), atomically.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        self.model.save(&path).map_err(py_err)
    }

    /// The model's spec as JSON (task, cell, sizes, pool, patch, features, classes).
    #[getter]
    fn spec(&self) -> PyResult<String> {
        serde_json::to_string(&self.model.spec).map_err(|e| value_err(e.to_string()))
    }

    /// The weights as a dict of float32 arrays with PyTorch names (`rnn.*`, `head.*`).
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        state_dict(py, &self.model.net, &self.model.params)
    }

    /// One dict per update of the fit (with `val_loss`, `val_accuracy` at each epoch's end).
    #[getter]
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.history.iter().map(|(m, v)| fit_dict(py, m, v.as_ref())).collect()
    }
}

/// Reads a `.ts` or long-form `.csv` file as `bptt fit` does: (values float32 1-D, lengths,
/// features, labels) where labels is ("classes", names, ids), ("values", targets) or None.
#[pyfunction]
#[pyo3(signature = (path, regress=false))]
fn read_sequences<'py>(py: Python<'py>, path: PathBuf, regress: bool) -> PyResult<SequencesRead<'py>> {
    let columns = bptt::seq::csv::Columns { id: None, label: None, values: regress, per_step: false };
    let d = py.detach(|| bptt::seq::read(&path, &columns)).map_err(py_err)?;
    let labels = match d.labels {
        Labels::None => py.None().into_bound(py),
        Labels::Classes { names, ids } => ("classes", names, ids).into_pyobject(py)?.into_any(),
        Labels::Values(v) => ("values", v).into_pyobject(py)?.into_any(),
        Labels::Steps { names, ids } => ("steps", names, ids).into_pyobject(py)?.into_any(),
    };
    let n = d.values.len();
    let values = ArrayD::from_shape_vec(IxDyn(&[n]), d.values).map_err(|e| value_err(e.to_string()))?;
    Ok((values.into_pyarray(py), d.lengths, d.features, labels))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CharLM>()?;
    m.add_class::<SeqCore>()?;
    m.add_function(wrap_pyfunction!(read_sequences, m)?)?;
    m.add_function(wrap_pyfunction!(gradient, m)?)?;
    m.add_function(wrap_pyfunction!(load_state_dict, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
