"""Every service Dockerfile is the rendering of one template (deploy/docker/service.Dockerfile.in)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("render", REPO / "deploy/docker/render.py")
assert _spec is not None
assert _spec.loader is not None
render = importlib.util.module_from_spec(_spec)
sys.modules["render"] = render
_spec.loader.exec_module(render)


@pytest.mark.parametrize("name", render.services())
def test_dockerfile_is_the_templates_rendering(name: str) -> None:
    text = (REPO / "services" / name / "Dockerfile").read_text()
    assert text == render.render(name), (
        "edit deploy/docker/service.Dockerfile.in, run make dockerfiles"
    )


def test_every_service_has_a_dockerfile_and_every_extra_a_service() -> None:
    names = render.services()
    assert len(names) >= 11
    assert set(render.EXTRAS) <= set(names)
    assert render.main(["--check"]) == 0


def test_check_names_a_hand_edited_dockerfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    service = tmp_path / "services" / "peak_shaving"
    service.mkdir(parents=True)
    (service / "pyproject.toml").write_bytes(
        (REPO / "services/peak_shaving/pyproject.toml").read_bytes()
    )
    (service / "Dockerfile").write_text(
        render.render("peak_shaving").replace("USER derbus", "USER root")
    )
    monkeypatch.setattr(render, "REPO", tmp_path)
    assert render.main(["--check"]) == 1
    assert "services/peak_shaving/Dockerfile" in capsys.readouterr().out
    assert render.main([]) == 0  # writes it
    assert "USER derbus" in (service / "Dockerfile").read_text()
    assert render.main(["--check"]) == 0
