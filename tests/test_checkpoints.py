"""Damaged training state: truncated or missing checkpoint files, and a run killed mid-save."""

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.training import checkpoints

REPO = Path(__file__).resolve().parents[1]


def state(step, seed=None, n=32):
  rng = np.random.default_rng(step if seed is None else seed)
  w = lambda: jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
  return {"step": jnp.int32(step), "params": {"w": w()}, "opt_state": {"mu": {"w": w()}}}


def assert_state(restored, step, seed=None):
  want = state(step, seed)
  assert int(restored["step"]) == step
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def save(workdir, steps):
  ckpt = checkpoints.Checkpointer(workdir, 1, 10)
  for s in steps:
    assert ckpt.maybe_save(s, state(s))
  ckpt.close()


def truncate_largest(folder):
  f = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


DAMAGE = {"truncated": lambda step_dir: truncate_largest(step_dir / "state"),
          "missing": lambda step_dir: shutil.rmtree(step_dir / "state")}


def test_no_checkpoint_restores_none(tmp_path):
  assert checkpoints.Checkpointer(tmp_path, 1, 3).restore(state(0)) is None


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_step_falls_back_and_is_saved_again(tmp_path, damage):
  save(tmp_path, (1, 2, 3))
  DAMAGE[damage](tmp_path / "checkpoints" / "3")
  ckpt = checkpoints.Checkpointer(tmp_path, 1, 10)
  with pytest.warns(UserWarning, match=r"step.*\b3\b") as record:
    restored = ckpt.restore(state(0))
  assert_state(restored, 2)
  assert any("checkpoints_damaged" in str(w.message) for w in record)
  assert (tmp_path / "checkpoints_damaged" / "3" / "params").is_dir()
  assert ckpt.latest_step() == 2
  assert ckpt.maybe_save(3, state(3, seed=30))  # The damaged step number can be saved again.
  ckpt.close()
  assert_state(checkpoints.Checkpointer(tmp_path, 1, 10).restore(state(0)), 3, seed=30)


def test_all_steps_damaged_raises_naming_them_and_moves_nothing(tmp_path):
  save(tmp_path, (1, 2, 3))
  for s in (1, 2, 3):
    DAMAGE["truncated" if s % 2 else "missing"](tmp_path / "checkpoints" / str(s))
  with pytest.warns(UserWarning), pytest.raises(errors.CheckpointError, match=r"steps \[3, 2, 1\]"):
    checkpoints.Checkpointer(tmp_path, 1, 10).restore(state(0))
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2", "3"]
  assert not (tmp_path / "checkpoints_damaged").exists()


def test_restore_params_falls_back_or_names_the_damaged_step(tmp_path):
  save(tmp_path, (1, 2, 3))
  truncate_largest(tmp_path / "checkpoints" / "3" / "params")
  abstract = jax.eval_shape(lambda: state(0)["params"])
  with pytest.warns(UserWarning, match="step 3"):
    params, step = checkpoints.restore_params(tmp_path, abstract)
  assert step == 2
  np.testing.assert_array_equal(params["w"], state(2)["params"]["w"])
  with pytest.raises(errors.CheckpointError, match="step 3"):
    checkpoints.restore_params(tmp_path, abstract, 3)
  with pytest.raises(errors.CheckpointError, match="step 7"):
    checkpoints.restore_params(tmp_path, abstract, 7)
  params, step = checkpoints.restore_params(tmp_path, abstract, 1)
  np.testing.assert_array_equal(params["w"], state(1)["params"]["w"])
  assert (tmp_path / "checkpoints" / "3").is_dir()  # Read-only: nothing moved.


def test_leftover_tmp_folder_of_a_killed_save_is_ignored_and_removed(tmp_path):
  save(tmp_path, (1, 2))
  tmp = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp"
  shutil.copytree(tmp_path / "checkpoints" / "2", tmp)
  truncate_largest(tmp / "state")
  with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)  # A complete latest step: no fallback warning.
    ckpt = checkpoints.Checkpointer(tmp_path, 1, 10)
    assert_state(ckpt.restore(state(0)), 2)
  assert not tmp.exists()
  assert ckpt.maybe_save(3, state(3))
  ckpt.close()
  assert_state(checkpoints.Checkpointer(tmp_path, 1, 10).restore(state(0)), 3)


SAVER = """
import sys
import jax.numpy as jnp, numpy as np
from hssc_jax.training import checkpoints
ckpt = checkpoints.Checkpointer(sys.argv[1], 1, 3)
w = jnp.asarray(np.random.default_rng(0).normal(size=(1024, 1024)), jnp.float32)
for s in range(1, 100000):
  ckpt.maybe_save(s, {"step": jnp.int32(s), "params": {"w": w + s}, "opt_state": {"mu": w - s}})
  ckpt.manager.wait_until_finished()
"""


def _kill_during_save(workdir):
  """Runs SAVER until it is writing step >= 3, SIGKILLs it; the step it was saving, or None."""
  folder = workdir / "checkpoints"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-c", SAVER, str(workdir)], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      names = os.listdir(folder) if folder.exists() else []
      saving = [int(n.split(".")[0]) for n in names if ".orbax-checkpoint-tmp" in n]
      if saving and max(saving) >= 3:
        break
      time.sleep(0.002)
    else:
      pytest.fail(f"the saver wrote no step 3 within 120 s (exit code {proc.poll()})")
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  left = [n for n in os.listdir(folder) if ".orbax-checkpoint-tmp" in n]
  return int(left[0].split(".")[0]) if left else None  # None: the save ended before the kill.


def test_sigkill_mid_save_resumes_from_previous_step(tmp_path):
  for attempt in range(3):
    workdir = tmp_path / str(attempt)
    saving = _kill_during_save(workdir)
    if saving is not None:
      break
  else:
    pytest.fail("could not kill the saver while a save was in progress")
  ckpt = checkpoints.Checkpointer(workdir, 1, 3)
  assert not any(".orbax-checkpoint-tmp" in n for n in os.listdir(workdir / "checkpoints"))
  template = {"step": jnp.int32(0), "params": {"w": jnp.zeros((1024, 1024))},
              "opt_state": {"mu": jnp.zeros((1024, 1024))}}
  with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)  # The complete steps are intact.
    restored = ckpt.restore(template)
  assert int(restored["step"]) == saving - 1  # At most one interval lost.
  w = np.random.default_rng(0).normal(size=(1024, 1024)).astype(np.float32)
  np.testing.assert_allclose(restored["params"]["w"], w + (saving - 1), rtol=1e-6)
  assert ckpt.maybe_save(saving, restored)
  ckpt.close()
