from typing import Any, Callable, Optional, Union

import numpy as np
import numpy.typing as npt

__version__: str

class CharLM:
    @staticmethod
    def train(
        text: str,
        *,
        cell: str = "lstm",
        embedding_dim: int = 64,
        hidden: int = 256,
        layers: int = 2,
        seq_len: int = 100,
        batch: Optional[int] = None,
        tbptt: Optional[str] = None,
        checkpoint_every: int = 0,
        optimizer: str = "adam",
        lr: float = 2e-3,
        momentum: Optional[float] = None,
        weight_decay: Optional[float] = None,
        lr_schedule: str = "constant",
        warmup: int = 0,
        clip_norm: float = 5.0,
        clip_value: Optional[float] = None,
        steps: Optional[int] = None,
        epochs: Optional[int] = None,
        val_fraction: float = 0.1,
        seed: int = 1337,
        max_bad_steps: int = 10,
        abort_loss_factor: Optional[float] = None,
        dropout: float = 0.0,
        locked_dropout: float = 0.0,
        weight_drop: float = 0.0,
        online: Optional[str] = None,
        precision: str = "f32",
        eval_every: int = 200,
        threads: Optional[int] = None,
        callback: Optional[Callable[[int, dict], Optional[bool]]] = None,
    ) -> CharLM: ...
    @staticmethod
    def load(path: str) -> CharLM: ...
    def save(self, path: str) -> None: ...
    def sample(
        self,
        prime: str = "",
        length: int = 500,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        seed: int = 0,
        threads: Optional[int] = 1,
    ) -> str: ...
    def evaluate(self, text: str, threads: Optional[int] = None) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, npt.NDArray[np.float32]]: ...
    def gradient_flow(self, text: str, seq_len: int = 100) -> tuple[npt.NDArray[np.float64], float]: ...
    @property
    def history(self) -> list[dict]: ...
    @property
    def vocab(self) -> str: ...
    @property
    def spec(self) -> tuple[str, int, int, int]: ...

def gradient(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    cell: str = "lstm",
    hidden: int = 16,
    layers: int = 1,
    loss: str = "mse",
    output: Optional[int] = None,
    params: Optional[dict[str, npt.ArrayLike]] = None,
    seed: int = 0,
) -> tuple[float, dict[str, npt.NDArray[np.float64]], dict[str, npt.NDArray[np.float64]]]: ...
def diagnose(model: CharLM, text: str, seq_len: int = 100) -> dict: ...
def load_state_dict(path: str) -> dict[str, npt.NDArray[np.float32]]: ...

class SequenceModel:
    """``bptt fit`` with scikit-learn's conventions (see ``bptt.sequence``)."""

    classes_: npt.NDArray[Any]
    n_features_in_: int
    def __init__(
        self,
        task: str = "classify",
        cell: str = "gru",
        hidden: int = 256,
        layers: int = 1,
        bidirectional: bool = False,
        proj_size: int = 0,
        layer_norm: bool = False,
        zoneout_h: float = 0.0,
        zoneout_c: float = 0.0,
        pool: str = "last+mean",
        patch: Union[str, int] = "auto",
        epochs: Union[str, int] = "auto",
        batch: int = 8,
        group_by_length: bool = False,
        optimizer: str = "adam",
        lr: float = 3e-3,
        weight_decay: Optional[float] = None,
        lr_schedule: str = "cosine",
        clip_norm: float = 5.0,
        dropout: float = 0.3,
        class_weight: Optional[str] = None,
        valid_fraction: float = 0.0,
        patience: int = 0,
        seed: int = 1,
        threads: Optional[int] = None,
        callback: Optional[Callable[[int, dict], Any]] = None,
    ) -> None: ...
    def get_params(self, deep: bool = True) -> dict[str, Any]: ...
    def set_params(self, **params: Any) -> SequenceModel: ...
    def fit(
        self,
        X: Any,
        y: npt.ArrayLike,
        lengths: Optional[npt.ArrayLike] = None,
        X_valid: Any = None,
        y_valid: Optional[npt.ArrayLike] = None,
        lengths_valid: Optional[npt.ArrayLike] = None,
    ) -> SequenceModel: ...
    def predict(self, X: Any, lengths: Optional[npt.ArrayLike] = None) -> npt.NDArray[Any]: ...
    def predict_proba(self, X: Any, lengths: Optional[npt.ArrayLike] = None) -> npt.NDArray[np.float32]: ...
    def score(self, X: Any, y: npt.ArrayLike, lengths: Optional[npt.ArrayLike] = None) -> float: ...
    def state_dict(self) -> dict[str, npt.NDArray[np.float32]]: ...
    def save(self, path: str) -> None: ...
    @classmethod
    def load(cls, path: str) -> SequenceModel: ...
    @property
    def history_(self) -> list[dict]: ...

def read_sequences(path: str, regress: bool = False) -> tuple[list[npt.NDArray[np.float32]], Optional[npt.NDArray[Any]]]: ...
