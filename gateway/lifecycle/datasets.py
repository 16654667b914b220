"""Labelled evaluation datasets, read from a `.npz` or a CSV file into float features and
integer labels.

An evaluation is only comparable with another when both ran on the same bytes, so a dataset is
identified by the sha256 of its file, and the bytes are kept (in the artifact store) so that a
later run, e.g. of a quantized copy, can use exactly the same data without the file. Anything
that would make the metrics meaningless (missing labels, ragged rows, NaN, fractional labels)
is refused with a message naming the row or array, before anything runs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from registry.errors import InvalidInput, PayloadTooLarge

LABEL_COLUMN = "label"
FEATURES_KEY = "X"
LABELS_KEY = "y"
MAX_NAME = 256


@dataclass(frozen=True)
class Dataset:
    """A dataset as evaluated: its identity (name, sha256 of the file) and its arrays."""

    name: str
    sha256: str
    raw: bytes
    X: npt.NDArray[np.float32]  # [rows, features]
    y: npt.NDArray[np.int64]  # [rows]

    @property
    def rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def features(self) -> int:
        return int(self.X.shape[1])


def load_dataset(path: str | Path, max_bytes: int, input_name: str | None = None) -> Dataset:
    """Read a dataset file; `input_name` lets a `.npz` name its features after the model's
    input instead of `X`."""
    file = Path(path)
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise InvalidInput(f"cannot read dataset {file}: {exc.strerror}") from None
    if not file.is_file():
        raise InvalidInput(f"dataset {file} is not a file")
    if size > max_bytes:
        raise PayloadTooLarge(f"dataset {file} is {size} bytes; the limit "
                              f"(GATEWAY_MAX_MODEL_BYTES) is {max_bytes}")
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read dataset {file}: {exc.strerror}") from None
    return parse_dataset(file.name, raw, max_bytes, input_name)


def parse_dataset(name: str, raw: bytes, max_bytes: int,
                  input_name: str | None = None) -> Dataset:
    """The dataset in `raw`: a zip (what `np.savez` writes) is read as `.npz`, anything else as
    CSV, whatever the name says, so bytes read back from the store need no file name."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"dataset {name} is {len(raw)} bytes; the limit "
                              f"(GATEWAY_MAX_MODEL_BYTES) is {max_bytes}")
    if not raw:
        raise InvalidInput(f"dataset {name} is empty")
    if raw[:4] == b"PK\x03\x04":
        X, y = _npz_arrays(name, raw, input_name)
    else:
        X, y = _csv_arrays(name, raw)
    return Dataset(name=name[:MAX_NAME], sha256=hashlib.sha256(raw).hexdigest(), raw=raw,
                   X=X, y=y)


def _npz_arrays(name: str, raw: bytes, input_name: str | None
                ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"dataset {name} is not a readable .npz file: {exc}") from None
    with archive:
        keys = list(archive.files)
        feature_key = next((k for k in (FEATURES_KEY, input_name) if k and k in keys), None)
        if feature_key is None:
            wanted = FEATURES_KEY + (f" or {input_name!r}" if input_name else "")
            raise InvalidInput(f"dataset {name} has no features array {wanted}; it has {keys}")
        if LABELS_KEY not in keys:
            raise InvalidInput(f"dataset {name} has no labels: an array named {LABELS_KEY!r} "
                               f"is needed beside the features; it has {keys}")
        try:
            features = archive[feature_key]
            labels = archive[LABELS_KEY]
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            # object arrays need pickle, which is refused: it runs code from the file
            raise InvalidInput(f"dataset {name}: cannot read its arrays ({exc})") from None
    return _check_features(name, features), _check_labels(name, labels, features.shape[0])


def _check_features(name: str, features: np.ndarray) -> npt.NDArray[np.float32]:
    if features.ndim != 2:
        raise InvalidInput(f"dataset {name}: features must be 2-D [rows, features], got shape "
                           f"{list(features.shape)}")
    if features.dtype.kind not in "iuf":
        raise InvalidInput(f"dataset {name}: features must be numbers, got dtype "
                           f"{features.dtype}")
    if features.shape[0] == 0:
        raise InvalidInput(f"dataset {name} has 0 rows")
    if features.shape[1] == 0:
        raise InvalidInput(f"dataset {name} has no feature columns")
    values = features.astype(np.float32)
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        row, column = (int(i) for i in bad[0])
        raise InvalidInput(f"dataset {name}: feature {column} of row {row} is not a finite "
                           f"number ({features[row, column]!r}) or does not fit in float32")
    return np.ascontiguousarray(values)


def _check_labels(name: str, labels: np.ndarray, rows: int) -> npt.NDArray[np.int64]:
    if labels.ndim != 1 or labels.shape[0] != rows:
        raise InvalidInput(f"dataset {name}: labels must be 1-D with one per row ({rows}), got "
                           f"shape {list(labels.shape)}")
    if labels.dtype.kind in "iu":
        return labels.astype(np.int64)
    if labels.dtype.kind != "f":
        raise InvalidInput(f"dataset {name}: labels must be integers, got dtype {labels.dtype}")
    integral = np.isfinite(labels) & (labels == np.round(labels)) & (np.abs(labels) < 2**53)
    if not integral.all():
        row = int(np.argmin(integral))
        raise InvalidInput(f"dataset {name}: the label of row {row} ({labels[row]!r}) is not an "
                           "integer")
    return labels.astype(np.int64)


def _csv_arrays(name: str, raw: bytes
                ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"dataset {name} is neither a .npz file nor UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise InvalidInput(f"dataset {name} is empty: a CSV needs a header row")
    columns = [c.strip() for c in header]
    if columns.count(LABEL_COLUMN) != 1:
        raise InvalidInput(f"dataset {name} has no labels: its header needs exactly one "
                           f"{LABEL_COLUMN!r} column, got {columns[:10]}")
    label_at = columns.index(LABEL_COLUMN)
    if len(columns) < 2:
        raise InvalidInput(f"dataset {name} has no feature columns beside {LABEL_COLUMN!r}")
    features: list[list[float]] = []
    labels: list[int] = []
    for cells in reader:
        line = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(columns):
            raise InvalidInput(f"dataset {name} line {line} has {len(cells)} values; the header "
                               f"has {len(columns)} columns")
        row: list[float] = []
        for index, cell in enumerate(cells):
            value = _csv_number(name, line, columns[index], cell)
            if index == label_at:
                if not value.is_integer() or abs(value) >= 2**53:
                    raise InvalidInput(f"dataset {name} line {line}: label {cell.strip()!r} is "
                                       "not an integer")
                labels.append(int(value))
            else:
                row.append(value)
        features.append(row)
    if not features:
        raise InvalidInput(f"dataset {name} has 0 rows")
    return (_check_features(name, np.asarray(features, dtype=np.float64)),
            np.asarray(labels, dtype=np.int64))


def _csv_number(name: str, line: int, column: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise InvalidInput(f"dataset {name} line {line}, column {column!r}: {cell.strip()!r} is "
                           "not a number") from None
    if not math.isfinite(value):
        raise InvalidInput(f"dataset {name} line {line}, column {column!r}: {cell.strip()!r} is "
                           "not a finite number")
    return value
