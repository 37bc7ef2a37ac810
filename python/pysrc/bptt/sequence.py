"""``SequenceModel``: a classifier or regressor of whole sequences, with scikit-learn's conventions.

The engine is ``bptt fit``'s (``bptt._core.SeqCore``); this module turns the array layouts a
Python user has into the engine's and back:

- ``X`` is an (N, T, F) array (float32 or float64, any memory layout), an (N, T) array (one
  feature per step), or a list of (T_i, F) or (T_i,) arrays. Variable lengths: pass ``lengths``,
  or pad the array with NaN (steps whose values are all NaN at the end of a sequence are
  padding), or give a list.
- ``y``: any labels for ``task="classify"`` (``classes_`` is ``np.unique(y)``), numbers for
  ``task="regress"``.
"""

from __future__ import annotations

import json

import numpy as np

from . import _core

_PARAMS = (
    "task", "cell", "hidden", "layers", "bidirectional", "proj_size", "layer_norm", "zoneout_h", "zoneout_c", "pool",
    "patch", "epochs", "batch", "group_by_length",
    "optimizer", "lr",
    "weight_decay", "lr_schedule", "clip_norm", "dropout", "class_weight", "valid_fraction",
    "patience", "seed", "threads", "callback",
)

try:  # scikit-learn is optional: with it, clone / cross_val_score / Pipeline see a real estimator.
    from sklearn.base import BaseEstimator as _Base
except ImportError:  # pragma: no cover - exercised where scikit-learn is absent
    _Base = object


def _flatten(X, lengths=None):
    """(values float32 1-D, lengths, features) from any accepted layout of ``X``."""
    if isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError("X holds no sequences")
        seqs = []
        for i, s in enumerate(X):
            a = np.asarray(s)
            if a.ndim == 1:
                a = a[:, None]
            if a.ndim != 2:
                raise ValueError(f"X[{i}] must be (T, F) or (T,), got shape {a.shape}")
            if a.dtype.kind not in "fiu":
                raise ValueError(f"X[{i}] must hold numbers, got dtype {a.dtype}")
            seqs.append(a)
        features = seqs[0].shape[1]
        for i, a in enumerate(seqs):
            if a.shape[1] != features:
                raise ValueError(f"X[{i}] has {a.shape[1]} features per step, X[0] has {features}")
            if a.shape[0] == 0:
                raise ValueError(f"X[{i}] has no steps")
        if lengths is not None:
            raise ValueError("lengths are given by the list's arrays: pass lengths=None")
        values = np.concatenate([np.ascontiguousarray(a, dtype=np.float32).ravel() for a in seqs])
        return values, [a.shape[0] for a in seqs], features
    a = np.asarray(X)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"X must hold numbers (float32 or float64), got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"X must be (N, T, F), (N, T) or a list of (T_i, F) arrays, got shape {a.shape}")
    n, t, features = a.shape
    if n == 0 or t == 0 or features == 0:
        raise ValueError(f"X must have sequences, steps and features, got shape {a.shape}")
    if lengths is None:
        # Trailing steps that are all NaN are padding.
        present = ~np.all(np.isnan(a), axis=2) if a.dtype.kind == "f" else np.ones((n, t), bool)
        lengths = [int(np.flatnonzero(row)[-1]) + 1 if row.any() else 0 for row in present]
    else:
        lengths = [int(v) for v in np.asarray(lengths).ravel()]
        if len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} sequences")
        if any(v < 1 or v > t for v in lengths):
            raise ValueError(f"every length must be between 1 and T = {t}")
    for i, v in enumerate(lengths):
        if v == 0:
            raise ValueError(f"sequence {i} has no steps (all NaN)")
    values = np.concatenate([np.ascontiguousarray(a[i, :v], dtype=np.float32).ravel() for i, v in enumerate(lengths)])
    return values, lengths, features


