"""Property checks every learned feature codec must pass (imported by path from codec tests)."""

import copy

import jax
import numpy as np
import pytest

from hssc_jax import errors


def pyramid(channels=(16, 32, 64), size=40, batch=1, seed=0):
  rng = np.random.default_rng(seed)
  names = ("p3", "p4", "p5")
  return {n: (rng.normal(size=(batch, size >> i, size >> i, c)) * 2).astype(np.float32)
          for i, (n, c) in enumerate(zip(names, channels))}


def odd_pyramid(channels=(16, 32, 64)):
  """A pyramid of sizes no stride divides (37x29 at P3, ceil-halved below), for the padding and
  cropping of codecs whose latents are strided."""
  sizes = ((37, 29), (19, 15), (10, 8))
  return {n: np.ones((1, h, w, c), np.float32)
          for n, (h, w), c in zip(("p3", "p4", "p5"), sizes, channels)}


def init(codec, feats):
  key = jax.random.PRNGKey(0)
  return codec.init({"params": key, "noise": key}, feats, True)


def check_forward(codec, variables, feats):
  out = jax.jit(lambda v, f: codec.apply(v, f, True, rngs={"noise": jax.random.PRNGKey(1)}))(
      variables, feats)
  for s, a in feats.items():
    assert out["features_hat"][s].shape == a.shape
  for k, b in out["bits"].items():
    assert b.shape == (next(iter(feats.values())).shape[0],), k
    assert np.all(np.isfinite(b)) and np.all(np.asarray(b) >= 0), k
  return out


def decode_independently(codec, params, tables, data):
  """`codec.decompress` with every `jax.jit` disabled, on fresh copies of `params` and `tables`.

  A path that shares nothing with an ordinary decode: no compiled executable is reused (the
  module-level cache of jitted wrappers, `base.compiled`, and others
  key on module *equality*, so `codec.clone()` would hit the same entries; under
  `jax.disable_jit()` those wrappers run op by op), and memos keyed on the identity of the
  parameters (fingerprints, the float64 copy of `HostFunction`) miss.
  """
  params = jax.tree.map(lambda a: np.array(a, copy=True), params)
  tables = copy.deepcopy(tables)
  with jax.disable_jit():
    return codec.decompress(params, tables, data)


def check_round_trip(codec, variables, feats, atol=1e-4, eager_atol=0.0):
  """decompress(compress(x)) equals the evaluation-mode reconstruction (within `atol`) and a
  decode with jit disabled (`decode_independently`; bit-exact unless `eager_atol` > 0)."""
  params = variables["params"]
  tables = codec.build_tables(params)
  data = codec.compress(params, tables, feats, (320, 320))
  decoded = codec.decompress(params, tables, data)
  eager = decode_independently(codec, params, tables, data)
  ev = jax.jit(lambda v, f: codec.apply(v, f, False))(variables, feats)
  assert set(decoded) == set(eager) == set(feats)
  for s in feats:
    assert decoded[s].shape == feats[s].shape, s
    np.testing.assert_allclose(decoded[s], eager[s], atol=eager_atol, rtol=0, err_msg=s)
    np.testing.assert_allclose(decoded[s], ev["features_hat"][s], atol=atol, rtol=0, err_msg=s)
  return params, tables, data, ev


def check_bad_input(codec, params, tables, data, feats):
  bad = dict(feats)
  bad["p4"] = bad["p4"].copy()
  bad["p4"][0, 0, 0, 0] = np.nan
  with pytest.raises(errors.InvalidInputError, match="NaN"):
    codec.compress(params, tables, bad, (320, 320))
  with pytest.raises(errors.InvalidInputError, match="scales"):
    codec.compress(params, tables, {k: v for k, v in feats.items() if k != "p3"}, (320, 320))
  with pytest.raises(errors.InvalidInputError, match="rank 4"):
    codec.compress(params, tables, {**feats, "p3": feats["p3"][0]}, (320, 320))
  with pytest.raises(errors.TruncatedBitstreamError):
    codec.decompress(params, tables, data[:-7])
  flipped = bytearray(data)
  flipped[len(data) // 2] ^= 4
  with pytest.raises(errors.CorruptBitstreamError):
    codec.decompress(params, tables, bytes(flipped))
  other = jax.tree.map(lambda a: a + 1e-3, params)
  with pytest.raises(errors.ModelMismatchError):
    codec.decompress(other, tables, data)
