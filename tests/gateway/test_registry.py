"""`gatewatch registry`: computed manifests, atomic versions, refusals with exit code 2."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io as sio
from river import linear_model as river_linear
from sklearn.linear_model import LogisticRegression

from gateway.cli import main
from gateway.errors import RegistryError
from gateway.registry import list_models, list_versions, read_manifest, verify_artifact
from tests._models import FEATURES, make_data, push_logreg, write_csv


def push(registry: Path, *args: str) -> int:
    return main(["registry", "--registry", str(registry), "push", *args])


def test_manifest_is_computed(registry: Path) -> None:
    m = read_manifest(registry, "churn", 1)
    assert m["flavor"] == "sklearn" and m["task"] == "classification"
    assert m["inputs"] == {"names": FEATURES, "datatype": "FP64", "count": 20, "allow_nan": False}
    assert m["classes"] == [0, 1]
    assert m["outputs"] == ["predict", "predict_proba"]
    assert m["lineage"]["rows"] == 2000 and len(m["lineage"]["data_sha256"]) == 64
    assert m["lineage"]["params"]["C"] == 1.0
    assert 0.8 < m["metrics"]["accuracy"] <= 1.0 and "f1_macro" in m["metrics"]
    ref = m["reference"]["features"]["f3"]
    assert len(ref["edges"]) == 11 and len(ref["counts"]) == 10 and sum(ref["counts"]) == 2000
    assert ref["min"] == ref["edges"][0] and ref["max"] == ref["edges"][-1]
    assert sum(m["reference"]["prediction"]["counts"]) == 2000
    verify_artifact(registry, m)
    reg = read_manifest(registry, "price", 1)
    assert reg["task"] == "regression" and set(reg["metrics"]) == {"mae", "rmse", "r2"}
    assert reg["reference"]["prediction"]["mean"] == pytest.approx(3.0, abs=0.3)


def test_list_and_show(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["registry", "--registry", str(registry), "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [
        ["churn", "v1"],
        ["churn", "v2"],
        ["price", "v1"],
    ]
    assert main(["registry", "--registry", str(registry), "show", "churn", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["Bad/Name", "--model", "{model}", "--train-data", "{csv}", "--target", "label"],
            "invalid model name",
            id="bad-name",
        ),
        pytest.param(
            ["../up", "--model", "{model}", "--train-data", "{csv}", "--target", "label"],
            "invalid model name",
            id="traversal",
        ),
        pytest.param(
            ["churn", "--model", "{missing}", "--train-data", "{csv}", "--target", "label"],
            "no model file",
            id="missing-model",
        ),
        pytest.param(
            ["churn", "--model", "{model}", "--train-data", "{missing}", "--target", "label"],
            "cannot read",
            id="missing-csv",
        ),
        pytest.param(
            ["churn", "--model", "{model}", "--train-data", "{csv}", "--target", "nope"],
            "no target column",
            id="no-target",
        ),
        pytest.param(
            ["churn", "--model", "{model}", "--train-data", "{narrow}", "--target", "label"],
            "model expects 20",
            id="columns",
        ),
        pytest.param(
            [
                "churn",
                "--model",
                "{model}",
                "--train-data",
                "{csv}",
                "--target",
                "label",
                "--min-metric",
                "accuracy=0.999",
            ],
            "below the minimum",
            id="min-metric",
        ),
        pytest.param(
            [
                "churn",
                "--model",
                "{model}",
                "--train-data",
                "{csv}",
                "--target",
                "label",
                "--min-metric",
                "nosuch=1",
            ],
            "not computed",
            id="unknown-metric",
        ),
    ],
)
def test_push_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    X, y = make_data(300)
    model = tmp_path / "m.joblib"
    joblib.dump(LogisticRegression().fit(X, y), model)
    paths = {
        "model": str(model),
        "csv": str(write_csv(tmp_path / "d.csv", X, y)),
        "narrow": str(write_csv(tmp_path / "n.csv", X[:, :5], y)),
        "missing": str(tmp_path / "missing.bin"),
    }
    registry = tmp_path / "registry"
    assert push(registry, *[a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert list_versions(registry, "churn") == []
    assert (
        not any(p.name.startswith(".push-") for p in (registry / "churn").glob("*"))
        if (registry / "churn").exists()
        else True
    )


def test_feature_names_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    X, y = make_data(300)
    fitted = LogisticRegression().fit(X, y)
    # What fitting on a DataFrame with other column names leaves behind.
    fitted.feature_names_in_ = np.array([f"g{i}" for i in range(20)], dtype=object)
    model = tmp_path / "m.joblib"
    joblib.dump(fitted, model)
    data = write_csv(tmp_path / "d.csv", X, y)
    assert (
        push(
            tmp_path / "r",
            "churn",
            "--model",
            str(model),
            "--train-data",
            str(data),
            "--target",
            "label",
        )
        == 2
    )
    assert "feature_names_in_" in capsys.readouterr().err


def test_skops_and_river_flavors(tmp_path: Path) -> None:
    X, y = make_data(400)
    data = write_csv(tmp_path / "d.csv", X, y)
    skops_path = tmp_path / "m.skops"
    sio.dump(LogisticRegression().fit(X, y), skops_path)
    river_model = river_linear.LogisticRegression()
    for row, label in zip(X.tolist(), y.tolist(), strict=True):
        river_model.learn_one(dict(zip(FEATURES, row, strict=True)), label)
    river_path = tmp_path / "r.pkl"
    river_path.write_bytes(pickle.dumps(river_model))
    registry = tmp_path / "registry"
    assert (
        push(
            registry,
            "sk",
            "--model",
            str(skops_path),
            "--train-data",
            str(data),
            "--target",
            "label",
        )
        == 0
    )
    assert (
        push(
            registry,
            "rv",
            "--model",
            str(river_path),
            "--train-data",
            str(data),
            "--target",
            "label",
        )
        == 0
    )
    assert read_manifest(registry, "sk", 1)["artifact"] == "model.skops"
    rv = read_manifest(registry, "rv", 1)
    assert rv["flavor"] == "river" and rv["classes"] == [0, 1] and rv["metrics"]["accuracy"] > 0.8


def test_layout_ignores_junk_and_symlinks(registry: Path, tmp_path: Path) -> None:
    (registry / "Not-Valid").mkdir()
    (registry / "churn" / "latest").mkdir()
    os.symlink(registry / "churn" / "1", registry / "churn" / "7")
    os.symlink(tmp_path, registry / "outside")
    assert list_models(registry) == ["churn", "price"]
    assert list_versions(registry, "churn") == [1, 2]
    with pytest.raises(RegistryError):
        read_manifest(registry, "churn", 7)


def test_push_numbers_versions_and_never_overwrites(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    work = tmp_path / "w"
    work.mkdir()
    assert [push_logreg(registry, work, seed=s) for s in range(3)] == [1, 2, 3]
    (registry / "churn" / "4").mkdir()
    (registry / "churn" / "4" / "keep").write_text("not a version")
    assert push_logreg(registry, work, seed=5) == 5
    assert (registry / "churn" / "4" / "keep").exists()
    shas = {read_manifest(registry, "churn", v)["sha256"] for v in (1, 2, 3, 5)}
    assert len(shas) == 4
    assert np.isclose(
        read_manifest(registry, "churn", 5)["reference"]["features"]["f0"]["mean"],
        make_data(seed=5)[0][:, 0].mean(),
    )
