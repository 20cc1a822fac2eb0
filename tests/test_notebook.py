"""Executes notebooks/quickstart.ipynb (kernel: this interpreter; working folder: a tmp_path) so it never rots."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL = "lightning-ad-test"

_REPORT_CELL = """
import json as _json
print("RESULTS " + _json.dumps({
    "image_auroc": float(image_auroc),
    "pixel_auroc": float(pixel_auroc),
    "image_threshold": float(model.image_threshold),
    "pixel_threshold": float(model.pixel_threshold),
    "prediction_dir": str(Path(prediction_dir).resolve()),
    "report_dir": str(Path(report.output_path).resolve()),
    "rows": len(predictions),
}))
"""


def test_notebook_is_saved_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code"
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "clear the outputs before saving"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    # A kernel spec for the interpreter running the tests (not whatever 'python3' is on PATH).
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lightning_ad tests", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"
    work.mkdir()

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(_REPORT_CELL))
    client = nbclient.NotebookClient(
        notebook, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(work)}}
    )
    client.execute()

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    pictures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(pictures) >= 3, "expected the histogram, the heatmaps and the prediction overlays"
    text = "".join(out.get("text", "") for out in notebook.cells[-1].outputs if out.output_type == "stream")
    results = json.loads(text.split("RESULTS ", 1)[1])

    # the demo is deterministic: these floors hold with margin (observed about 0.74 and 0.994)
    assert results["image_auroc"] > 0.65
    assert results["pixel_auroc"] > 0.97
    assert results["image_threshold"] > 0 and results["pixel_threshold"] > 0

    report = Path(results["report_dir"])
    assert report == (work / "outputs" / "quickstart" / "test_report").resolve()
    assert {"roc_image.png", "roc_pixel.png", "score_histogram.png"} <= {p.name for p in report.iterdir()}

    prediction_dir = Path(results["prediction_dir"])
    assert prediction_dir == (work / "outputs" / "quickstart" / "predictions" / "version_0").resolve()
    with open(prediction_dir / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert results["rows"] == len(rows) == 4
    assert sorted(row["relpath"] for row in rows) == ["good_000.png", "good_001.png", "hole_000.png", "scratch_000.png"]
    for row in rows:
        assert (prediction_dir / row["map_file"]).is_file() and (prediction_dir / row["overlay_file"]).is_file()
        assert 0 <= float(row["normalized_score"]) < 1 and row["label"] in ("0", "1")
