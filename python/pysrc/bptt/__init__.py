"""bptt: recurrent networks (RNN, LSTM, GRU) trained by hand-written backpropagation through time.

The engine is Rust (`bptt._core`); this package gives it NumPy in and out:

- ``CharLM.train(text, hidden=..., layers=..., steps=...)`` with the keywords of ``bptt train``,
  then ``.sample()``, ``.evaluate(text)``, ``.save(path)``, ``CharLM.load(path)``,
  ``.state_dict()`` and ``.history``;
- ``gradient(x, y, ...)``: loss and gradients of a net on given data (float64), to compare with
  your own autograd;
- ``diagnose(model, text)``: the gradient flow, ||dL/dh_t|| per layer and step;
- ``load_state_dict(path)``: a model file's weights with PyTorch names;
- ``SequenceModel(task="classify"|"regress", ...)``: ``bptt fit`` with scikit-learn's conventions
  (``fit``, ``predict``, ``predict_proba``, ``score``, ``get_params``, ``classes_``, ``save``/``load``
  of the CLI's model files), and ``read_sequences(path)`` for ``.ts`` / CSV files.
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._core import CharLM, load_state_dict
from .sequence import SequenceModel, read_sequences

__all__ = ["CharLM", "SequenceModel", "read_sequences", "gradient", "diagnose", "load_state_dict", "__version__"]
__version__ = _core.__version__


def _float64(a, name: str) -> np.ndarray:
    """`a` as a float64 ndarray (any memory layout: the engine reads it in logical order)."""
    a = np.asarray(a)
    if a.dtype != np.float64:
        raise ValueError(f"{name} must be float64, got {a.dtype}: pass {name}.astype(np.float64)")
    return a


def gradient(x, y, *, cell="lstm", hidden=16, layers=1, loss="mse", output=None, params=None, seed=0):
    """Loss and gradients of a net (dense input, linear readout) on one batch, in float64.

    x: (T, B, I) float64. y: (T, B, O) float64 for ``loss="mse"`` (mean over T·B·O), or (T, B)
    int64 classes for ``loss="cross_entropy"`` (mean over T·B; give ``output``, the number of
    classes). params: a dict of float64 arrays with PyTorch names (``rnn.weight_ih_l0``, ...,
    ``decoder.weight``, ``decoder.bias``); by default the weights are initialised from ``seed``
    like PyTorch. Returns ``(loss, grads, params)``; grads and params are dicts of arrays.
    """
    x = _float64(x, "x")
    if loss == "mse":
        y = _float64(y, "y")
    elif loss == "cross_entropy":
        y = np.asarray(y)
        if y.dtype.kind not in "iu":
            raise ValueError(f"y must hold integer classes for loss='cross_entropy', got {y.dtype}")
        y = y.astype(np.int64, copy=False)
    if params is not None:
        params = {k: _float64(v, f"params['{k}']") for k, v in params.items()}
    return _core.gradient(
        x, y, cell=cell, hidden=hidden, layers=layers, loss=loss, output=output, params=params, seed=seed
    )


def diagnose(model: CharLM, text: str, seq_len: int = 100) -> dict:
    """Gradient flow of ``model`` on the first ``seq_len`` characters of ``text``.

    Returns ``{"dh_norm": array (layers, seq_len), "loss": float}``: ``dh_norm[l, t]`` is
    ||dL/dh_t|| at layer l, how much of the loss's gradient reaches step t.
    """
    dh, loss = model.gradient_flow(text, seq_len)
    return {"dh_norm": dh, "loss": loss}
