"""HSSC codec: shapes, rates, exact round trip, bad inputs, ablations, anchor path, smoke config."""

import importlib.util
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from configs import hssc as hssc_config
from hssc_jax import bitstream
from hssc_jax import errors
from hssc_jax.codecs import FeatureAnchor
from hssc_jax.codecs import inner
from hssc_jax.codecs import registry
from hssc_jax.codecs.hssc import HSSCCodec
from hssc_jax.layers import ResidualBlock, conv

_spec = importlib.util.spec_from_file_location("codec_checks", Path(__file__).with_name("codec_checks.py"))
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

# The jitted decoder and a decode with jit disabled (`checks.decode_independently`) agree up to
# float32 rounding (~2e-7 measured): XLA fuses the float32 rebuild (SFTNet) differently from op-by-op
# execution; the entropy-decoded latents themselves are identical.
EAGER_ATOL = 1e-5
SMALL = dict(channels=(16, 32, 64), compact_channels=32, transform_channels=16, latent_channels=16,
             hidden_channels=16, hyper_channels=8, attention_channels=8)


@pytest.fixture(scope="module")
def model():
  codec = HSSCCodec(**SMALL)
  feats = checks.pyramid()
  return codec, checks.init(codec, feats), feats


def test_forward_exact_round_trip_and_bad_inputs(model):
  codec, variables, feats = model
  out = checks.check_forward(codec, variables, feats)
  assert set(out["bits"]) == {"compact/y", "compact/z"}
  # Bit-exact: the decoder reproduces the evaluation-mode (training=False) reconstruction.
  params, tables, data, ev = checks.check_round_trip(codec, variables, feats, atol=0,
                                                     eager_atol=EAGER_ATOL)
  c = bitstream.unpack(data)
  assert set(c.streams) == {"compact/y", "compact/z"}
  assert c.shapes["compact/x"] == (1, 10, 10, 32)  # the coarsest grid, compact_channels
  assert all(b > 0 for b in c.stream_bits.values())
  checks.check_bad_input(codec, params, tables, data, feats)


def test_anchor_path_codes_the_compact_representation(model):
  codec, variables, feats = model
  params = variables["params"]
  compact = codec.compact(params, feats)
  assert compact.shape == (1, 10, 10, 32)
  # The learned path is fuse -> hyperprior -> rebuild; `reconstruct` is the rebuild alone.
  rebuilt = codec.reconstruct(params, compact)
  assert {s: a.shape for s, a in rebuilt.items()} == {s: a.shape for s, a in feats.items()}
  anchor = FeatureAnchor.fit([{"compact": compact}], codec=inner.HEVC(lossless=True))
  decoded = anchor.decompress(anchor.compress({"compact": compact}, (320, 320), 22))["compact"]
  step = (anchor.value_range[1] - anchor.value_range[0]) / 1023
  assert np.abs(decoded - compact).max() <= step / 2 * (1 + 1e-5)
  out = codec.reconstruct(params, decoded, [a.shape[1:3] for a in feats.values()])
  for s in feats:
    assert out[s].shape == feats[s].shape
    np.testing.assert_allclose(out[s], rebuilt[s], atol=0.05 * np.abs(rebuilt[s]).max())
  with pytest.raises(errors.InvalidInputError, match="channels"):
    codec.reconstruct(params, compact[..., :8])


def _size(tree):
  return sum(np.size(x) for x in jax.tree.leaves(tree))