class SequenceModel(_Base):
    """An RNN/LSTM/GRU that reads whole sequences and predicts a class or a value for each.

    The keywords are ``bptt fit``'s flags, with its defaults; a model fitted here with a seed is
    the CLI's model for the same data and seed, bit for bit. ``fit`` releases the GIL;
    ``callback(step, metrics)`` runs after every update (returning False stops); Ctrl-C raises
    ``KeyboardInterrupt``. With validation data (``X_valid`` or ``valid_fraction``), the weights
    of the epoch with the best validation loss are kept.
    """

    def __init__(self, task="classify", cell="gru", hidden=256, layers=1, bidirectional=False, proj_size=0,
                 layer_norm=False, zoneout_h=0.0, zoneout_c=0.0, pool="last+mean", patch="auto",
                 epochs="auto", batch=8, group_by_length=False, optimizer="adam", lr=3e-3, weight_decay=None, lr_schedule="cosine",
                 clip_norm=5.0, dropout=0.3, class_weight=None, valid_fraction=0.0, patience=0, seed=1,
                 threads=None, callback=None):
        self.task = task
        self.cell = cell
        self.hidden = hidden
        self.layers = layers
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.layer_norm = layer_norm
        self.zoneout_h = zoneout_h
        self.zoneout_c = zoneout_c
        self.pool = pool
        self.patch = patch
        self.epochs = epochs
        self.batch = batch
        self.group_by_length = group_by_length
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.clip_norm = clip_norm
        self.dropout = dropout
        self.class_weight = class_weight
        self.valid_fraction = valid_fraction
        self.patience = patience
        self.seed = seed
        self.threads = threads
        self.callback = callback

    # scikit-learn's protocol (also without scikit-learn installed).
    def get_params(self, deep=True):
        return {k: getattr(self, k) for k in _PARAMS}

    def set_params(self, **params):
        for k, v in params.items():
            if k not in _PARAMS:
                raise ValueError(f"unknown parameter {k!r}: SequenceModel takes {', '.join(_PARAMS)}")
            setattr(self, k, v)
        return self

    @property
    def _estimator_type(self):
        return "classifier" if self.task == "classify" else "regressor"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.estimator_type = self._estimator_type
        if self.task == "classify":
            from sklearn.utils import ClassifierTags

            tags.classifier_tags = ClassifierTags()
        else:
            from sklearn.utils import RegressorTags

            tags.regressor_tags = RegressorTags()
        tags.input_tags.allow_nan = True
        tags.input_tags.three_d_array = True
        return tags

    def _config(self):
        if self.task not in ("classify", "regress"):
            raise ValueError(f"task must be 'classify' or 'regress', got {self.task!r}")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be None or 'balanced', got {self.class_weight!r}")
        patch = 0 if self.patch == "auto" else self.patch
        if not isinstance(patch, (int, np.integer)) or patch < 0:
            raise ValueError(f"patch must be 'auto' or a whole number >= 1, got {self.patch!r}")
        epochs = None if self.epochs == "auto" else self.epochs
        if epochs is not None and (not isinstance(epochs, (int, np.integer)) or epochs < 1):
            raise ValueError(f"epochs must be 'auto' or a whole number >= 1, got {self.epochs!r}")
        return json.dumps({
            "task": self.task, "cell": self.cell, "hidden": int(self.hidden), "layers": int(self.layers),
            "bidirectional": bool(self.bidirectional), "proj_size": int(self.proj_size),
            "layer_norm": bool(self.layer_norm),
            "zoneout_h": float(self.zoneout_h), "zoneout_c": float(self.zoneout_c),
            "pool": self.pool, "patch": int(patch), "epochs": None if epochs is None else int(epochs),
            "batch": int(self.batch), "group_by_length": bool(self.group_by_length),
            "optimizer": self.optimizer, "lr": float(self.lr),
            "weight_decay": None if self.weight_decay is None else float(self.weight_decay),
            "lr_schedule": self.lr_schedule, "clip_norm": float(self.clip_norm), "dropout": float(self.dropout),
            "balanced": self.class_weight == "balanced", "valid_fraction": float(self.valid_fraction),
            "patience": int(self.patience), "seed": int(self.seed), "max_bad_steps": 10,
        })

    def _labels(self, y, n, fitting):
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != n:
            raise ValueError(f"y must hold one label per sequence ({n}), got shape {y.shape}")
        if self.task == "regress":
            if y.dtype.kind not in "fiu":
                raise ValueError(f"y must hold numbers for task='regress', got dtype {y.dtype}")
            return None, None, [float(v) for v in y]
        if fitting:
            self.classes_ = np.unique(y)
        ids = np.searchsorted(self.classes_, y)
        ids = np.clip(ids, 0, len(self.classes_) - 1)
        unseen = self.classes_[ids] != y
        if unseen.any():
            raise ValueError(f"y holds class {y[unseen][0]!r}, which the model was not trained on")
        return [str(c) for c in self.classes_], [int(i) for i in ids], None

    def fit(self, X, y, lengths=None, X_valid=None, y_valid=None, lengths_valid=None):
        """Trains on sequences ``X`` with labels ``y``; returns self."""
        config = self._config()
        values, lens, features = _flatten(X, lengths)
        names, ids, targets = self._labels(y, len(lens), fitting=True)
        valid = None
        if X_valid is not None:
            if y_valid is None:
                raise ValueError("X_valid needs y_valid")
            v, vl, vf = _flatten(X_valid, lengths_valid)
            if vf != features:
                raise ValueError(f"X_valid has {vf} features per step, X has {features}")
            _, vids, vt = self._labels(y_valid, len(vl), fitting=False)
            valid = (v, vl, vids, vt)
        self.core_ = _core.SeqCore.fit(config, values, lens, features, names, ids, targets, valid=valid,
                                       threads=self.threads, callback=self.callback)
        self.n_features_in_ = features
        return self

    def _check_fitted(self):
        if not hasattr(self, "core_"):
            raise ValueError("this SequenceModel is not fitted yet: call fit first")

    def _raw(self, X, lengths):
        self._check_fitted()
        values, lens, features = _flatten(X, lengths)
        if features != self.n_features_in_:
            raise ValueError(f"X has {features} features per step but the model was trained on {self.n_features_in_}")
        return self.core_.predict(values, lens, features, threads=self.threads)

    def predict_proba(self, X, lengths=None):
        """(N, classes) probabilities, columns in ``classes_`` order (classification)."""
        if self.task != "classify":
            raise ValueError("predict_proba needs task='classify'")
        return self._raw(X, lengths)

    def predict(self, X, lengths=None):
        """The most probable class (classification) or the value (regression) per sequence."""
        out = self._raw(X, lengths)
        if self.task == "classify":
            return self.classes_[np.argmax(out, axis=1)]
        return out[:, 0].astype(np.float64)

    def score(self, X, y, lengths=None):
        """Accuracy (classification) or R² (regression), as scikit-learn's estimators score."""
        pred = self.predict(X, lengths)
        y = np.asarray(y)
        if self.task == "classify":
            return float(np.mean(pred == y))
        y = y.astype(np.float64)
        ss = float(np.sum((y - y.mean()) ** 2))
        return 1.0 - float(np.sum((y - pred) ** 2)) / ss if ss > 0 else 0.0

    @property
    def history_(self):
        """One dict per update of the last fit (``val_loss``/``val_accuracy`` at epoch ends)."""
        self._check_fitted()
        return self.core_.history

    def state_dict(self):
        """The weights as float32 arrays with PyTorch names (``rnn.*``, ``head.*``)."""
        self._check_fitted()
        return self.core_.state_dict()

    def save(self, path):
        """Writes the model file of ``bptt fit`` (``bptt predict --model`` reads it)."""
        self._check_fitted()
        self.core_.save(str(path))

    @classmethod
    def load(cls, path):
        """A fitted model from a ``bptt fit`` or ``save`` file (class names come back as strings)."""
        core = _core.SeqCore.load(str(path))
        spec = json.loads(core.spec)
        m = cls(task=spec["task"], cell=spec["cell"], hidden=spec["hidden_size"], layers=spec["num_layers"],
                bidirectional=spec.get("bidirectional", False), proj_size=spec.get("proj_size", 0),
                layer_norm=spec.get("layer_norm", False), zoneout_h=spec.get("zoneout_h", 0.0),
                zoneout_c=spec.get("zoneout_c", 0.0), pool=spec["pool"], patch=spec["patch"])
        m.core_ = core
        m.n_features_in_ = spec["features"]
        if spec["task"] == "classify":
            m.classes_ = np.array(spec["classes"])
        return m


def read_sequences(path, regress=False):
    """Reads a ``.ts`` or long-form ``.csv`` file as ``bptt fit`` does: ``(X, y)`` with ``X`` a
    list of (T_i, F) float32 arrays and ``y`` an array of class names (strings) or target values
    (None if the file has no labels)."""
    values, lengths, features, labels = _core.read_sequences(str(path), regress)
    ends = np.cumsum([0] + [n * features for n in lengths])
    X = [values[ends[i]:ends[i + 1]].reshape(-1, features) for i in range(len(lengths))]
    if labels is None:
        return X, None
    if labels[0] == "classes":
        names = np.array(labels[1])
        return X, names[np.asarray(labels[2], dtype=np.int64)]
    return X, np.asarray(labels[1], dtype=np.float64)
