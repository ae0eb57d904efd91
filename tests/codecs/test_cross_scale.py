import importlib.util
from pathlib import Path

import flax
import jax
import numpy as np
import pytest

from hssc_jax import bitstream
from hssc_jax import errors
from hssc_jax import train_lib
from hssc_jax.codecs.cross_scale import CrossScaleCodec
from hssc_jax.codecs.cross_scale import CrossScaleMFIBACodec
from hssc_jax.codecs.hyperprior import HyperpriorCodec
from hssc_jax.training import widen

_spec = importlib.util.spec_from_file_location("codec_checks", Path(__file__).with_name("codec_checks.py"))
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

# The jitted decoder and one with jit disabled agree up to float32 rounding of the synthesis (XLA
# fuses it differently); the entropy-decoded latents, which condition the next scale, are identical.
EAGER_ATOL = 1e-5
SMALL = dict(channels=(16, 32, 64), latent_channels=(24, 20, 16), hidden_channels=24,
             hyper_channels=12, stages=(2, 1, 1), condition_hidden=8)


def _perturbed(variables, seed=1):
  """Variables with every parameter moved, so the zero-initialized condition heads act."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape) for a, k in
                                   zip(leaves, keys)])


@pytest.mark.parametrize("kw", [dict(), dict(qualities=3, quality=2), dict(coarse_to_fine=True),
                                dict(coarse_to_fine=True, qualities=3, quality=1)],
                         ids=["one_rate", "variable", "coarse_to_fine", "coarse_to_fine_variable"])
def test_round_trip_through_the_range_coder(kw):
  codec = CrossScaleCodec(**SMALL, **kw)
  feats = checks.pyramid()
  variables = _perturbed(checks.init(codec, feats))
  out = checks.check_forward(codec, variables, feats)
  assert set(out["bits"]) == {f"{s}/{k}" for s in ("p3", "p4", "p5") for k in ("y", "z")}
  params, tables, data, _ = checks.check_round_trip(codec, variables, feats,
                                                   eager_atol=EAGER_ATOL)
  if not kw or kw == dict(coarse_to_fine=True):
    checks.check_bad_input(codec, params, tables, data, feats)


@pytest.mark.parametrize("coarse_to_fine", [False, True], ids=["fine_to_coarse", "coarse_to_fine"])
def test_odd_sizes_are_padded_and_cropped(coarse_to_fine):
  codec = CrossScaleCodec(**SMALL, coarse_to_fine=coarse_to_fine)
  feats = checks.odd_pyramid()
  checks.check_round_trip(codec, _perturbed(checks.init(codec, feats)), feats,
                          eager_atol=EAGER_ATOL)


def test_starts_as_the_per_scale_codec_it_is_warm_started_from():
  """The condition heads start at zero: with the per-scale codec's parameters copied in, the
  cross-scale codec reconstructs and rates exactly as that codec does."""
  feats = checks.pyramid()
  plain = HyperpriorCodec(**{k: v for k, v in SMALL.items() if k != "condition_hidden"})
  cross = CrossScaleCodec(**SMALL)
  vp, vc = checks.init(plain, feats), checks.init(cross, feats)
  params = {s: dict(vc["params"][s], **vp["params"][s]) for s in vc["params"]}
  a = plain.apply(vp, feats, False)
  b = cross.apply({"params": params}, feats, False)
  for s in feats:
    np.testing.assert_allclose(a["features_hat"][s], b["features_hat"][s], atol=1e-5)
  for k in a["bits"]:
    np.testing.assert_allclose(a["bits"][k], b["bits"][k], rtol=1e-5)


def test_the_coarser_scales_depend_on_the_finer_ones():
  """P4's and P5's reconstructions change when only P3 changes; P3's does not depend on them."""
  codec = CrossScaleCodec(**SMALL)
  feats = checks.pyramid()
  variables = _perturbed(checks.init(codec, feats))
  other = dict(feats, p3=feats["p3"] + 1.0)
  a, b = (codec.apply(variables, f, False)["features_hat"] for f in (feats, other))
  assert not np.allclose(a["p4"], b["p4"]) and not np.allclose(a["p5"], b["p5"])
  other = dict(feats, p5=feats["p5"] + 1.0)
  c = codec.apply(variables, other, False)["features_hat"]
  np.testing.assert_array_equal(a["p3"], c["p3"])


