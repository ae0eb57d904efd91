import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from hssc_jax import bitstream, errors
from hssc_jax.codecs.lmfc import LMFCCodec

_spec = importlib.util.spec_from_file_location("codec_checks", Path(__file__).with_name("codec_checks.py"))
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

SMALL = dict(channels=(16, 32, 64), fused_channels=32, latent_channels=24, hidden_channels=24,
             hyper_channels=12, predictor_hidden=16)


@pytest.mark.parametrize("residual", [False, True])
def test_lmfc_codec(residual):
  codec = LMFCCodec(**SMALL, residual=residual, residual_latent_channels=8)
  feats = checks.pyramid()
  variables = checks.init(codec, feats)
  out = checks.check_forward(codec, variables, feats)
  streams = {k.split("/")[0] for k in out["bits"]}
  assert streams == ({"bfc", "p3_residual"} if residual else {"bfc"})
  params, tables, data, _ = checks.check_round_trip(codec, variables, feats)
  if residual:
    checks.check_bad_input(codec, params, tables, data, feats)


def test_large_scale_costs_no_bits_without_residual():
  codec = LMFCCodec(**SMALL)
  feats = checks.pyramid()
  variables = checks.init(codec, feats)
  tables = codec.build_tables(variables["params"])
  c = bitstream.unpack(codec.compress(variables["params"], tables, feats, (320, 320)))
  assert set(c.streams) == {"bfc/y", "bfc/z"}


def test_single_coded_scale_predicts_two():
  codec = LMFCCodec(**SMALL, coded_scales=("p5",))
  feats = checks.pyramid()
  variables = checks.init(codec, feats)
  checks.check_round_trip(codec, variables, feats)


def test_coded_scales_must_be_coarsest():
  with pytest.raises(errors.ConfigError, match="coarsest"):
    checks.init(LMFCCodec(**SMALL, coded_scales=("p3",)), checks.pyramid())


def test_refined_scale_round_trips_and_starts_as_the_unrefined_codec():
  plain, refined = LMFCCodec(**SMALL), LMFCCodec(**SMALL, refine_scales=("p5",),
                                                 refine_latent_channels=8)
  feats = checks.pyramid()
  variables = checks.init(refined, feats)
  params = variables["params"]
  assert set(params["refine_out_p5"]["kernel"].ravel().tolist()) == {0.0}
  shared = {k: v for k, v in params.items() if not k.startswith(("refiners_", "refine_out_"))}
  ev = lambda codec, p: codec.apply({"params": p}, feats, False)["features_hat"]
  for s, a in ev(plain, shared).items():  # the zero-initialised output: the identity at first
    np.testing.assert_allclose(ev(refined, params)[s], a, atol=1e-6, err_msg=s)
  # a trained refinement (non-zero output) changes P5 and, through MFCNet, P3, and round-trips
  kernel = params["refine_out_p5"]["kernel"]
  params = {**params, "refine_out_p5": {**params["refine_out_p5"],
                                        "kernel": np.full(kernel.shape, 0.05, np.float32)}}
  out = ev(refined, params)
  assert not np.allclose(out["p5"], ev(plain, shared)["p5"], atol=1e-3)
  _, tables, data, _ = checks.check_round_trip(refined, {"params": params}, feats)
  assert {"p5_refine/y", "p5_refine/z"} <= set(bitstream.unpack(data).streams)
  checks.check_bad_input(refined, params, tables, data, feats)


def test_refined_scales_must_be_coded():
  with pytest.raises(errors.ConfigError, match="refine_scales"):
    checks.init(LMFCCodec(**SMALL, refine_scales=("p3",)), checks.pyramid())


def test_refinement_from_a_quality_up_costs_nothing_below_it():
  refined = LMFCCodec(**SMALL, qualities=2, refine_scales=("p5",), refine_latent_channels=8,
                      refine_from=1)
  feats = checks.pyramid(size=16)
  params = checks.init(refined, feats)["params"]
  kernel = params["refine_out_p5"]["kernel"]
  params = {**params, "refine_out_p5": {**params["refine_out_p5"],
                                        "kernel": np.full(kernel.shape, 0.05, np.float32)}}
  plain = LMFCCodec(**SMALL, qualities=2)
  shared = {k: v for k, v in params.items() if not k.startswith(("refiners_", "refine_out_"))}
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
  _, tables, data, _ = checks.check_round_trip(refined.clone(quality=0), {"params": params}, feats)
  assert not any(k.startswith("p5_refine/") for k in bitstream.unpack(data).streams)
  data = refined.clone(quality=1).compress(params, tables, feats, (128, 128))
  assert {"p5_refine/y", "p5_refine/z"} <= set(bitstream.unpack(data).streams)
  for bad in (2, -1):
    with pytest.raises(errors.ConfigError, match="refine_from"):
      checks.init(refined.clone(refine_from=bad), feats)


def test_refine_from_needs_refine_in_the_config():
  from configs import lmfc as lmfc_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="needs refine"):
    lmfc_config.get_config("smoke,refine_from=2")
  assert lmfc_config.get_config("smoke,refine,refine_from=2").codec.kwargs.refine_from == 2
