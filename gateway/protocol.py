"""Open Inference Protocol (V2) and V1 `instances` bodies: parse into a float matrix, render back.

Parsing is where bad input is caught, so every refusal here names the input and the problem.
Supports the JSON form and the binary tensor extension (`Inference-Header-Content-Length`:
a JSON header followed by raw little-endian tensors) that Triton's clients use.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.errors import InvalidInput

__all__ = [
    "InferRequest",
    "encode_json",
    "new_request_id",
    "parse_infer",
    "parse_v1",
    "render_infer",
    "render_v1",
    "request_id",
]

NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_MAX_ID = 256
# An id travels back in the x-request-id header: printable ASCII, no leading or trailing space.
_ID_RE = re.compile(r"[!-~](?:[ -~]{0,254}[!-~])?")
# Beyond this a feature value is a unit or encoding mistake, and models overflow on it.
MAX_ABS_VALUE = 1e100
_RANGE = f"values must be finite and within ±{MAX_ABS_VALUE:g} (infinity is not accepted)"


@dataclass(slots=True)
class InferRequest:
    id: str
    X: np.ndarray
    outputs: list[tuple[str, bool]] | None
    binary_output: bool


def encode_json(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _load_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from None


def new_request_id() -> str:
    """32 random hex digits, like uuid4().hex but without building a UUID (2 µs -> 1 µs)."""
    return os.urandom(16).hex()


def request_id(given: Any, what: str = "id") -> str:
    """The caller's request id if it is one we can echo in a header and join feedback on
    (feedback ids have the same limit), a new one if none was given."""
    if given is None:
        return new_request_id()
    if not isinstance(given, str) or not _ID_RE.fullmatch(given):
        raise InvalidInput(
            f"{what} must be 1 to {_MAX_ID} printable ASCII characters "
            "(it is echoed in x-request-id)"
        )
    return given


def _request_id(body: Mapping[str, Any]) -> str:
    return request_id(body.get("id"))


def _shape(name: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw or len(raw) > 8:
        raise InvalidInput(f"input {name!r}: shape must be a list of 1 to 8 dimensions")
    for d in raw:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0 or d > 1 << 31:
            raise InvalidInput(f"input {name!r}: shape {raw} must hold non-negative integers")
    return tuple(raw)


def _tensor(spec: Any, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(spec, dict):
        raise InvalidInput("each input must be an object with name, shape, datatype and data")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("an input lacks its name")
    shape = _shape(name, spec.get("shape"))
    datatype = spec.get("datatype")
    if datatype == "BYTES":
        raise InvalidInput(
            f"input {name!r}: datatype BYTES (strings) is not accepted; send numbers"
        )
    dtype = NUMERIC_DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(
            f"input {name!r}: unknown datatype {datatype!r} (use one of {', '.join(NUMERIC_DTYPES)})"
        )
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"input {name!r}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size} does not match shape {list(shape)} "
                f"of {datatype} ({count * dtype.itemsize} bytes)"
            )
        if offset + size > len(binary):
            raise InvalidInput(f"input {name!r}: binary data is shorter than binary_data_size")
        arr = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
        return name, arr, offset + size
    if "data" not in spec:
        raise InvalidInput(f"input {name!r}: no data (and no binary_data_size)")
    data = spec["data"]
    if not isinstance(data, list):
        data = [data]
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidInput(f"input {name!r}: data is ragged (rows of different lengths)") from None
    if arr.dtype.kind not in "biuf":
        what = "strings" if arr.dtype.kind in "US" else "values that are not numbers"
        raise InvalidInput(f"input {name!r}: data holds {what}; {datatype} needs numbers")
    if arr.size != count:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {count} values, data holds {arr.size}"
        )
    if datatype != "BOOL" and arr.dtype.kind == "b":
        raise InvalidInput(f"input {name!r}: data holds booleans; {datatype} needs numbers")
    return name, arr.reshape(shape), offset


def _to_matrix(tensors: list[tuple[str, np.ndarray]], features: Sequence[str]) -> np.ndarray:
    n_features = len(features)
    if len(tensors) == 1 and tensors[0][1].ndim == 2:
        name, arr = tensors[0]
        if arr.shape[1] != n_features:
            raise InvalidInput(
                f"input {name!r}: has {arr.shape[1]} features per row, the model takes {n_features}"
            )
        return arr.astype(np.float64, copy=False)
    by_name = dict(tensors)
    if len(by_name) != len(tensors):
        raise InvalidInput("an input name appears twice")
    unknown = [n for n in by_name if n not in features]
    if unknown:
        if len(tensors) == 1:
            name, arr = tensors[0]
            raise InvalidInput(
                f"input {name!r}: shape {list(arr.shape)} must be [rows, {n_features}]"
            )
        raise InvalidInput(
            f"unknown inputs {unknown}: send one input of shape [rows, {n_features}] "
            f"or one input per feature ({', '.join(features[:5])}{', ...' if n_features > 5 else ''})"
        )
    missing = [f for f in features if f not in by_name]
    if missing:
        raise InvalidInput(f"missing inputs for features {missing}")
    columns = []
    rows = None
    for f in features:
        col = by_name[f]
        if col.ndim == 2 and col.shape[1] == 1:
            col = col[:, 0]
        if col.ndim != 1:
            raise InvalidInput(f"input {f!r}: a per-feature input has shape [rows]")
        if rows is not None and col.shape[0] != rows:
            raise InvalidInput(f"input {f!r}: has {col.shape[0]} rows, the others {rows}")
        rows = col.shape[0]
        columns.append(col)
    return np.column_stack(columns).astype(np.float64, copy=False)


def _check_rows(X: np.ndarray, max_rows: int, allow_nan: bool) -> None:
    if X.shape[0] == 0:
        raise InvalidInput("the request holds no rows")
    if X.shape[0] > max_rows:
        raise InvalidInput(f"{X.shape[0]} rows is more than max_batch_rows ({max_rows})")
    # One reduction checks both: NaN compares false, so it fails the bound like infinity does.
    if allow_nan:
        if np.any(np.abs(X) > MAX_ABS_VALUE):
            bad = np.argwhere(np.abs(X) > MAX_ABS_VALUE)[0]
            raise InvalidInput(f"row {int(bad[0])}, feature {int(bad[1])}: {_RANGE}")
    elif not np.abs(X).max() <= MAX_ABS_VALUE:
        bad = np.argwhere(~(np.abs(X) <= MAX_ABS_VALUE))[0]
        value = X[bad[0], bad[1]]
        what = "NaN is not accepted by this model" if value != value else _RANGE
        raise InvalidInput(f"row {int(bad[0])}, feature {int(bad[1])}: {what}")


def parse_infer(
    raw: bytes,
    header_length: int | None,
    features: Sequence[str],
    *,
    max_rows: int,
    allow_nan: bool = False,
    output_names: Sequence[str] = ("predict", "predict_proba"),
) -> InferRequest:
    if header_length is not None:
        if header_length < 0 or header_length > len(raw):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} is outside the body ({len(raw)} bytes)"
            )
        body = _load_json(raw[:header_length])
        binary = memoryview(raw)[header_length:]
    else:
        body = _load_json(raw)
        binary = memoryview(b"")
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object with an 'inputs' list")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    if len(inputs) > max(len(features), 1):
        raise InvalidInput(
            f"{len(inputs)} inputs is more than the model's {len(features)} features"
        )
    tensors = []
    offset = 0
    for spec in inputs:
        name, arr, offset = _tensor(spec, binary, offset)
        tensors.append((name, arr))
    X = _to_matrix(tensors, features)
    _check_rows(X, max_rows, allow_nan)
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object")
    binary_output = params.get("binary_data_output", False) is True
    outputs = body.get("outputs")
    wanted: list[tuple[str, bool]] | None = None
    if outputs is not None and not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list of {name} objects")
    if outputs:  # an empty list names no output in particular: every one, as when left out
        wanted = []
        for out in outputs:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidInput("each requested output must be an object with a name")
            if out["name"] not in output_names:
                raise InvalidInput(
                    f"unknown output {out['name']!r} (this model has {', '.join(output_names)})"
                )
            oparams = out.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise InvalidInput(f"output {out['name']!r}: parameters must be an object")
            wanted.append((out["name"], bool(oparams.get("binary_data", binary_output))))
    return InferRequest(_request_id(body), X, wanted, binary_output)


def _label_tensor(labels: np.ndarray) -> tuple[str, np.ndarray]:
    kind = labels.dtype.kind
    if kind == "b":
        return "BOOL", labels
    if kind in "iu":
        return "INT64", labels.astype("<i8", copy=False)
    if kind == "f":
        return "FP64", labels.astype("<f8", copy=False)
    return "BYTES", labels.astype(str)


def _bytes_payload(values: np.ndarray) -> bytes:
    parts = []
    for v in values.ravel().tolist():
        b = str(v).encode()
        parts.append(len(b).to_bytes(4, "little") + b)
    return b"".join(parts)


def render_infer(
    model: str,
    version: int,
    request: InferRequest,
    labels: np.ndarray,
    proba: np.ndarray | None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (binary outputs use the tensor extension)."""
    available: dict[str, tuple[str, np.ndarray]] = {"predict": _label_tensor(labels)}
    if proba is not None:
        available["predict_proba"] = ("FP64", proba.astype("<f8", copy=False))
    if request.outputs is None:
        wanted = [(name, request.binary_output) for name in available]
    else:
        wanted = request.outputs
    outputs = []
    chunks = []
    for name, binary in wanted:
        if name not in available:
            raise InvalidInput(f"output {name!r} is not produced by {model} v{version}")
        datatype, arr = available[name]
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape), "datatype": datatype}
        if binary:
            payload = _bytes_payload(arr) if datatype == "BYTES" else arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(payload)}
            chunks.append(payload)
        else:
            entry["data"] = arr.ravel().tolist()
        outputs.append(entry)
    header = encode_json(
        {"model_name": model, "model_version": str(version), "id": request.id, "outputs": outputs}
    )
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def parse_v1(
    raw: bytes, features: Sequence[str], *, max_rows: int, allow_nan: bool = False
) -> np.ndarray:
    """`{"instances": [[...], ...]}` (rows) or `[{"feature": value, ...}, ...]` (named)."""
    body = _load_json(raw)
    if not isinstance(body, dict) or "instances" not in body:
        raise InvalidInput("body must be a JSON object with an 'instances' list")
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list of rows")
    if len(instances) > max_rows:
        raise InvalidInput(f"{len(instances)} instances is more than max_batch_rows ({max_rows})")
    if all(isinstance(row, dict) for row in instances):
        try:
            instances = [[row[f] for f in features] for row in instances]
        except KeyError as exc:
            raise InvalidInput(f"an instance lacks feature {exc.args[0]!r}") from None
    try:
        X = np.asarray(instances)
    except (ValueError, TypeError):
        raise InvalidInput("instances are ragged (rows of different lengths)") from None
    if X.dtype.kind not in "iuf":
        raise InvalidInput("instances must hold numbers only")
    if X.ndim != 2 or X.shape[1] != len(features):
        raise InvalidInput(
            f"each instance must be a list of {len(features)} numbers, got shape {list(X.shape)}"
        )
    X = X.astype(np.float64, copy=False)
    _check_rows(X, max_rows, allow_nan)
    return X


def render_v1(labels: np.ndarray) -> bytes:
    return encode_json({"predictions": labels.tolist()})
