"""Orbax checkpoints of a training run, the run's identity, and loading a trained codec.

A workdir holds:
  run.json              what is trained (codec name, options, scales, channels, detector): a
                        restart with another codec or other options is refused (ConfigError)
  checkpoints/<step>/   orbax items "state" (step, params, optimizer state) and "params"
  tables/<step>.npz     the integer CDF tables built from that step's parameters (final step)

Saving goes through orbax's `CheckpointManager`: a run killed mid-save (even by SIGKILL) leaves only
a "<step>.orbax-checkpoint-tmp" folder, removed on restart, and resumes from the latest complete
step, losing at most one checkpoint interval. A step whose files are truncated or missing is
skipped with a warning for the previous good one, and moved aside to checkpoints_damaged/<step> so
the resumed run saves that step again; if no step can be restored, `CheckpointError` names them.
"""

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from hssc_jax import errors


def _jsonable(x: Any) -> Any:
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  return x


def check_run(workdir: Path, identity: Mapping[str, Any]) -> None:
  """Writes workdir/run.json, or refuses a workdir that holds another run."""
  path = workdir / "run.json"
  identity = _jsonable(identity)
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise errors.ConfigError(f"{path} is not valid JSON; is this a hssc_jax workdir?") from e
    if old != identity:
      diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
      raise errors.ConfigError(
          f"workdir {workdir} holds a run of codec {old.get('codec')!r} with other settings "
          f"(differs in {diff}); use a new workdir or the original config")
  else:
    if (workdir / "checkpoints").exists() and any((workdir / "checkpoints").iterdir()):
      raise errors.ConfigError(f"workdir {workdir} has checkpoints but no run.json; refusing to mix")
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=2, sort_keys=True))


def read_run(workdir: str | Path) -> dict[str, Any]:
  path = Path(workdir) / "run.json"
  if not path.exists():
    raise errors.ConfigError(f"{workdir} is not a training workdir (no run.json)")
  return json.loads(path.read_text())


class Checkpointer:
  """Periodic orbax checkpoints with automatic resume."""

  def __init__(self, workdir: str | Path, every: int, keep: int):
    self.workdir = Path(workdir).absolute()
    self.every = max(int(every), 1)
    self.manager = ocp.CheckpointManager(
        self.workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, state: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The latest restorable checkpoint, restored into `state`'s structure and shardings, or None.

    Damaged later steps are warned about and moved to <workdir>/checkpoints_damaged/.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    found = _restore_latest_good(self.manager, lambda step: self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"])
    if found is None:
      return None
    restored, step = found
    damaged = [s for s in self.manager.all_steps() if s > step]
    if damaged:
      aside = self.workdir / "checkpoints_damaged"
      if jax.process_index() == 0:
        for s in damaged:
          dest, n = aside / str(s), 1
          while dest.exists():
            dest, n = aside / f"{s}.{n}", n + 1
          dest.parent.mkdir(parents=True, exist_ok=True)
          shutil.move(self.workdir / "checkpoints" / str(s), dest)
      warnings.warn(f"moved damaged checkpoint step(s) {damaged} to {aside}; resuming from step "
                    f"{step}", stacklevel=2)
      ocp.multihost.sync_global_processes("hssc_jax_checkpoints_damaged_moved")
      self.manager.reload()
    return restored

  def maybe_save(self, step: int, state: Mapping[str, Any], force: bool = False) -> bool:
    if not force and step % self.every:
      return False
    if step in self.manager.all_steps():
      return False
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), params=ocp.args.StandardSave(state["params"])),
        force=True)
    return True

  def save_tables(self, step: int, tables: Mapping[str, Any]) -> Path:
    self.manager.wait_until_finished()
    path = self.workdir / "tables" / f"{step}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = flax.traverse_util.flatten_dict(_jsonable_arrays(tables), sep="/")
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **flat)
    tmp.rename(path)
    return path

  def wait(self) -> None:
    """Blocks until every started save is complete on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def latest_tables_step(workdir: str | Path) -> int:
  """The step of the newest `tables/<step>.npz` of a training workdir (0 when it has none)."""
  steps = [int(p.stem) for p in (Path(workdir) / "tables").glob("*.npz") if p.stem.isdigit()]
  return max(steps, default=0)


def _jsonable_arrays(tables: Mapping[str, Any]) -> dict:
  return jax.tree.map(np.asarray, dict(tables))


def load_tables(path: str | Path) -> dict[str, Any]:
  with np.load(path) as z:
    return flax.traverse_util.unflatten_dict({k: z[k] for k in z.files}, sep="/")


def _restore_latest_good(manager: ocp.CheckpointManager, restore: Callable[[int], Any]
                         ) -> tuple[Any, int] | None:
  """restore(step) of the latest step it succeeds for, warning about each failure, and the step."""
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  reasons = []
  for i, step in enumerate(steps):
    try:
      return restore(step), step
    except Exception as e:  # Truncated, missing or corrupt files: orbax/tensorstore raise anything.
      reasons.append(f"step {step}: {_reason(e)}")
      then = f"; trying step {steps[i + 1]}" if i + 1 < len(steps) else ""
      warnings.warn(f"checkpoint step {step} in {manager.directory} cannot be restored "
                    f"({_reason(e)}){then}", stacklevel=3)
  raise errors.CheckpointError(
      f"no checkpoint in {manager.directory} can be restored; tried steps {steps}: "
      + "; ".join(reasons))


def _reason(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def restore_params(workdir: str | Path, abstract_params: Any, step: int | None = None
                   ) -> tuple[Any, int]:
  """The codec parameters saved at `step` (default: the latest step that can be restored)."""
  manager = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints")
  restore = lambda s: manager.restore(s, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params)))["params"]
  try:
    if step is None:
      found = _restore_latest_good(manager, restore)
      if found is None:
        raise errors.ConfigError(f"no checkpoint in {workdir}")
      return found
    if step not in manager.all_steps():
      raise errors.CheckpointError(
          f"no checkpoint at step {step} in {workdir} (steps: {manager.all_steps()})")
    try:
      return restore(step), step
    except Exception as e:
      raise errors.CheckpointError(
          f"checkpoint step {step} in {workdir} cannot be restored ({_reason(e)})") from e
  finally:
    manager.close()
