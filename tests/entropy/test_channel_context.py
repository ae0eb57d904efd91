import dataclasses
import os
import subprocess
import sys
import textwrap

import flax
import jax
import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.entropy import channel_context as cc
from hssc_jax.entropy import gaussian

SCALES = gaussian.default_scale_table()
MODEL = cc.ChannelContext(channels=12, num_slices=3, max_support=2, hidden=(16,))


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  y = (rng.normal(size=(1, 12, 10, 12)) * 3).astype(np.float32)
  hm = rng.normal(size=y.shape).astype(np.float32)
  hs = (rng.normal(size=y.shape) + 2).astype(np.float32)
  key = jax.random.PRNGKey(0)
  variables = MODEL.init({"params": key, "noise": key}, y, hm, hs, "noise")
  return y, hm, hs, variables["params"], gaussian.build_table(SCALES)


def test_slices_cover_channels():
  assert cc.slice_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
  with pytest.raises(ValueError):
    cc.slice_bounds(4, 5)


def test_training_pass_shapes_bits_and_gradients(setup):
  y, hm, hs, params, _ = setup
  y_hat, bits = MODEL.apply({"params": params}, y, hm, hs, "noise",
                            rngs={"noise": jax.random.PRNGKey(1)})
  assert y_hat.shape == y.shape and bits.shape == y.shape
  assert np.all(np.isfinite(bits)) and float(bits.min()) >= 0
  grads = jax.grad(lambda p: MODEL.apply({"params": p}, y, hm, hs, "noise",
                                         rngs={"noise": jax.random.PRNGKey(1)})[1].sum())(params)
  norms = [float(np.abs(g).sum()) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(norms) > 0


def test_later_slices_depend_on_earlier_ones(setup):
  y, hm, hs, params, _ = setup
  prev = [np.zeros((1, 12, 10, 4), np.float32), np.zeros((1, 12, 10, 4), np.float32)]
  mu0, _ = MODEL.apply({"params": params}, 2, hm, hs, prev, method=cc.ChannelContext.entropy_parameters)
  prev[1] = prev[1] + 1
  mu1, _ = MODEL.apply({"params": params}, 2, hm, hs, prev, method=cc.ChannelContext.entropy_parameters)
  assert not np.allclose(mu0, mu1)


def test_decompress_compress_equals_quantize(setup):
  y, hm, hs, params, table = setup
  data, y_hat_enc, digest = cc.compress(MODEL, params, table, SCALES, y, hm, hs)
  y_hat_dec = cc.decompress(MODEL, params, table, SCALES, data, hm, hs, digest)
  np.testing.assert_array_equal(y_hat_dec, y_hat_enc)
  y_hat_jit, _ = jax.jit(lambda *a: MODEL.apply({"params": params}, *a, "round"))(y, hm, hs)
  np.testing.assert_allclose(y_hat_dec, y_hat_jit, atol=1e-4)


def test_decoding_through_differently_compiled_path_is_bit_exact(setup, tmp_path):
  """A stream written under jit decodes bit-exactly op by op, and under other XLA flags."""
  y, hm, hs, params, table = setup
  data, y_hat_enc, digest = cc.compress(MODEL, params, table, SCALES, y, hm, hs, jit=True)
  with jax.disable_jit():
    y_hat_eager = cc.decompress(MODEL, params, table, SCALES, data, hm, hs, digest, jit=False)
  np.testing.assert_array_equal(y_hat_eager, y_hat_enc)

  flat = flax.traverse_util.flatten_dict(params, sep="/")
  np.savez(tmp_path / "in.npz", data=np.frombuffer(data, np.uint8), hm=hm, hs=hs,
           digest=np.array(digest, np.uint64), **{"p:" + k: v for k, v in flat.items()})
  script = textwrap.dedent(f"""
      import numpy as np, flax
      from hssc_jax.entropy import channel_context as cc, gaussian
      z = np.load({str(tmp_path / 'in.npz')!r})
      params = flax.traverse_util.unflatten_dict(
          {{k[2:]: z[k] for k in z.files if k.startswith("p:")}}, sep="/")
      model = cc.ChannelContext(**{dataclasses.asdict(MODEL) | {'parent': None, 'name': None}!r})
      scales = gaussian.default_scale_table()
      out = cc.decompress(model, params, gaussian.build_table(scales), scales, z["data"].tobytes(),
                          z["hm"], z["hs"], int(z["digest"]))
      np.save({str(tmp_path / 'out.npy')!r}, out)
      """)
  env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
  subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
  np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), y_hat_enc)


def test_index_mismatch_raises_determinism_error(setup):
  y, hm, hs, params, table = setup
  data, _, digest = cc.compress(MODEL, params, table, SCALES, y, hm, hs)
  with pytest.raises(errors.DeterminismError, match="indexes differ"):
    cc.decompress(MODEL, params, table, SCALES, data, hm, hs, digest ^ 1)


def test_bad_inputs(setup):
  y, hm, hs, params, table = setup
  with pytest.raises(errors.InvalidInputError, match="NaN/inf"):
    cc.compress(MODEL, params, table, SCALES, np.where(y > 5, np.nan, y), hm, hs)
  with pytest.raises(errors.InvalidInputError, match="channels"):
    cc.compress(MODEL, params, table, SCALES, y[..., :6], hm, hs)
