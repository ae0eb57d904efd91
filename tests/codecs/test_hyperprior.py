import importlib.util
from pathlib import Path

import flax
import jax
import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.codecs.hyperprior import HyperpriorCodec

_spec = importlib.util.spec_from_file_location("codec_checks", Path(__file__).with_name("codec_checks.py"))
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

SMALL = dict(channels=(16, 32, 64), latent_channels=24, hidden_channels=24, hyper_channels=12,
             stages=(2, 1, 1))


@pytest.mark.parametrize("kw", [dict(), dict(context_slices=2, context_hidden=(16,)),
                                dict(transform="residual"), dict(latent_blocks=(0, 1, 2))],
                         ids=["meanscale", "context", "residual", "latent_blocks"])
def test_hyperprior_codec(kw):
  codec = HyperpriorCodec(**SMALL, **kw)
  feats = checks.pyramid()
  variables = checks.init(codec, feats)
  out = checks.check_forward(codec, variables, feats)
  assert set(out["bits"]) == {f"{s}/{k}" for s in ("p3", "p4", "p5") for k in ("y", "z")}
  params, tables, data, _ = checks.check_round_trip(codec, variables, feats)
  if not kw:
    checks.check_bad_input(codec, params, tables, data, feats)


def test_odd_sizes_are_padded_and_cropped():
  codec = HyperpriorCodec(**SMALL)
  feats = checks.odd_pyramid()
  variables = checks.init(codec, feats)
  checks.check_round_trip(codec, variables, feats)


def _norm(scale):
  return tuple((s, (scale,) * c, (2.0,) * c) for s, c in zip(("p3", "p4", "p5"), SMALL["channels"]))


@pytest.mark.parametrize("field,a_kw,b_kw", [
    ("quality", dict(qualities=2, quality=0), dict(qualities=2, quality=1)),
    ("feature_norm", dict(feature_norm=_norm(0.0)), dict(feature_norm=_norm(0.5))),
], ids=["quality", "feature_norm"])
def test_bitstream_from_other_codec_config_is_refused(field, a_kw, b_kw):
  """A model that differs only in a field decoding depends on (same parameter shapes: the
  parameters of `a` fit `b`) refuses `a`'s bitstream instead of decoding it wrongly."""
  feats = checks.pyramid()
  a, b = HyperpriorCodec(**SMALL, **a_kw), HyperpriorCodec(**SMALL, **b_kw)
  va = checks.init(a, feats)
  assert jax.tree.map(np.shape, checks.init(b, feats)) == jax.tree.map(np.shape, va)
  # The field changes what the decoder outputs from the same latents and parameters.
  ya = a.apply(va, feats, False)["features_hat"]
  yb = b.apply(va, feats, False)["features_hat"]
  if field == "feature_norm":
    ya, yb = a.denormalize(ya), b.denormalize(ya)
  assert not np.allclose(ya["p5"], yb["p5"], atol=1e-3), field
  ta = a.build_tables(va["params"])
  data = a.compress(va["params"], ta, feats, (320, 320))
  with pytest.raises(errors.ModelMismatchError):
    b.decompress(va["params"], ta, data)
  a.decompress(va["params"], ta, data)  # the model that wrote it decodes it


def test_training_only_fields_leave_the_fingerprint():
  """A model fine-tuned under another quantization proxy decodes the same bitstreams; the
  fingerprint still moves with a field decoding depends on."""
  feats = checks.pyramid()
  a = HyperpriorCodec(**SMALL, train_quantization="noise")
  b = HyperpriorCodec(**SMALL, train_quantization="mixed")
  va = checks.init(a, feats)
  ta = a.build_tables(va["params"])
  assert a.fingerprint(va["params"], ta) == b.fingerprint(va["params"], ta)
  assert a.clone(quality=1, qualities=2).fingerprint(va["params"], ta) != a.fingerprint(
      va["params"], ta)
  data = a.compress(va["params"], ta, feats, (320, 320))
  got = b.decompress(va["params"], ta, data)
  np.testing.assert_array_equal(got["p5"], a.decompress(va["params"], ta, data)["p5"])


