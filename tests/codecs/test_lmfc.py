import importlib.util
from pathlib import Path

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