def test_coarse_to_fine_the_finer_scales_depend_on_the_coarser_ones():
  """With `coarse_to_fine` P5 is coded first: P3's and P4's reconstructions and rates change when
  only P5 changes; P5's do not depend on P3."""
  codec = CrossScaleCodec(**SMALL, coarse_to_fine=True)
  feats = checks.pyramid()
  variables = _perturbed(checks.init(codec, feats))
  assert set(variables["params"]["models_p3"]) >= {"condition"}
  assert "condition" not in variables["params"]["models_p5"]
  a, b = (codec.apply(variables, f, False) for f in (feats, dict(feats, p5=feats["p5"] + 1.0)))
  for s in ("p3", "p4"):
    assert not np.allclose(a["features_hat"][s], b["features_hat"][s])
    assert not np.allclose(a["bits"][f"{s}/y"], b["bits"][f"{s}/y"])
  c = codec.apply(variables, dict(feats, p3=feats["p3"] + 1.0), False)
  np.testing.assert_array_equal(a["features_hat"]["p5"], c["features_hat"]["p5"])
  np.testing.assert_array_equal(a["bits"]["p5/y"], c["bits"]["p5/y"])


def test_coarse_to_fine_warm_start_from_fine_to_coarse_leaves_out_the_condition():
  """`overlay_params(..., exclude="condition")`: a coarse-to-fine codec takes every transform and
  gain of a fine-to-coarse one and none of its conditioning, which keeps its init (zero heads), so
  it starts as the source's scales coded independently."""
  feats = checks.pyramid()
  source = _perturbed(checks.init(CrossScaleCodec(**SMALL, qualities=3), feats))["params"]
  codec = CrossScaleCodec(**SMALL, qualities=3, coarse_to_fine=True)
  fresh = jax.tree.map(np.asarray, checks.init(codec, feats)["params"])
  params, copied, total = train_lib.overlay_params(fresh, source, exclude="condition")
  flat = {"/".join(k): v for k, v in
          flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, params)).items()}
  src = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(source).items()}
  ini = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(fresh).items()}
  assert copied == sum("condition" not in k for k in src) and total == len(flat)
  for k, v in flat.items():
    np.testing.assert_array_equal(v, ini[k] if "condition" in k else src[k])
  assert any("condition" in k for k in flat) and any("condition" in k for k in src)
  with pytest.raises(errors.ConfigError, match="not a regular expression"):
    train_lib.overlay_params(fresh, source, exclude="condition(")
  with pytest.raises(errors.ConfigError, match="matches no parameter"):
    train_lib.overlay_params(fresh, source, exclude="no_such_module")


def test_coarse_needs_cross_in_the_base_config():
  from configs import base as base_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="needs cross"):
    base_config.get_config("smoke,coarse")


@pytest.mark.parametrize("kw,match", [
    (dict(scales=("p5", "p4", "p3"), channels=(64, 32, 16)), "fine to coarse"),
    (dict(scales=("a", "b", "c")), "named p<k>"),
], ids=["coarse_first", "unnamed"])
def test_bad_scale_orders_are_config_errors(kw, match):
  codec = CrossScaleCodec(**dict(SMALL, **kw))
  feats = {s: np.ones((1, 8, 8, c), np.float32) for s, c in zip(codec.scales, codec.channels)}
  with pytest.raises(errors.ConfigError, match=match):
    checks.init(codec, feats)


