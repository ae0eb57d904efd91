"""HSC codec: shapes, bits per level, round trip, bad inputs and bitstreams, P2-P5, configs."""

import importlib.util
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import common
from configs import hsc as hsc_config
from hssc_jax import bitstream
from hssc_jax import errors
from hssc_jax.codecs import registry
from hssc_jax.codecs.hsc import HSCCodec

_spec = importlib.util.spec_from_file_location("codec_checks", Path(__file__).with_name("codec_checks.py"))
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

SMALL = dict(channels=(16, 32, 64), core_channels=16, latent_channels=16, hidden_channels=16,
             hyper_channels=8, context_slices=2, context_hidden=(8,))
STREAMS = {"core/y", "core/z", "feature/y"}
# Both levels' channel-context means come from the float64 host path when coding and from float32
# in `apply`: the decoded pyramid equals the evaluation-mode one up to float32 rounding.
ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
  codec = HSCCodec(**SMALL)
  feats = checks.pyramid()
  return codec, checks.init(codec, feats), feats


def _resampling_convs(codec, variables, feats):
  """{resampler: [(conv class, input HxW, output HxW, output channels), ...]}: the convolutions the
  evaluation forward runs inside the per-scale resamplers `fuse_in_<s>` / `unfuse_<s>` (found by
  intercepting module calls, not by parameter names)."""
  found = {}

  def spy(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    m = context.module
    if context.method_name == "__call__" and isinstance(m, (nn.Conv, nn.ConvTranspose)):
      top = m.scope.path[0]
      if top.startswith(("fuse_in_", "unfuse_")):
        found.setdefault(top, []).append(
            (type(m).__name__, args[0].shape[1:3], out.shape[1:3], out.shape[3]))
    return out

  with nn.intercept_methods(spy):
    jax.eval_shape(lambda v, f: codec.apply(v, f, False), variables, feats)
  return found


def test_forward_round_trip_bits_per_level_and_bad_inputs(model):
  codec, variables, feats = model
  out = checks.check_forward(codec, variables, feats)
  assert set(out["bits"]) == STREAMS
  assert all(np.all(np.asarray(b) > 0) for b in out["bits"].values())
  # Finer scales go down to the fusion grid (p4, 20x20) by stride-2 convs, coarser ones up by
  # sub-pixel convs (a conv to 4x the width, pixel-shuffled; no transposed conv); the
  # reconstruction goes the other way. Every width is min(hidden_channels, channels) = 16.
  assert _resampling_convs(codec, variables, feats) == {
      "fuse_in_p3": [("Conv", (40, 40), (20, 20), 16)],   # stride 2 down
      "fuse_in_p4": [("Conv", (20, 20), (20, 20), 16)],   # already on the fusion grid
      "fuse_in_p5": [("Conv", (10, 10), (10, 10), 64)],   # sub-pixel x2 up
      "unfuse_p3": [("Conv", (20, 20), (20, 20), 64)],    # sub-pixel x2 up
      "unfuse_p4": [("Conv", (20, 20), (20, 20), 16)],
      "unfuse_p5": [("Conv", (20, 20), (10, 10), 16)],    # stride 2 down
  }
  params, tables, data, _ = checks.check_round_trip(codec, variables, feats, atol=ATOL)
  c = bitstream.unpack(data)
  assert set(c.streams) == set(c.stream_bits) == STREAMS
  assert all(b > 0 for b in c.stream_bits.values())
  # Core latent on the coarsest grid (10 padded to 16, one stride-2 stage); feature latent from the
  # fusion grid (p4, 20x20) after one stride-2 stage.
  assert c.shapes["core/y"] == (1, 8, 8, 16) and c.shapes["core/z"] == (1, 2, 2, 8)
  assert c.shapes["feature/y"] == (1, 10, 10, 16)
  assert c.metadata["sizes"] == [[40, 40], [20, 20], [10, 10]]
  checks.check_bad_input(codec, params, tables, data, feats)


def _repack(codec, params, tables, c, **changes):
  fields = {"shapes": c.shapes, "streams": c.streams, "metadata": c.metadata, **changes}
  return bitstream.pack(bitstream.Container(codec.codec_id, codec.fingerprint(params, tables),
                                            c.image_size, fields["shapes"], fields["streams"],
                                            fields["metadata"]))


def test_malformed_containers_are_refused(model):
  codec, variables, feats = model
  params = variables["params"]
  tables = codec.build_tables(params)
  c = bitstream.unpack(codec.compress(params, tables, feats, (320, 320)))
  bad = [
      dict(streams={k: v for k, v in c.streams.items() if k != "feature/y"}),
      dict(metadata={k: v for k, v in c.metadata.items() if k != "feature/crc"}),
      dict(metadata={**c.metadata, "sizes": [[40, 40], [20, 20]]}),
      dict(metadata={**c.metadata, "sizes": [[40, 40], [24, 20], [10, 10]]}),  # feature/y mismatch
      dict(metadata={**c.metadata, "core/crc": "x"}),
      dict(shapes={**c.shapes, "core/z": (1, 3, 2, 8)}),
  ]
  for changes in bad:
    with pytest.raises(errors.CorruptBitstreamError):
      codec.decompress(params, tables, _repack(codec, params, tables, c, **changes))
  # A wrong index digest is caught by the determinism guard of the core level.
  with pytest.raises(errors.DeterminismError):
    codec.decompress(params, tables, _repack(
        codec, params, tables, c, metadata={**c.metadata, "core/crc": c.metadata["core/crc"] ^ 1}))
  # The feature stream is decoded with the core latent as its prior: with another image's (valid)
  # core level, the feature level's entropy indexes change and its digest check fails.
  c2 = bitstream.unpack(codec.compress(params, tables, checks.pyramid(seed=3), (320, 320)))
  core2 = {k: v for k, v in c2.streams.items() if k.startswith("core/")}
  with pytest.raises(errors.DeterminismError):
    codec.decompress(params, tables, _repack(
        codec, params, tables, c, streams={**c.streams, **core2},
        metadata={**c.metadata, "core/crc": c2.metadata["core/crc"]}))


@pytest.mark.slow  # ~25 s on a loaded 2-core machine (op-by-op init of a second model)
def test_four_scales_p2_to_p5_with_odd_sizes():
  scales, channels = ("p2", "p3", "p4", "p5"), (8, 16, 32, 64)
  codec = HSCCodec(**{**SMALL, "channels": channels, "context_slices": 1}, scales=scales)
  sizes = ((37, 45), (19, 23), (10, 12), (5, 6))
  rng = np.random.default_rng(4)
  feats = {s: rng.normal(size=(1, h, w, ch)).astype(np.float32)
           for s, (h, w), ch in zip(scales, sizes, channels)}
  variables = checks.init(codec, feats)
  out = checks.check_forward(codec, variables, feats)
  assert set(out["bits"]) == STREAMS
  _, _, data, _ = checks.check_round_trip(codec, variables, feats, atol=ATOL)
  c = bitstream.unpack(data)
  assert c.shapes["feature/y"] == (1, 5, 6, 16)  # fusion grid: p4 (second coarsest)
  assert c.shapes["core/y"] == (1, 4, 4, 16)      # p5 5x6 padded to 8x8, one stride-2 stage


def test_variable_rate_synthesis_reads_the_core_latent_out_of_its_gain_domain():
  # Latents of quality q are the quality-free latents times q's gain vectors; at init the inverse
  # gains invert them exactly, so with ungained_core_synthesis every quality decodes them alike.
  feats = checks.pyramid()
  sizes = tuple(tuple(feats[s].shape[1:3]) for s in ("p3", "p4", "p5"))
  rng = np.random.default_rng(5)
  y_f = rng.normal(size=(1, 10, 10, SMALL["latent_channels"])).astype(np.float32)
  y_c = rng.normal(size=(1, 8, 8, SMALL["core_channels"])).astype(np.float32)
  params = checks.init(HSCCodec(**SMALL, qualities=6), feats)["params"]  # same for both settings
  for ungained in (True, False):
    codec = HSCCodec(**SMALL, qualities=6, ungained_core_synthesis=ungained)
    out = []
    for q in (0, 5):
      g_f, g_c = np.exp(params["feature_gain"][q]), np.exp(params["core"]["gain"][q])
      out.append(codec.clone(quality=q).apply({"params": params}, y_f * g_f, y_c * g_c, sizes,
                                              method="synthesize"))
    same = all(np.allclose(out[0][s], out[1][s], atol=1e-5) for s in out[0])
    assert same == ungained, (ungained,
                              {s: float(np.abs(out[0][s] - out[1][s]).max()) for s in out[0]})
  assert hsc_config.get_config().codec.kwargs.ungained_core_synthesis
  # Decoding depends on the field, so the fingerprint binds it; at its default (the behaviour of
  # models trained before it) it is left out, so those keep their fingerprints.
  old, new = HSCCodec(**SMALL), HSCCodec(**SMALL, ungained_core_synthesis=True)
  assert "ungained_core_synthesis" not in old.decoding_config()
  assert new.decoding_config() == dict(old.decoding_config(), ungained_core_synthesis=True)


def test_config_errors():
  feats = checks.pyramid()
  with pytest.raises(errors.ConfigError, match="fusion_scale"):
    checks.init(HSCCodec(**SMALL, fusion_scale="p6"), feats)
  with pytest.raises(errors.ConfigError, match="channel counts"):
    checks.init(HSCCodec(**{**SMALL, "channels": (16, 32)}), feats)
  with pytest.raises(errors.ConfigError, match="context_slices"):
    checks.init(HSCCodec(**{**SMALL, "context_slices": 0}), feats)
  with pytest.raises(errors.ConfigError, match="at least 2 scale"):
    HSCCodec(**{**SMALL, "channels": (64,)}, scales=("p5",)).init(
        jax.random.PRNGKey(0), {"p5": feats["p5"]}, False)
  with pytest.raises(errors.ConfigError, match="transform"):
    checks.init(HSCCodec(**SMALL, transform="dct"), feats)


def test_configs_and_registry():
  for arg, slices in (("smoke", 4), ("", 4), ("context=false", 1)):
    config = hsc_config.get_config(arg)
    assert config.codec.name == "hsc"
    kw = config.codec.kwargs
    assert kw.context_slices == slices
    codec = registry.build_codec("hsc", kw, ("p3", "p4", "p5"), (32, 48, 64))
    assert isinstance(codec, HSCCodec) and codec.channels == (32, 48, 64)
  assert hsc_config.get_config("smoke").codec.kwargs.latent_channels == 8
  assert len(hsc_config.get_sweep()) == len(common.LAMBDAS)
  with pytest.raises(errors.ConfigError, match="detector"):
    registry.build_codec("hsc", {"scales": ("p3",)}, ("p3", "p4", "p5"), (32, 48, 64))


@pytest.mark.slow  # > 2 min on a loaded 2-core machine
def test_smoke_config_trains(tmp_path):
  from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
  config = hsc_config.get_config("smoke")
  with config.unlocked():
    config.steps, config.progress = 2, False
  metrics = train_lib.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["loss"]) and metrics["bpp"] > 0
  assert set(k for k in metrics if k.startswith("bpp/")) == {f"bpp/{k}" for k in STREAMS}
  codec, params, tables, run = train_lib.load_codec(tmp_path)
  assert run["codec"] == "hsc"
  rng = np.random.default_rng(0)
  feats = {s: rng.normal(size=(1, 16 >> i, 16 >> i, c)).astype(np.float32)
           for i, (s, c) in enumerate(zip(run["scales"], run["channels"]))}
  out = codec.decompress(params, tables, codec.compress(params, tables, feats, (128, 128)))
  ev = codec.denormalize(jax.jit(lambda p, f: codec.apply({"params": p}, f, False))(
      params, codec.normalize(feats))["features_hat"])  # compress normalizes, decompress undoes it
  for s in feats:
    np.testing.assert_allclose(out[s], ev[s], atol=ATOL, rtol=0)
