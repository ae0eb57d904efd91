"""Shared test fixtures: where the optional shared data lives, and skips when it is absent."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))  # `configs` is importable as in `python train.py`.
SHARED = Path(os.environ.get("HSSC_SHARED", REPO.parent / "shared")).resolve()

# Many tests build the same small models and train steps again (a fresh jit of the same program),
# and XLA compilation is most of the suite's time on CPU. A persistent compilation cache that lives
# for this one session (empty at the start, removed at the end, so timings stay those of a cold
# machine) compiles each program once; subprocesses (eval.py, train.py) inherit it through the
# environment. Executables are the same as without the cache, so no numerics change.
_JAX_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _JAX_CACHE = tempfile.mkdtemp(prefix="hssc_jax_test_xla_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _JAX_CACHE:
    shutil.rmtree(_JAX_CACHE, ignore_errors=True)


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
