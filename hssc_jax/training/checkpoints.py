"""Orbax checkpoints of a training run, the run's identity, and loading a trained codec.

A workdir holds:
  run.json              what is trained (codec name, options, scales, channels, detector): a
                        restart with another codec or other options is refused (ConfigError)
  checkpoints/<step>/   orbax items "state" (step, params, optimizer state) and "params"
  tables/<step>.npz     the integer CDF tables built from that step's parameters (final step)

Saving goes through orbax's `CheckpointManager` (atomic: a run killed mid-save leaves only a
temporary folder that orbax ignores), so a run killed with SIGKILL and restarted resumes from the
latest complete checkpoint and loses at most one checkpoint interval.
"""

import json
from pathlib import Path
from typing import Any, Mapping

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
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, state: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The latest checkpoint restored into `state`'s structure and shardings, or None."""
    step = self.manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return restored["state"]

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

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _jsonable_arrays(tables: Mapping[str, Any]) -> dict:
  return jax.tree.map(np.asarray, dict(tables))


def load_tables(path: str | Path) -> dict[str, Any]:
  with np.load(path) as z:
    return flax.traverse_util.unflatten_dict({k: z[k] for k in z.files}, sep="/")


def restore_params(workdir: str | Path, abstract_params: Any, step: int | None = None
                   ) -> tuple[Any, int]:
  """The codec parameters saved at `step` (default: latest) of a workdir."""
  manager = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints")
  step = manager.latest_step() if step is None else step
  if step is None:
    raise errors.ConfigError(f"no checkpoint in {workdir}")
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params)))
  manager.close()
  return restored["params"], step