def test_bad_config():
  with pytest.raises(errors.ConfigError):
    checks.init(HyperpriorCodec(**{**SMALL, "channels": (16, 32)}), checks.pyramid())
  with pytest.raises(errors.ConfigError):
    checks.init(HyperpriorCodec(**SMALL, transform="dct"), checks.pyramid())
  for blocks in (-1, 1.5, (0, 1)):  # a negative or fractional count, or one entry short
    with pytest.raises(errors.ConfigError, match="latent_blocks"):
      checks.init(HyperpriorCodec(**SMALL, latent_blocks=blocks), checks.pyramid())


def test_widening_a_channel_context_model_is_refused():
  """training/widen.py widens h_s's means|scales block by block, which a channel-wise context
  model (slices of the latent, each conditioned on the earlier ones) does not follow: the widened
  model reconstructs something else, and `check_preserved` says so (while the same widening
  without the context keeps the output)."""
  from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
  from hssc_jax.training import widen  # pylint: disable=g-import-not-at-top
  feats = checks.pyramid()
  for context, preserved in ((0, True), (2, False)):
    kw = dict(SMALL, latent_channels=16, context_slices=context, context_hidden=(8,))
    narrow, wide = HyperpriorCodec(**kw), HyperpriorCodec(**dict(kw, latent_channels=24))
    vn = checks.init(narrow, feats)
    vn = jax.tree.map(lambda a: a + 0.05 * np.sin(np.arange(a.size, dtype=np.float32)).reshape(
        a.shape), vn)  # off its initialisation, so untouched couplings show
    params, _, _ = train_lib.overlay_params(checks.init(wide, feats)["params"], vn["params"],
                                            widen=True)
    if preserved:
      widen.check_preserved(narrow, vn["params"], wide, params, feats)
    else:
      with pytest.raises(errors.ConfigError, match="does not reconstruct what its source does"):
        widen.check_preserved(narrow, vn["params"], wide, params, feats)


def _moved(params, seed=3):
  """`params` with every array moved, so the identity-initialised blocks act."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape)
                                   for a, k in zip(leaves, keys)])


def test_latent_blocks_start_as_the_codec_without_them_and_are_hashed_when_set():
  """`latent_blocks`: residual blocks on the latent grid of g_a and g_s, per scale. A codec with
  them, warm-started from one without, reconstructs and rates exactly as it does (the blocks start
  as the identity); once trained they change the output, and they move the fingerprint, while a
  codec without them keeps the fingerprint it had before the field existed."""
  from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
  feats = checks.pyramid()
  plain, blocks = HyperpriorCodec(**SMALL), HyperpriorCodec(**SMALL, latent_blocks=(0, 1, 2))
  vp = {"params": _moved(checks.init(plain, feats)["params"])}
  params, copied, total = train_lib.overlay_params(checks.init(blocks, feats)["params"],
                                                   vp["params"])
  assert copied == len(jax.tree.leaves(vp)) and total == copied + 6 * 4  # (1 + 2) blocks in g_a and g_s, 4 arrays each
  names = {"/".join(k) for k in flax.traverse_util.flatten_dict(params)}
  assert {f"models_p5/{t}/latent_block_1/Conv_1/kernel" for t in ("g_a", "g_s")} <= names
  assert not any("latent_block" in n for n in names if n.startswith("models_p3/"))
  a = plain.apply(vp, feats, False)
  b = blocks.apply({"params": params}, feats, False)
  for s in feats:
    np.testing.assert_array_equal(a["features_hat"][s], b["features_hat"][s])
  for k in a["bits"]:
    np.testing.assert_array_equal(a["bits"][k], b["bits"][k])
  c = blocks.apply({"params": _moved(params, seed=4)}, feats, False)
  assert not np.allclose(c["features_hat"]["p5"], b["features_hat"]["p5"], atol=1e-3)
  assert "latent_blocks" not in plain.decoding_config()
  assert blocks.decoding_config()["latent_blocks"] == (0, 1, 2)
  tp = plain.build_tables(vp["params"])
  assert plain.fingerprint(vp["params"], tp) != blocks.fingerprint(vp["params"], tp)