def _has_param(tree, name):
  """Whether a parameter explicitly named `name` (`self.param(name, ...)`) is in `tree`."""
  return any(path[-1].key == name for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


class _PlainFusion(nn.Module):
  """What the `inter_scale=False` ablation fuses with: conv1x1([e, d]), then a residual block."""

  features: int

  @nn.compact
  def __call__(self, d, e):
    return ResidualBlock(self.features)(conv(self.features, 1)(jnp.concatenate([e, d], -1)))


def test_ablations_build_run_and_round_trip(model):
  _, full, _ = model
  codec = HSSCCodec(**SMALL, inter_scale=False, adaptive_reconstruction=False)
  feats = checks.pyramid(seed=1)
  variables = checks.init(codec, feats)
  p, q = full["params"], variables["params"]
  # adaptive_reconstruction=False drops exactly the (R1)-(R4) enhancement of every scale; every
  # other sub-tree but the fusions keeps its parameters.
  assert set(p) - set(q) == {f"enhance_{s}" for s in codec.scales} and set(q) <= set(p)
  fusions = [k for k in q if k.startswith("fusion_")]
  assert fusions
  keep = [k for k in q if k not in fusions]
  assert jax.tree.map(np.shape, {k: q[k] for k in keep}) == jax.tree.map(np.shape,
                                                                        {k: p[k] for k in keep})
  # inter_scale=False: each fusion is the plain concat fusion (no correlation gates, no cross
  # attention and its zero-init gain), with as many parameters as `_PlainFusion`.
  for k in fusions:
    s = k[len("fusion_"):]
    width = codec.widths[codec.scales[codec.compact_index] if s == "join" else s]
    d = e = jnp.zeros((1, 4, 4, width))
    plain = _size(_PlainFusion(e.shape[-1]).init(jax.random.PRNGKey(0), d, e))
    assert _size(q[k]) == plain < _size(p[k]), k
    assert _has_param(p[k], "gamma") and not _has_param(q[k], "gamma"), k
  checks.check_forward(codec, variables, feats)
  checks.check_round_trip(codec, variables, feats, atol=0, eager_atol=EAGER_ATOL)


def test_config_errors():
  feats = checks.pyramid()
  with pytest.raises(errors.ConfigError, match="compact_scale"):
    checks.init(HSSCCodec(**SMALL, compact_scale="p6"), feats)
  with pytest.raises(errors.ConfigError, match="channel counts"):
    checks.init(HSSCCodec(**{**SMALL, "channels": (16, 32)}), feats)
  with pytest.raises(errors.ConfigError, match="train_quantization"):
    checks.init(HSSCCodec(**SMALL, train_quantization="dither"), feats)


def test_configs_and_registry():
  for arg, inter, adaptive in (("smoke", True, True), ("smoke,no_inter", False, True),
                               ("no_adaptive", True, False)):
    config = hssc_config.get_config(arg)
    assert config.codec.name == "hssc"
    kw = config.codec.kwargs
    assert (kw.inter_scale, kw.adaptive_reconstruction) == (inter, adaptive)
    codec = registry.build_codec("hssc", kw, ("p3", "p4", "p5"), (32, 48, 64))
    assert isinstance(codec, HSSCCodec) and codec.inter_scale == inter
  assert len(hssc_config.get_sweep()) == len(common.LAMBDAS)


@pytest.mark.slow
def test_compact_scale_p4_and_context_model():
  """The compact representation on the middle grid (two cascades), with the channel context."""
  codec = HSSCCodec(**SMALL, compact_scale="p4", context_slices=2, context_hidden=(8,))
  feats = checks.pyramid(seed=2)
  variables = checks.init(codec, feats)
  assert codec.compact(variables["params"], feats).shape == (1, 20, 20, 32)
  # The channel context's means come from the float64 host path: equal up to float32 rounding.
  checks.check_round_trip(codec, variables, feats, atol=1e-5, eager_atol=EAGER_ATOL)


@pytest.mark.slow
def test_smoke_config_trains(tmp_path):
  from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
  config = hssc_config.get_config("smoke")
  with config.unlocked():
    config.steps, config.progress = 2, False  # (steps=1 trips optax: see report)
  metrics = train_lib.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["loss"]) and metrics["bpp"] > 0
  assert set(k for k in metrics if k.startswith("bpp/")) == {"bpp/compact/y", "bpp/compact/z"}
  codec, params, tables, run = train_lib.load_codec(tmp_path)
  assert run["codec"] == "hssc"
  rng = np.random.default_rng(0)
  feats = {s: rng.normal(size=(1, 16 >> i, 16 >> i, c)).astype(np.float32)
           for i, (s, c) in enumerate(zip(run["scales"], run["channels"]))}
  out = codec.decompress(params, tables, codec.compress(params, tables, feats, (128, 128)))
  ev = codec.denormalize(jax.jit(lambda p, f: codec.apply({"params": p}, f, False))(
      params, codec.normalize(feats))["features_hat"])  # compress normalizes, decompress undoes it
  for s in feats:
    # Equal up to the last float32 bit: the hyperprior decodes y_hat with float64 host means.
    np.testing.assert_allclose(out[s], ev[s], atol=1e-6, rtol=0)
