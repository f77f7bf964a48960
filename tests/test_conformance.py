"""Our models reproduce the official implementation's numbers (../shared/conformance)."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from titok_core import conformance

PUBLIC = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "public"
IMAGE_FIXTURES = sorted(
    p.name for p in PUBLIC.iterdir()
    if (p / "config.json").exists() and conformance.fixture_kind(json.loads((p / "config.json").read_text())) != "generator"
)


def test_public_set_has_every_image_model_kind():
    kinds = {conformance.fixture_kind(json.loads((PUBLIC / n / "config.json").read_text())) for n in IMAGE_FIXTURES}
    assert kinds == {"maskgit_vqgan", "titok", "titok_quantizer", "vqgan_quantizer"}


@pytest.mark.parametrize("name", IMAGE_FIXTURES)
def test_fixture_matches_reference(name):
    results, skip = conformance.check_fixture(PUBLIC / name)
    assert skip is None
    expected = load_file(str(PUBLIC / name / "expected.safetensors"))
    compared = {r.key for r in results}
    assert set(expected) <= compared, "every expected tensor is compared"
    failures = [r.line() for r in results if not r.ok]
    assert not failures, "\n".join(failures)


def test_cli_passes_public_set(capsys):
    assert conformance.main([str(PUBLIC)]) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith(("PASS", "FAIL"))]
    assert lines and all(l.startswith("PASS") for l in lines)
    assert "max_abs=" in lines[0]
    assert "0 failed" in out.splitlines()[-1]


def _copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / "set" / name
    shutil.copytree(PUBLIC / name, dst)
    return dst


def test_cli_fails_on_a_wrong_float(tmp_path, capsys):
    d = _copy(tmp_path, "titok_tiny_stage1")
    exp = load_file(str(d / "expected.safetensors"))
    exp["decoded"] = exp["decoded"] + 1e-3  # 10x the tolerance
    save_file(exp, str(d / "expected.safetensors"))
    assert conformance.main([str(d.parent)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  titok_tiny_stage1/decoded" in out
    assert "PASS  titok_tiny_stage1/z " in out


def test_cli_fails_on_one_wrong_code(tmp_path, capsys):
    d = _copy(tmp_path, "maskgit_vqgan_tiny")
    exp = load_file(str(d / "expected.safetensors"))
    idx = exp["codebook_indices"].clone()
    idx[0, 0] = (idx[0, 0] + 1) % 64
    exp["codebook_indices"] = idx
    save_file(exp, str(d / "expected.safetensors"))
    assert conformance.main([str(d)]) == 1
    assert "FAIL  maskgit_vqgan_tiny/codebook_indices  max_abs=1" in capsys.readouterr().out


def test_sizes_come_from_the_fixture_config(tmp_path, capsys):
    """A set whose TiTok uses another extra size name: the checker must read extra_size_map.

    The weights are re-labelled, not changed: rename `tiny` to `mini` in config and meta.
    """
    d = _copy(tmp_path, "titok_tiny_stage1")
    cfg = json.loads((d / "config.json").read_text())
    meta = json.loads((d / "fixture_meta.json").read_text())
    cfg["model"]["vq_model"]["vit_enc_model_size"] = cfg["model"]["vq_model"]["vit_dec_model_size"] = "mini"
    meta["extra_size_map"] = {"mini": meta["extra_size_map"]["tiny"]}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "fixture_meta.json").write_text(json.dumps(meta))
    assert conformance.main([str(d)]) == 0
    # and a size the map does not define is a clear failure, not a crash
    meta["extra_size_map"] = {}
    (d / "fixture_meta.json").write_text(json.dumps(meta))
    assert conformance.main([str(d)]) == 1
    assert "unknown ViT size 'mini'" in capsys.readouterr().out


def test_missing_directory_is_a_failure(tmp_path, capsys):
    assert conformance.main([str(tmp_path / "nope")]) == 1
    assert "FAIL" in capsys.readouterr().out