# MFIBA's config trains the cross-scale codec and adds calibration and allocation, so it stays in
# the fast suite; the base configs (about 100 s each on 2 cores) run with the slow tests.
@pytest.mark.parametrize("module,arg,codec_name", [
    pytest.param("base", "cross", "cross_scale", marks=pytest.mark.slow),
    pytest.param("base", "cross,coarse", "cross_scale", marks=pytest.mark.slow),
    ("mfiba", "cross", "mfiba_cross")], ids=["base", "base_coarse_to_fine", "mfiba"])
def test_the_cross_configs_train_with_the_recipe_and_code(module, arg, codec_name, tmp_path):
  """`configs/<module>.py:cross` through the training loop (variable rate, a quality drawn per step,
  straight-through last step; MFIBA's post-training calibration), then a real bitstream from the
  checkpoint, decoded to the evaluation-mode output at the allocation it carries."""
  from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{module}").get_config(f"smoke,{arg}")
  with config.unlocked():
    config.progress, config.steps, config.loss.mixed_fraction = False, 3, 0.34
  metrics = train_lib.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["loss"]) and metrics["bpp"] > 0
  codec, params, tables, run = train_lib.load_codec(tmp_path)
  assert run["codec"] == codec_name and codec.qualities > 1
  rng = np.random.default_rng(0)
  feats = {s: rng.normal(size=(1, 16 >> i, 16 >> i, c)).astype(np.float32)
           for i, (s, c) in enumerate(zip(run["scales"], run["channels"]))}
  data = codec.compress(params, tables, feats, (128, 128))
  out = codec.decompress(params, tables, data)
  allocation = bitstream.unpack(data).metadata.get("allocation")
  if allocation is None:
    ev = codec.apply({"params": params}, codec.normalize(feats), False)["features_hat"]
  else:
    ev, _ = codec.apply({"params": params}, codec.normalize(feats), np.asarray([allocation]),
                        method=type(codec).forward_with_indexes)
  ev = codec.denormalize(ev)
  for s in feats:
    np.testing.assert_allclose(out[s], ev[s], atol=1e-4)


# ---- MFIBA on the cross-scale codec -----------------------------------------------------------

def _mfiba_cross(**kw):
  return CrossScaleMFIBACodec(**SMALL, mfip_channels=8, **kw)


def _uneven_mfip(variables):
  """Moves every parameter (the condition heads act) and gives MFIP an image-dependent output."""
  params = jax.tree.map(np.asarray, _perturbed(variables)["params"])
  k = params["mfip"]["Dense_1"]["kernel"]
  params["mfip"]["Dense_1"]["kernel"] = np.random.default_rng(0).normal(
      size=k.shape).astype(np.float32) * 2
  return {"params": params}


@pytest.mark.parametrize("kw", [dict(), dict(qualities=3, quality=1),
                                dict(coarse_to_fine=True, qualities=3, quality=1)],
                         ids=["one_rate", "variable", "coarse_to_fine"])
def test_mfiba_cross_round_trip_with_per_image_gains(kw):
  codec = _mfiba_cross(**kw)
  feats = checks.pyramid()
  variables = _uneven_mfip(checks.init(codec, feats))
  out = checks.check_forward(codec, variables, feats)
  assert len(set(np.asarray(out["gain_indexes"])[0].tolist())) > 1  # the scales differ in gain
  params, tables, data, ev = checks.check_round_trip(codec, variables, feats,
                                                     eager_atol=EAGER_ATOL)
  assert bitstream.unpack(data).metadata["allocation"] == np.asarray(ev["gain_indexes"])[0].tolist()
  if not kw:
    checks.check_bad_input(codec, params, tables, data, feats)


