"""Per-quality priors of the hyper-latents (`training.z_priors`, `zoo.fit_z_priors`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hssc_jax import errors, zoo
from hssc_jax.codecs.hyperprior import HyperpriorCodec
from hssc_jax.entropy import factorized
from hssc_jax.training import z_priors

SCALES = ("p3", "p4", "p5")
CHANNELS = (4, 8, 8)
WIDTHS = dict(latent_channels=8, hidden_channels=8, hyper_channels=8)
SMALL = dict(WIDTHS, channels=CHANNELS)


def _feats(seed, batch=1, size=32):
  rng = np.random.default_rng(seed)
  return {s: rng.normal(size=(batch, size >> i, size >> i, c)).astype(np.float32)
          for i, (s, c) in enumerate(zip(SCALES, CHANNELS))}


def _params(codec):
  key = jax.random.PRNGKey(0)
  return codec.init({"params": key, "noise": key}, _feats(0, batch=2), True)["params"]


def test_entropy_bottleneck_holds_one_density_per_quality():
  z = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 3, 5)) * 3, jnp.float32)
  shared = factorized.EntropyBottleneck()
  stacked = factorized.EntropyBottleneck(qualities=4)
  key = jax.random.PRNGKey(0)
  params = stacked.init({"params": key}, z, "round", 2)["params"]["density"]
  one = shared.init({"params": key}, z, "round")["params"]["density"]
  assert all(params[k].shape == (4, *one[k].shape) for k in one)
  params = dict(params, bias_0=params["bias_0"].at[1].add(2.0))  # quality 1's density moves
  bits = [stacked.apply({"params": {"density": params}}, z, "round", q)[1].sum() for q in range(4)]
  assert bits[0] == bits[2] == bits[3] != bits[1]
  _, traced = jax.jit(lambda q: stacked.apply({"params": {"density": params}}, z, "round", q))(1)
  np.testing.assert_allclose(traced.sum(), bits[1], rtol=1e-6)


def test_z_priors_is_hashed_only_when_set():
  """Codecs without per-quality priors keep the fingerprints they had before the field existed."""
  assert "z_priors" not in HyperpriorCodec(**SMALL, qualities=3).decoding_config()
  assert HyperpriorCodec(**SMALL, qualities=3, z_priors=True).decoding_config()["z_priors"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
  root = tmp_path_factory.mktemp("zp")
  codec = HyperpriorCodec(**SMALL, qualities=3)
  path = zoo.save("tiny", "hyperprior", dict(WIDTHS, qualities=3), SCALES, CHANNELS,
                  _params(codec), root / "shared")
  out, report = zoo.fit_z_priors(path, [_feats(s, batch=2) for s in range(1, 9)], root / "fitted",
                                 steps=300)
  return root, out, report


def test_fitted_priors_shrink_z_and_leave_everything_else_as_it_was(fitted):
  """On images the fit never saw, every quality's z streams cost less, its y streams are the same
  bytes and the decoded features the same values; the old and new bitstreams do not mix."""
  root, out, report = fitted
  info = zoo.read_info(out)
  assert info["codec_kwargs"]["z_priors"] and info["z_priors_fit"]["pyramids"] == 8
  assert set(report) == {f"models_{s}/entropy_bottleneck" for s in SCALES}
  for r in report.values():
    assert len(r["bits_after"]) == 3 and all(a < b for a, b in zip(r["bits_after"],
                                                                    r["bits_before"]))
  for q in range(3):
    old, new = zoo.load("tiny", q, root / "shared"), zoo.load("tiny", q, root / "fitted")
    assert old.fingerprint() != new.fingerprint()
    z_old = z_new = 0
    for seed in (20, 21, 22):
      feats = _feats(seed)
      a, b = old.compress(feats, (256, 256)), new.compress(feats, (256, 256))
      sa = old.codec.unpack(old.params, old.tables, a).streams
      sb = new.codec.unpack(new.params, new.tables, b).streams
      assert all(sa[f"{s}/y"] == sb[f"{s}/y"] for s in SCALES)
      z_old += sum(len(sa[f"{s}/z"]) for s in SCALES)
      z_new += sum(len(sb[f"{s}/z"]) for s in SCALES)
      da, db = old.decompress(a), new.decompress(b)
      assert all(np.array_equal(da[s], db[s]) for s in SCALES)
      with pytest.raises(errors.ModelMismatchError):
        new.decompress(a)
    assert z_new < z_old


def test_fit_and_respace_refuse_what_they_cannot_do(fitted):
  root, out, _ = fitted
  with pytest.raises(errors.ConfigError, match="per quality"):
    zoo.respace(out, [0, 1], root / "respaced")
  with pytest.raises(errors.ConfigError, match="once"):
    zoo.fit_z_priors(out, [_feats(1, batch=2)], root / "again")
  codec = HyperpriorCodec(**SMALL)
  with pytest.raises(errors.ConfigError, match="variable-rate"):
    z_priors.fit(codec, _params(codec), [_feats(1, batch=2)])
