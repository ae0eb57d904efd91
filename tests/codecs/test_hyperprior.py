import importlib.util
from pathlib import Path

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
                                dict(transform="residual")], ids=["meanscale", "context", "residual"])
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
  feats = {"p3": np.ones((1, 37, 29, 16), np.float32), "p4": np.ones((1, 19, 15, 32), np.float32),
           "p5": np.ones((1, 10, 8, 64), np.float32)}
  variables = checks.init(codec, feats)
  checks.check_round_trip(codec, variables, feats)


def test_bitstream_from_other_codec_config_is_refused():
  feats = checks.pyramid()
  a = HyperpriorCodec(**SMALL)
  b = HyperpriorCodec(**{**SMALL, "hyper_channels": 12, "stages": (2, 1, 1)}, context_slices=0,
                      train_quantization="mixed")
  va = checks.init(a, feats)
  ta = a.build_tables(va["params"])
  data = a.compress(va["params"], ta, feats, (320, 320))
  with pytest.raises(errors.ModelMismatchError):
    b.decompress(va["params"], ta, data)


def test_bad_config():
  with pytest.raises(errors.ConfigError):
    checks.init(HyperpriorCodec(**{**SMALL, "channels": (16, 32)}), checks.pyramid())
  with pytest.raises(errors.ConfigError):
    checks.init(HyperpriorCodec(**SMALL, transform="dct"), checks.pyramid())
