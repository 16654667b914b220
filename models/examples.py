"""Train small digit classifiers and export them to ONNX, byte-for-byte reproducibly.

The gateway needs real models to register, route between, shadow and compare, and the comparisons
only mean something if the models really differ. So this module builds three classifiers on
scikit-learn's bundled digits data (8x8 images, 1797 rows, no download) that trade accuracy
against inference cost:

* ``logreg`` - a deliberately under-trained logistic regression: the weak, cheap baseline.
* ``forest`` - a 100-tree random forest: the most accurate and clearly the slowest per request.
* ``mlp``    - a one-hidden-layer perceptron: nearly as accurate as the forest, as cheap as
  ``logreg`` (at batch size 1 both are dominated by onnxruntime's per-call overhead).

Lineage (``ExampleModel.parent``): ``logreg`` is the first version; ``forest`` and ``mlp`` are
both challengers proposed to replace it, so both name ``logreg`` as their parent. It records
"which version this one was meant to supersede", not shared weights.

Every seed is fixed, training is single-threaded where sklearn allows a choice, and the ONNX
target opsets are pinned, so building twice - into any folder, in any process on the same
platform and library versions - writes identical ``.onnx`` bytes. The held-out split is written
as a reproducible ``.npz`` too (fixed zip timestamps), so its sha256 is stable as well.

Run ``python -m models.examples OUT_DIR`` to build and print a summary table.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

N_FEATURES: Final = 64
N_CLASSES: Final = 10
INPUT_NAME: Final = "input"
OUTPUT_NAMES: Final = ("label", "probabilities")
TEST_FILE: Final = "digits_test.npz"

# Pinned so the exported graph does not change with the installed onnx package's defaults.
# skl2onnx may still declare a *lower* ai.onnx.ml version when its operators allow it.
TARGET_OPSET: Final = {"": 17, "ai.onnx.ml": 3}
SPLIT_SEED: Final = 0
TEST_SIZE: Final = 0.25
LATENCY_RUNS: Final = 200
LATENCY_WARMUP: Final = 20
# Fixed zip member timestamp (the earliest a zip can store) so the .npz bytes are reproducible.
_ZIP_EPOCH: Final = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ExampleModel:
    """One exported example model and what is known about it offline."""

    name: str  # "logreg" | "forest" | "mlp"; also the file stem
    path: Path  # the .onnx file written
    description: str  # one sentence
    params: dict[str, Any]  # training hyper-parameters, JSON-serialisable
    metrics: dict[str, float]  # {"accuracy", "latency_ms_batch1"} measured with onnxruntime
    parent: str | None  # the example this one was proposed to replace (see module docstring)


@dataclass(frozen=True)
class _Recipe:
    """How to build one example: kept as data so params and estimator cannot drift apart."""

    name: str
    description: str
    parent: str | None
    params: dict[str, Any]
    make: Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class _Split:
    X_train: FloatArray
    X_test: FloatArray
    y_train: IntArray
    y_test: IntArray


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digits() -> tuple[FloatArray, IntArray]:
    """All 1797 digits as little-endian float32 pixels (0..16) and int64 labels, read-only.

    float32 because that is the ONNX input type; the pixel values are small integers, so the
    cast is exact. Explicit little-endian so the dataset hash is the same on any platform.
    """
    X_raw, y_raw = load_digits(return_X_y=True)
    X = np.ascontiguousarray(X_raw, dtype="<f4")
    y = np.ascontiguousarray(y_raw, dtype="<i8")
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def _compute_dataset_info() -> dict[str, str]:
    """Identify the training data by content, so a changed sklearn copy of digits is noticed."""
    X, y = _digits()
    digest = hashlib.sha256(X.tobytes() + y.tobytes()).hexdigest()
    return {"name": "sklearn-digits", "version": f"{X.shape[0]}x{X.shape[1]}", "sha256": digest}


DATASET: Final[dict[str, str]] = _compute_dataset_info()


def dataset_info() -> dict[str, str]:
    """The DATASET dict (a copy, so callers cannot alter the module's record)."""
    return dict(DATASET)


def _split() -> _Split:
    """The fixed, stratified 75/25 split every example is trained and scored on."""
    X, y = _digits()
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    return _Split(
        X_train=np.ascontiguousarray(X_train),
        X_test=np.ascontiguousarray(X_test),
        y_train=np.ascontiguousarray(y_train),
        y_test=np.ascontiguousarray(y_test),
    )


def _npz_bytes(arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    """An uncompressed .npz like np.savez writes, but with fixed timestamps: reproducible bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def load_test_split(out_dir: Path) -> tuple[FloatArray, IntArray]:
    """Read digits_test.npz back, checking it is the [N, 64] float32 / [N] int64 pair we wrote."""
    path = Path(out_dir) / TEST_FILE
    with np.load(path, allow_pickle=False) as data:
        X = np.asarray(data["X"])
        y = np.asarray(data["y"])
    if X.dtype != np.float32 or X.ndim != 2 or X.shape[1] != N_FEATURES:
        raise ValueError(f"{path}: X is {X.dtype}{list(X.shape)}, expected float32[N, 64]")
    if y.dtype != np.int64 or y.shape != (X.shape[0],):
        raise ValueError(f"{path}: y is {y.dtype}{list(y.shape)}, expected int64[{X.shape[0]}]")
    return X, y


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _make_logreg(p: dict[str, Any]) -> Pipeline:
    """Scaling lives in the Pipeline so skl2onnx puts it in the graph: clients send raw pixels."""
    classifier = LogisticRegression(C=p["C"], solver=p["solver"], max_iter=p["max_iter"])
    return Pipeline([("scale", StandardScaler()), ("classify", classifier)])


def _make_forest(p: dict[str, Any]) -> RandomForestClassifier:
    """n_jobs=1: thread scheduling must not be able to influence the trees."""
    return RandomForestClassifier(
        n_estimators=p["n_estimators"],
        max_depth=p["max_depth"],
        random_state=p["random_state"],
        n_jobs=1,
    )


def _make_mlp(p: dict[str, Any]) -> MLPClassifier:
    return MLPClassifier(
        hidden_layer_sizes=tuple(p["hidden_layer_sizes"]),
        activation=p["activation"],
        solver=p["solver"],
        max_iter=p["max_iter"],
        random_state=p["random_state"],
    )


# Registration order: the baseline first, then its challengers.
_RECIPES: Final[tuple[_Recipe, ...]] = (
    _Recipe(
        name="logreg",
        description=(
            "Baseline: standardised pixels into a multinomial logistic regression deliberately "
            "stopped after 3 L-BFGS iterations, so it is cheap but visibly less accurate."
        ),
        parent=None,
        params={
            "estimator": "LogisticRegression",
            "preprocessing": "StandardScaler",
            "solver": "lbfgs",
            "C": 1.0,
            "max_iter": 3,
        },
        make=_make_logreg,
    ),
    _Recipe(
        name="forest",
        description=(
            "Challenger to logreg: a 100-tree random forest on raw pixels, the most accurate "
            "example and the slowest per request."
        ),
        parent="logreg",
        params={
            "estimator": "RandomForestClassifier",
            "n_estimators": 100,
            "max_depth": None,
            "random_state": 0,
        },
        make=_make_forest,
    ),
    _Recipe(
        name="mlp",
        description=(
            "Challenger to logreg: a 64-unit ReLU perceptron on raw pixels, close to the "
            "forest's accuracy at a fraction of its latency."
        ),
        parent="logreg",
        params={
            "estimator": "MLPClassifier",
            "hidden_layer_sizes": [64],
            "activation": "relu",
            "solver": "adam",
            "max_iter": 300,
            "random_state": 0,
        },
        make=_make_mlp,
    ),
)


def _fit(recipe: _Recipe, split: _Split) -> Any:
    """Train quietly: the baseline is under-trained on purpose, its ConvergenceWarning is noise."""
    estimator = recipe.make(recipe.params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        estimator.fit(split.X_train, split.y_train)
    return estimator


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _export(estimator: Any, recipe: _Recipe) -> bytes:
    """Convert to ONNX with a tensor-only signature: input[N,64] -> label[N], probabilities[N,10].

    zipmap=False because the default ZipMap output is a sequence of maps, which neither the
    gateway nor the V2 inference protocol can carry.
    """
    classifier = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    model = to_onnx(
        estimator,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        options={type(classifier): {"zipmap": False}},
        target_opset=dict(TARGET_OPSET),
    )
    _dedupe_opsets(model)
    _check_signature(model, recipe.name)
    model.doc_string = recipe.description
    _set_metadata(
        model,
        {
            "example_name": recipe.name,
            "dataset": DATASET["name"],
            "dataset_version": DATASET["version"],
            "dataset_sha256": DATASET["sha256"],
        },
    )
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def _dedupe_opsets(model: onnx.ModelProto) -> None:
    """skl2onnx can import the same domain twice (seen for Pipelines); keep one entry per domain.

    onnx.checker tolerates the duplicate, but tools that map domain -> version need not.
    """
    seen: dict[str, int] = {}
    for entry in model.opset_import:
        seen[entry.domain] = max(seen.get(entry.domain, 0), entry.version)
    del model.opset_import[:]
    # sorted: skl2onnx's own order varies between processes (it comes from a set of strings,
    # whose iteration order follows the per-process hash seed), and with it the file's sha256.
    for domain, version in sorted(seen.items()):
        model.opset_import.add(domain=domain, version=version)


def _check_signature(model: onnx.ModelProto, name: str) -> None:
    """Fail the build loudly if a skl2onnx upgrade changes the names the gateway relies on."""
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
        raise RuntimeError(
            f"{name}: exported signature {inputs} -> {outputs}, "
            f"expected [{INPUT_NAME!r}] -> {list(OUTPUT_NAMES)}"
        )


def _set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Record provenance inside the file itself, so a copied .onnx still says where it came from."""
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + os.replace: readers never see a partial file."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; the server may run as another user
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


# --------------------------------------------------------------------------------------------
# Offline evaluation (with onnxruntime, i.e. what the gateway will actually serve)
# --------------------------------------------------------------------------------------------


def _session(path: Path) -> ort.InferenceSession:
    """A single-threaded session, like one gateway worker per core, so latencies are comparable."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _accuracy(session: ort.InferenceSession, X: FloatArray, y: IntArray) -> float:
    """Accuracy of the exported graph itself, not of the sklearn object it came from."""
    labels = session.run([OUTPUT_NAMES[0]], {INPUT_NAME: X})[0]
    return float(np.mean(np.asarray(labels) == y))


def _latency_ms_batch1(session: ort.InferenceSession, X: FloatArray) -> float:
    """Median wall time of a one-row request, cycling through test rows after a short warm-up."""
    rows = [X[i % len(X) : i % len(X) + 1] for i in range(LATENCY_WARMUP + LATENCY_RUNS)]
    for row in rows[:LATENCY_WARMUP]:
        session.run(None, {INPUT_NAME: row})
    timings: list[float] = []
    for row in rows[LATENCY_WARMUP:]:
        start = time.perf_counter_ns()
        session.run(None, {INPUT_NAME: row})
        timings.append((time.perf_counter_ns() - start) / 1e6)
    return float(statistics.median(timings))


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def build_examples(out_dir: Path) -> list[ExampleModel]:
    """Train, export, write out_dir/{logreg,forest,mlp}.onnx and out_dir/digits_test.npz.

    Returns the models in registration order (logreg, forest, mlp). Safe to re-run over an
    existing folder: every file is rewritten atomically with the same bytes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = _split()
    _write_atomic(out_dir / TEST_FILE, _npz_bytes({"X": split.X_test, "y": split.y_test}))
    return [_build_one(recipe, split, out_dir) for recipe in _RECIPES]


# The demo's rollback scenario (`gateway demo --scenario rollback`): a retrained mlp whose
# training labels had one pair of digits swapped, so it is confidently wrong on about a fifth
# of inputs (those digits) and right on the rest, as a real data-pipeline bug would leave it.
FLAWED_SWAPS: Final[dict[int, int]] = {3: 8, 8: 3}
FLAWED: Final[_Recipe] = _Recipe(
    name="mlp_flawed",
    description=(
        "A retrained mlp whose training labels had 3 and 8 swapped by a pipeline bug: "
        "wrong on about a fifth of inputs. The demo's rollback scenario rolls it out."
    ),
    parent="mlp",
    params={**_RECIPES[2].params, "label_swaps": {str(k): v for k, v in FLAWED_SWAPS.items()}},
    make=_make_mlp,
)


def build_flawed(out_dir: Path) -> ExampleModel:
    """Write out_dir/mlp_flawed.onnx (see FLAWED); deterministic like the others."""
    split = _split()
    swapped = np.array([FLAWED_SWAPS.get(int(label), int(label)) for label in split.y_train],
                       dtype="<i8")
    trained_on = _Split(split.X_train, split.X_test, swapped, split.y_test)
    return _build_one(FLAWED, split, Path(out_dir), fit_split=trained_on)


def _build_one(recipe: _Recipe, split: _Split, out_dir: Path,
               fit_split: _Split | None = None) -> ExampleModel:
    path = out_dir / f"{recipe.name}.onnx"
    _write_atomic(path, _export(_fit(recipe, fit_split or split), recipe))
    session = _session(path)
    metrics = {
        "accuracy": _accuracy(session, split.X_test, split.y_test),
        "latency_ms_batch1": _latency_ms_batch1(session, split.X_test),
    }
    return ExampleModel(
        name=recipe.name,
        path=path,
        description=recipe.description,
        params=dict(recipe.params),
        metrics=metrics,
        parent=recipe.parent,
    )


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _format_table(models: Sequence[ExampleModel]) -> str:
    header = f"{'name':<8} {'parent':<8} {'accuracy':>8} {'latency_ms':>10}  sha256"
    lines = [header, "-" * len(header)]
    for m in models:
        lines.append(
            f"{m.name:<8} {m.parent or '-':<8} {m.metrics['accuracy']:>8.4f} "
            f"{m.metrics['latency_ms_batch1']:>10.4f}  {_sha256_file(m.path)}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: build the examples into OUT_DIR and print what was built."""
    parser = argparse.ArgumentParser(
        prog="python -m models.examples", description="Build the example ONNX models."
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the .onnx and .npz files to")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    models = build_examples(args.out_dir)
    elapsed = time.perf_counter() - start
    print(_format_table(models))
    info = dataset_info()
    print(f"\ndataset {info['name']} {info['version']} sha256={info['sha256']}")
    print(f"test split {args.out_dir / TEST_FILE} sha256={_sha256_file(args.out_dir / TEST_FILE)}")
    print(f"built {len(models)} models in {elapsed:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
