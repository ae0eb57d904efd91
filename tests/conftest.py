"""Shared test fixtures: where the optional shared data lives, and skips when it is absent."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))  # `configs` is importable as in `python train.py`.
SHARED = Path(os.environ.get("HSSC_SHARED", REPO.parent / "shared")).resolve()


def shared_path(*parts: str) -> Path:
  """Path under ../shared, or skip the calling test with a reason when it is missing."""
  p = SHARED.joinpath(*parts)
  if not p.exists():
    pytest.skip(f"shared data not available: {p} (set HSSC_SHARED to its folder)")
  return p


@pytest.fixture
def shared():
  """The `shared_path` helper as a fixture."""
  return shared_path


@pytest.fixture(scope="session")
def yolov5n_weights():
  return shared_path("weights", "yolov5n-coco-v6.0.pt")


@pytest.fixture(scope="session")
def coco_mini():
  return shared_path("data", "coco-mini")


@pytest.fixture(scope="session")
def load_script():
  """A loader of scripts/<name>.py as a module (the scripts are not a package)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  loaded = {}

  def load(name: str):
    if name not in loaded:
      spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
      loaded[name] = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(loaded[name])
    return loaded[name]
  return load