def test_mfiba_cross_gains_set_each_scales_rate_and_condition_the_next():
  """A larger gain on P3 costs P3 more bits and changes P4's decoded features (P4 is conditioned on
  P3's latent with the gain divided out); every allocation decodes to the evaluation output."""
  codec = _mfiba_cross()
  feats = checks.pyramid()
  params = _uneven_mfip(checks.init(codec, feats))["params"]
  tables = codec.build_tables(params)
  bits, dec = {}, {}
  for g in (0.25, 4.0):
    data = codec.compress_with_gains(params, tables, feats, (320, 320),
                                     {"p3": g, "p4": 1.0, "p5": 1.0})
    bits[g] = bitstream.unpack(data).stream_bits["p3/y"]
    dec[g] = codec.decompress(params, tables, data)
    idx = bitstream.unpack(data).metadata["allocation"]
    hat, _ = codec.apply({"params": params}, codec.normalize(feats), np.asarray([idx]),
                         method=type(codec).forward_with_indexes)
    hat = codec.denormalize(hat)
    for s in feats:
      np.testing.assert_allclose(dec[g][s], hat[s], atol=1e-4)
  assert bits[0.25] < bits[4.0]
  assert not np.allclose(dec[0.25]["p4"], dec[4.0]["p4"])


def test_mfiba_cross_starts_as_the_cross_scale_codec_it_is_warm_started_from():
  """With MFIP's uniform start (gain 1 on every scale) and a `CrossScaleCodec`'s parameters copied
  in, the cross-scale MFIBA reconstructs and rates exactly as that codec."""
  from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
  feats = checks.pyramid()
  cross = CrossScaleCodec(**SMALL, qualities=3, quality=2)
  source = _perturbed(checks.init(cross, feats))["params"]
  codec = _mfiba_cross(qualities=3, quality=2)
  params, copied, _ = train_lib.overlay_params(checks.init(codec, feats)["params"], source)
  assert copied == len(jax.tree.leaves(source))
  want = cross.apply({"params": source}, feats, False)
  got = codec.apply({"params": params}, feats, False)
  for s in feats:
    np.testing.assert_allclose(got["features_hat"][s], want["features_hat"][s], atol=1e-6)
  for k in want["bits"]:
    np.testing.assert_allclose(got["bits"][k], want["bits"][k], rtol=1e-6)


@pytest.mark.parametrize("kw", [dict(), dict(qualities=3, quality=1)], ids=["one_rate", "variable"])
def test_a_widened_codec_starts_as_the_narrow_one(kw):
  """Warm start with `init_widen`: a codec with wider latents (and P3 hidden layer) built from a
  trained narrow one reconstructs the same features, while its new channels are live (they move
  the output once their zero synthesis weights are perturbed)."""
  feats = checks.pyramid()
  narrow = CrossScaleCodec(**SMALL, **kw)
  wide = CrossScaleCodec(**dict(SMALL, latent_channels=(40, 28, 32), hidden_channels=32), **kw)
  vn = _perturbed(checks.init(narrow, feats))
  vw = checks.init(wide, feats)
  params, copied, total = train_lib.overlay_params(vw["params"], vn["params"], widen=True)
  assert copied == total == len(jax.tree.leaves(vn["params"]))
  out_n = narrow.apply(vn, feats, False)
  out_w = wide.apply({"params": params}, feats, False)
  for s in feats:
    np.testing.assert_allclose(out_w["features_hat"][s], out_n["features_hat"][s], atol=1e-5)
  widen.check_preserved(narrow, vn["params"], wide, params, feats)  # what training checks
  kernel = params["models_p4"]["g_s"]["ConvTranspose_0"]["kernel"]
  np.testing.assert_array_equal(kernel[:, :, 20:, :], 0.0)  # P4's 8 new latent channels
  params["models_p4"]["g_s"]["ConvTranspose_0"]["kernel"] = kernel.at[:, :, 20:, :].add(0.1)
  out_m = wide.apply({"params": params}, feats, False)
  assert not np.allclose(out_m["features_hat"]["p4"], out_n["features_hat"]["p4"], atol=1e-3)
  with pytest.raises(errors.ConfigError, match="warm start"):
    train_lib.overlay_params(vw["params"], vn["params"])
  with pytest.raises(errors.ConfigError, match="cannot widen"):
    train_lib.overlay_params(vn["params"], vw["params"], widen=True)
