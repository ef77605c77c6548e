"""Loaded models behind one small interface: `predict(X) -> Prediction` on a 2-D float array.

Classifiers answer labels and, when they can, class probabilities from one `predict_proba`
call (the labels are its argmax), so a request costs one model call. river models are served
row by row through `predict_one` / `predict_proba_one`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway.errors import RegistryError

__all__ = ["Model", "Prediction", "flavor_of", "load_artifact", "load_model", "wrap_model"]

# Module prefixes a skops artifact may name; anything else is refused as untrusted.
SKOPS_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")


@dataclass(frozen=True, slots=True)
class Prediction:
    labels: np.ndarray
    proba: np.ndarray | None


class Model(Protocol):
    name: str
    version: int
    task: str
    classes: np.ndarray | None
    has_proba: bool
    manifest: Mapping[str, Any]

    def predict(self, X: np.ndarray) -> Prediction: ...


def load_artifact(path: Path, *, trusted: bool, allow_pickle: bool = True) -> Any:
    """Deserialise an artifact. skops only admits sklearn/numpy/scipy types; pickle runs code."""
    suffix = path.suffix.lower()
    if suffix == ".skops":
        import skops.io as sio

        untrusted = sio.get_untrusted_types(file=path)
        bad = [t for t in untrusted if not t.startswith(SKOPS_TRUSTED_PREFIXES)]
        if bad and not trusted:
            raise RegistryError(f"{path.name}: skops artifact names untrusted types {bad}")
        return sio.load(path, trusted=untrusted)
    if suffix in (".joblib", ".pkl", ".pickle"):
        if not allow_pickle:
            raise RegistryError(
                f"{path.name}: pickle/joblib artifacts are refused for this registry "
                "(set allow_pickle = true only for a registry you trust, or push a .skops file)"
            )
        try:
            if suffix == ".joblib":
                import joblib

                return joblib.load(path)
            with open(path, "rb") as f:
                return pickle.load(f)
        except Exception as exc:
            raise RegistryError(f"{path.name}: cannot load ({type(exc).__name__}: {exc})") from exc
    raise RegistryError(f"{path.name}: unknown artifact format (use .skops, .joblib or .pkl)")


def flavor_of(obj: Any) -> str:
    module = type(obj).__module__
    if module.startswith("river."):
        return "river"
    if hasattr(obj, "predict"):
        return "sklearn"
    raise RegistryError(f"{type(obj).__name__} is neither a scikit-learn nor a river model")


class SklearnModel:
    def __init__(self, obj: Any, manifest: Mapping[str, Any]) -> None:
        from sklearn.base import is_classifier

        self._obj = obj
        self.manifest = manifest
        self.name = str(manifest["name"])
        self.version = int(manifest["version"])
        self.task = "classification" if is_classifier(obj) else "regression"
        classes = getattr(obj, "classes_", None)
        self.classes = np.asarray(classes) if classes is not None else None
        self.has_proba = self.task == "classification" and hasattr(obj, "predict_proba")
        self._proba = getattr(obj, "predict_proba", None) if self.has_proba else None
        self._predict = obj.predict

    def predict(self, X: np.ndarray) -> Prediction:
        if self._proba is not None and self.classes is not None:
            proba = self._proba(X)
            return Prediction(self.classes[proba.argmax(axis=1)], proba)
        return Prediction(np.asarray(self._predict(X)), None)


class RiverModel:
    def __init__(self, obj: Any, manifest: Mapping[str, Any]) -> None:
        from river import base

        self._obj = obj
        self.manifest = manifest
        self.name = str(manifest["name"])
        self.version = int(manifest["version"])
        self.task = "classification" if isinstance(obj, base.Classifier) else "regression"
        self._features = list(manifest["inputs"]["names"])
        classes = manifest.get("classes")
        self.classes = np.asarray(classes) if classes else None
        self.has_proba = self.task == "classification" and self.classes is not None

    def predict(self, X: np.ndarray) -> Prediction:
        rows = [dict(zip(self._features, row, strict=True)) for row in X.tolist()]
        if self.task == "regression":
            return Prediction(np.array([self._obj.predict_one(r) for r in rows], dtype=float), None)
        if not self.has_proba or self.classes is None:
            return Prediction(np.array([self._obj.predict_one(r) for r in rows]), None)
        classes = self.classes.tolist()
        proba = np.zeros((len(rows), len(classes)))
        for i, r in enumerate(rows):
            p = self._obj.predict_proba_one(r)
            for j, c in enumerate(classes):
                proba[i, j] = p.get(c, 0.0)
        return Prediction(self.classes[proba.argmax(axis=1)], proba)


def wrap_model(obj: Any, manifest: Mapping[str, Any]) -> Model:
    if flavor_of(obj) == "river":
        return RiverModel(obj, manifest)
    return SklearnModel(obj, manifest)


def load_model(artifact: Path, manifest: Mapping[str, Any], *, allow_pickle: bool = True) -> Model:
    """Load a verified artifact and check it answers the manifest's schema (one warm-up call)."""
    obj = load_artifact(artifact, trusted=False, allow_pickle=allow_pickle)
    model = wrap_model(obj, manifest)
    n = int(manifest["inputs"]["count"])
    try:
        model.predict(np.zeros((1, n)))
    except Exception as exc:
        raise RegistryError(
            f"{manifest['name']} v{manifest['version']}: warm-up prediction failed ({exc})"
        ) from exc
    return model
