"""Refinement of decoded scales (`hssc_jax.codecs.refinement`) in the codecs that use it (L-MFC,
HSC, HSSC): starts as the identity, round-trips, and costs nothing below `refine_from`."""

import importlib
import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from hssc_jax import bitstream, errors
from hssc_jax.codecs.hsc import HSCCodec
from hssc_jax.codecs.hssc import HSSCCodec
from hssc_jax.codecs.lmfc import LMFCCodec

_spec = importlib.util.spec_from_file_location("codec_checks", Path(__file__).with_name("codec_checks.py"))
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

CODECS = {
    "lmfc": lambda **kw: LMFCCodec(channels=(16, 32, 64), fused_channels=32, latent_channels=24,
                                   hidden_channels=24, hyper_channels=12, predictor_hidden=16,
                                   **kw),
    "hsc": lambda **kw: HSCCodec(channels=(16, 32, 64), core_channels=16, latent_channels=16,
                                 hidden_channels=16, hyper_channels=8, context_slices=2,
                                 context_hidden=(8,), **kw),
    "hssc": lambda **kw: HSSCCodec(channels=(16, 32, 64), compact_channels=32,
                                   transform_channels=16, latent_channels=16, hidden_channels=16,
                                   hyper_channels=8, attention_channels=8, **kw),
}
# HSSC's jitted and op-by-op decodes agree up to float32 rounding (tests/codecs/test_hssc.py)
EAGER_ATOL = {"lmfc": 0.0, "hsc": 0.0, "hssc": 1e-5}
REFINE = dict(refine_scales=("p5",), refine_latent_channels=8)
BOTH = dict(REFINE, refine_scales=("p4", "p5"))  # the scales every codec here may refine


def _unrefined(params):
  return {k: v for k, v in params.items() if not k.startswith(("refiners_", "refine_out_"))}


def _trained_output(params):
  """`params` with non-zero refinement outputs (as after training; they start at zero)."""
  return {k: {**v, "kernel": np.full(v["kernel"].shape, 0.05, np.float32)}
          if k.startswith("refine_out_") else v for k, v in params.items()}


@pytest.mark.parametrize("name", sorted(CODECS))
def test_refined_scales_round_trip_and_start_as_the_unrefined_codec(name):
  plain, refined = CODECS[name](), CODECS[name](**BOTH)
  feats = checks.pyramid()
  params = checks.init(refined, feats)["params"]
  for s in ("p4", "p5"):
    assert set(params[f"refine_out_{s}"]["kernel"].ravel().tolist()) == {0.0}
  ev = lambda codec, p: codec.apply({"params": p}, feats, False)["features_hat"]
  before = ev(plain, _unrefined(params))
  for s, a in before.items():  # the zero-initialised outputs: the identity at first
    np.testing.assert_allclose(ev(refined, params)[s], a, atol=1e-6, err_msg=s)
  params = _trained_output(params)
  after = ev(refined, params)
  for s in ("p4", "p5"):
    assert not np.allclose(after[s], before[s], atol=1e-3), s
  _, tables, data, _ = checks.check_round_trip(refined, {"params": params}, feats,
                                               eager_atol=EAGER_ATOL[name])
  assert {f"{s}_refine/{k}" for s in ("p4", "p5") for k in "yz"} <= set(
      bitstream.unpack(data).streams)
  checks.check_bad_input(refined, params, tables, data, feats)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_refinement_from_a_quality_up_costs_nothing_below_it(name):
  refined = CODECS[name](qualities=2, refine_from=1, **REFINE)
  feats = checks.pyramid(size=16)
  params = _trained_output(checks.init(refined, feats)["params"])
  plain, shared = CODECS[name](qualities=2), _unrefined(params)
  # the quality is traced in training: below refine_from no refinement and no refinement bits
  run = jax.jit(lambda codec, p, q: codec.clone(quality=q).apply({"params": p}, feats, True,
                                                                 rngs={"noise": jax.random.key(0)}),
                static_argnums=0)
  for q in (0, 1):
    out, ref = run(refined, params, q), run(plain, shared, q)
    refine_bits = [float(np.sum(v)) for k, v in out["bits"].items() if k.startswith("p5_refine/")]
    assert refine_bits and (max(refine_bits) == 0.0) == (q == 0), q
    assert np.allclose(out["features_hat"]["p5"], ref["features_hat"]["p5"], atol=1e-6) == (q == 0)
  # at test time: no refinement streams below it (and the decoder expects none), streams from it up
  _, tables, data, _ = checks.check_round_trip(refined.clone(quality=0), {"params": params}, feats,
                                               eager_atol=EAGER_ATOL[name])
  assert not any(k.startswith("p5_refine/") for k in bitstream.unpack(data).streams)
  _, _, data, _ = checks.check_round_trip(refined.clone(quality=1), {"params": params}, feats,
                                          eager_atol=EAGER_ATOL[name])
  assert {"p5_refine/y", "p5_refine/z"} <= set(bitstream.unpack(data).streams)
  for bad in (2, -1):
    with pytest.raises(errors.ConfigError, match="refine_from"):
      checks.init(refined.clone(refine_from=bad), feats)


def test_refined_scales_must_be_decoded_before_any_prediction():
  with pytest.raises(errors.ConfigError, match="refine_scales"):  # L-MFC predicts P3
    checks.init(CODECS["lmfc"](refine_scales=("p3",)), checks.pyramid())
  for name in ("hsc", "hssc"):
    with pytest.raises(errors.ConfigError, match="refine_scales"):
      checks.init(CODECS[name](refine_scales=("p6",)), checks.pyramid())


@pytest.mark.parametrize("name", sorted(CODECS))
def test_refine_arguments_need_refine_in_the_config(name):
  config = importlib.import_module(f"configs.{name}")
  with pytest.raises(ValueError, match="needs refine"):
    config.get_config("smoke,refine_from=2")
  with pytest.raises(ValueError, match="refine_scales .*needs refine"):
    config.get_config("smoke,refine_scales=p4+p5")
  kwargs = config.get_config("smoke,refine,refine_from=2").codec.kwargs
  assert (kwargs.refine_from, kwargs.refine_scales) == (2, ("p5",))
  kwargs = config.get_config("smoke,refine,refine_scales=p4+p5").codec.kwargs
  assert kwargs.refine_scales == ("p4", "p5")
  assert "refine_scales" not in config.get_config("smoke").codec.kwargs
