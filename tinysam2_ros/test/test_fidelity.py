"""`tinysam2 fidelity` on the shared EdgeTAM fixture, through the streaming tracker."""
from __future__ import annotations

import json
import shutil

from tinysam2_ros.cli import main
from tinysam2_ros.fidelity import Tolerances, run_fidelity


def test_fidelity_passes_on_shared_fixture(edgetam_fixture_dir, capsys):
    assert main(["fidelity", str(edgetam_fixture_dir)]) == 0
    out = capsys.readouterr().out
    assert "FIDELITY PASS" in out
    assert out.count(" yes") == 8  # one row per frame for the single object


def test_fidelity_fails_when_the_model_is_wrong(edgetam_fixture_dir, tmp_path):
    """Same fixture with a different box: the reference no longer matches, the tool must say so."""
    fixture = tmp_path / "fixture"
    shutil.copytree(edgetam_fixture_dir, fixture)
    spec = json.loads((fixture / "fixture.json").read_text())
    spec["frames"] = 2
    spec["prompts"][0]["box_xyxy"] = [210, 100, 400, 400]
    (fixture / "fixture.json").write_text(json.dumps(spec))
    lines: list[str] = []
    assert not run_fidelity(fixture, Tolerances(), log=lines.append)
    assert lines[-1] == "FIDELITY FAIL"


def test_fidelity_passes_through_onnxruntime(edgetam_fixture_dir, capsys):
    """The exported graphs (RepViT fused) run by onnxruntime reproduce the reference too."""
    assert main(["fidelity", str(edgetam_fixture_dir), "--backend", "onnxruntime"]) == 0
    assert "FIDELITY PASS" in capsys.readouterr().out
