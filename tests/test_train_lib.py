"""Training system tests on the smoke configs (generated shapes, random ShapesNet, tiny codecs)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import base as base_config
from configs import lmfc as lmfc_config
from hssc_jax import bitstream, errors, train_lib

REPO = Path(__file__).resolve().parents[1]


def smoke(module, **overrides):
  """The smoke config with `overrides`; one training phase (no mixed fine-tune, so one train
  step compile) unless "loss.mixed_fraction" is given: the base-codec test below covers the switch."""
  config = module.get_config("smoke")
  with config.unlocked():
    config.progress = False
    config.loss.mixed_fraction = 0.0
    for key, value in overrides.items():
      node = config
      *path, last = key.split(".")
      for p in path:
        node = node[p]
      node[last] = value
  return config


def test_base_trains_checkpoints_resumes_and_codes(tmp_path):
  mixed = {"loss.mixed_fraction": 0.15}  # 5 steps: the last one straight-through ("mixed")
  metrics = train_lib.train_and_evaluate(smoke(base_config, steps=3, **mixed), str(tmp_path))
  assert np.isfinite(metrics["loss"]) and metrics["bpp"] > 0
  assert (tmp_path / "tables" / "3.npz").exists() and (tmp_path / "tb").is_dir()
  # Resume: the same workdir with more steps continues from step 3, into the mixed phase.
  metrics = train_lib.train_and_evaluate(smoke(base_config, steps=5, **mixed), str(tmp_path))
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [3, 5]
  # Checkpoint round trip: the trained codec loads and codes a pyramid exactly as it decodes it.
  codec, params, tables, run = train_lib.load_codec(tmp_path)
  assert run["codec"] == "hyperprior"
  rng = np.random.default_rng(0)
  feats = {s: rng.normal(size=(1, 16 >> i, 16 >> i, c)).astype(np.float32)
           for i, (s, c) in enumerate(zip(run["scales"], run["channels"]))}
  assert codec.qualities == len(run["lmbdas"]) > 1 and codec.feature_norm
  data = codec.compress(params, tables, feats, (128, 128))
  out = codec.decompress(params, tables, data)
  # The module works on normalized features; compress/decompress normalize and undo it.
  ev = codec.denormalize(codec.apply({"params": params}, codec.normalize(feats), False)
                         ["features_hat"])
  for s in feats:
    np.testing.assert_allclose(out[s], ev[s], atol=1e-4)
  assert bitstream.unpack(data).codec_id == "hyperprior"


@pytest.mark.slow  # a second codec's full compile; tests/codecs/test_lmfc.py covers L-MFC's forward and coding
def test_lmfc_smoke_step_and_wrong_codec_in_workdir(tmp_path):
  metrics = train_lib.train_and_evaluate(smoke(lmfc_config, steps=2), str(tmp_path))
  assert np.isfinite(metrics["loss"])
  assert set(k for k in metrics if k.startswith("bpp/")) == {
      "bpp/bfc/y", "bpp/bfc/z", "bpp/p3_residual/y", "bpp/p3_residual/z"}  # residual on by default
  with pytest.raises(errors.ConfigError, match="holds a run of codec 'lmfc'"):
    train_lib.train_and_evaluate(smoke(base_config, steps=2), str(tmp_path))


def test_trainable_updates_the_matching_parameters_alone():
  optim = base_config.get_config("smoke").optim
  with optim.unlocked():
    optim.update(lr=0.1, warmup_steps=1, schedule="constant", trainable="gain$")
  params = {"models_p3": {"gain": np.ones((2, 3), np.float32),
                          "g_a": {"kernel": np.ones((3,), np.float32)}},
            "gain_net": {"bias": np.ones((3,), np.float32)}}
  assert train_lib.check_trainable(params, optim.trainable) == (1, 3)
  tx = train_lib.make_optimizer(optim, 10)
  state, new = tx.init(params), params
  grads = jax.tree_util.tree_map(np.ones_like, params)
  for _ in range(3):
    updates, state = tx.update(grads, state, new)
    new = jax.tree_util.tree_map(lambda p, u: p + u, new, updates)
  assert np.all(np.asarray(new["models_p3"]["gain"]) < 0.9)  # trained
  np.testing.assert_array_equal(new["models_p3"]["g_a"]["kernel"], 1.0)  # frozen
  np.testing.assert_array_equal(new["gain_net"]["bias"], 1.0)
  with pytest.raises(errors.ConfigError, match="not a regular expression"):
    train_lib.check_trainable(params, "gain(")


def test_bad_configs(tmp_path):
  with pytest.raises(errors.ConfigError, match="no option"):
    train_lib.train_and_evaluate(smoke(base_config, **{"codec.kwargs": {"latent_chanels": 8}}),
                                 str(tmp_path / "a"))
  with pytest.raises(errors.ConfigError, match="lambdas"):
    train_lib.train_and_evaluate(smoke(base_config, **{"loss.lmbda": -1.0, "loss.lmbdas": ()}),
                                 str(tmp_path / "b"))
  with pytest.raises(errors.ConfigError, match="lambdas"):
    train_lib.train_and_evaluate(smoke(base_config, **{"loss.lmbdas": (1.0, 0.0)}),
                                 str(tmp_path / "c"))
  with pytest.raises(errors.ConfigError, match="mixed_fraction"):
    train_lib.train_and_evaluate(smoke(base_config, **{"loss.mixed_fraction": 1.0}),
                                 str(tmp_path / "d"))
  with pytest.raises(errors.ConfigError, match="one weight per quality"):
    train_lib.train_and_evaluate(smoke(base_config, **{"loss.quality_weights": (1.0, 2.0)}),
                                 str(tmp_path / "e"))
  n = len(base_config.get_config("smoke").loss.lmbdas)
  with pytest.raises(errors.ConfigError, match="non-negative"):
    train_lib.train_and_evaluate(
        smoke(base_config, **{"loss.quality_weights": (-1.0,) + (1.0,) * (n - 1)}),
        str(tmp_path / "f"))
  with pytest.raises(errors.ConfigError, match="matches no parameter"):
    train_lib.train_and_evaluate(smoke(base_config, **{"optim.trainable": "no_such_param"}),
                                 str(tmp_path / "g"))
  config = base_config.get_config("smoke")
  with pytest.raises(AttributeError):
    config.loss.lmbdaa = 1.0  # Locked: a typo is an error, not a new field.


@pytest.mark.slow  # a full smoke-training compile (about a minute on two cores) for one failure path
def test_nan_loss_stops_with_step_and_saves_nothing_broken(tmp_path):
  # Warmup of one step: step 1 trains at lr 0, step 2 at lr 1e30 (params ~1e30, still finite), and
  # the loss of step 3 is NaN. With a checkpoint every step, steps 1 and 2 are saved before it.
  config = smoke(base_config, steps=6, checkpoint_every=1, keep_checkpoints=10, log_every=100,
                 **{"optim.lr": 1e30, "optim.warmup_steps": 1, "optim.clip_norm": 1e30})
  with pytest.raises(errors.TrainingError, match=r"at step \d+") as info:
    train_lib.train_and_evaluate(config, str(tmp_path))
  failed_at = int(re.search(r"at step (\d+)", str(info.value)).group(1))
  folder = tmp_path / "checkpoints"
  assert not _saving_steps(tmp_path), "a save was still in flight when the error was raised"
  saved = sorted(_finished_steps(tmp_path))
  assert saved, "no checkpoint was written before the divergence: the test checks nothing"
  # Nothing at or after the diverged step (not even a half-written save), and no final tables.
  assert all(int(p.name.split(".")[0]) < failed_at for p in folder.iterdir()), (
      failed_at, sorted(p.name for p in folder.iterdir()))
  assert not (tmp_path / "tables").exists() or not any((tmp_path / "tables").iterdir())
  for step in saved:  # Every checkpoint written before the divergence holds finite parameters.
    _, params, _, _ = train_lib.load_codec(tmp_path, step)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params)), step


def _finished_steps(workdir):
  folder = workdir / "checkpoints"
  return [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []


def _saving_steps(workdir):  # orbax writes a step to "<step>.orbax-checkpoint-tmp", then renames it
  folder = workdir / "checkpoints"
  return [int(p.name.split(".")[0]) for p in folder.glob("*.orbax-checkpoint-tmp*")]


@pytest.mark.slow  # two train.py processes: about two minutes on two cores
def test_resume_after_sigkill_mid_save(tmp_path):
  cmd = [sys.executable, "train.py", "--config", "configs/base.py:smoke", "--workdir",
         str(tmp_path), "--config.steps=400", "--config.checkpoint_every=2",
         "--config.progress=False"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while time.time() < deadline:
      saving = _saving_steps(tmp_path)
      if saving and max(saving) >= 4:  # Kill in the middle of a save.
        break
      time.sleep(0.005)
    else:
      pytest.fail("no checkpoint of step >= 4 started within 300 s")
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  killed_at = max(_finished_steps(tmp_path))
  assert killed_at >= max(saving) - 2  # At most one interval (checkpoint_every=2) is lost.
  out = subprocess.run(cmd[:-2] + [f"--config.steps={killed_at + 2}", "--config.progress=False"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"from step {killed_at} " in out.stdout
  assert (tmp_path / "tables" / f"{killed_at + 2}.npz").exists()
  assert not _saving_steps(tmp_path)


SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from hssc_jax import train_lib
from hssc_jax.codecs.hyperprior import HyperpriorCodec
codec = HyperpriorCodec(channels=(4, 8, 8), latent_channels=8, hidden_channels=8, hyper_channels=8)
rng = np.random.default_rng(0)
feats = {s: rng.normal(size=(8, 16 >> i, 16 >> i, c)).astype(np.float32)
         for i, (s, c) in enumerate(zip(("p3", "p4", "p5"), (4, 8, 8)))}
batch = {"features": feats, "pixels": np.full((8,), 64.0 * 64, np.float32)}
key = jax.random.PRNGKey(0)
params = codec.init({"params": key, "noise": key}, feats, True)["params"]
tx = optax.adam(1e-3)
step = train_lib.make_train_step(codec, tx, key, 2.0, {})
def run(devices):
  mesh = Mesh(np.asarray(devices), ("data",))
  rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  state = jax.device_put({"step": jnp.zeros((), jnp.int32), "params": params,
                          "opt_state": tx.init(params)}, rep)
  state, m = jax.jit(step, out_shardings=(rep, rep))(state, jax.device_put(batch, dat))
  return jax.device_get(state["params"]), float(m["loss"])
assert jax.device_count() == 8
p8, l8 = run(jax.devices())
p1, l1 = run(jax.devices()[:1])
np.testing.assert_allclose(l8, l1, rtol=1e-5)
for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("OK", l8, l1)
"""


@pytest.mark.slow  # compiles the train step twice (one and two devices), a minute on 2 cores
def test_sharded_step_equals_unsharded():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, "-c", SHARDED], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
