"""The model registry on disk: one folder per version with the model, its metadata and report.

Layout: `<model_dir>/<site_id>/<target>/v0001/` holding `model.joblib`, `meta.json` (model name,
features, training window, backtest metrics, promotion decision), `report.md` and `backtest.png`;
`<model_dir>/<site_id>/<target>/promoted.json` names the version being served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from derbus.errors import StorageError
from derbus.jsonfile import write_json

META = "meta.json"
MODEL = "model.joblib"
PROMOTED = "promoted.json"


@dataclass(frozen=True)
class Version:
    """A registered model version."""

    path: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        """`v0001`, …"""
        return self.path.name


class Registry:
    """Versioned models per site and target under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, site_id: str, target: str) -> Path:
        """Where a site's target lives."""
        return self.root / site_id / target

    def versions(self, site_id: str, target: str) -> list[Version]:
        """Every version, oldest first."""
        folder = self.folder(site_id, target)
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("v")):
            meta_file = path / META
            if meta_file.exists():
                out.append(Version(path, json.loads(meta_file.read_text())))
        return out

    def new_version(self, site_id: str, target: str) -> Path:
        """Create and return the next version folder."""
        folder = self.folder(site_id, target)
        folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.name[1:]) for p in folder.iterdir() if p.name[1:].isdigit()]
        path = folder / f"v{max(numbers, default=0) + 1:04d}"
        path.mkdir()
        return path

    def save(self, path: Path, model: Any, meta: dict[str, Any]) -> Version:
        """Store the fitted model and its metadata in a version folder."""
        import joblib

        try:
            joblib.dump(model, path / MODEL)
            write_json(
                path / META, {**meta, "version": path.name}, indent=2, sort_keys=True, default=str
            )
        except OSError as err:
            raise StorageError(f"cannot write model version {path}: {err}") from err
        return Version(path, {**meta, "version": path.name})

    def promote(self, site_id: str, target: str, version: str) -> None:
        """Serve `version` from now on."""
        write_json(self.folder(site_id, target) / PROMOTED, {"version": version}, indent=2)

    def promoted(self, site_id: str, target: str) -> Version | None:
        """The version being served, if any."""
        pointer = self.folder(site_id, target) / PROMOTED
        if not pointer.exists():
            return None
        name = json.loads(pointer.read_text())["version"]
        for v in self.versions(site_id, target):
            if v.name == name:
                return v
        return None

    def load(self, version: Version) -> Any:
        """The fitted model of a version."""
        import joblib

        try:
            return joblib.load(version.path / MODEL)
        except (OSError, EOFError) as err:
            raise StorageError(f"cannot load model {version.path}: {err}") from err

    def sites(self) -> list[tuple[str, str]]:
        """(site_id, target) pairs with at least one version."""
        if not self.root.is_dir():
            return []
        return sorted(
            (site.name, target.name)
            for site in self.root.iterdir()
            if site.is_dir()
            for target in site.iterdir()
            if target.is_dir()
        )
