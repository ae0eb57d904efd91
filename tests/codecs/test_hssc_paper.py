"""HSSC in its paper form: SFTNet + 10-bit quantisation + reordering + tiling + real HEVC."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import hssc_paper as hssc_paper_config
from hssc_jax import bitstream
from hssc_jax import errors
from hssc_jax.codecs import anchor as anchor_lib
from hssc_jax.codecs import inner
from hssc_jax.codecs import registry
from hssc_jax.codecs import reorder as reorder_lib
from hssc_jax.codecs import tiling
from hssc_jax.codecs.hssc_paper import HSSCPaperCodec, fit_constants, measure_proxy

_spec = importlib.util.spec_from_file_location("codec_checks", Path(__file__).with_name("codec_checks.py"))
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

SMALL = dict(compact_channels=32, transform_channels=16, attention_channels=8, qualities=3,
             qps=(45, 34, 22))


def build(**kw):
  return registry.build_codec("hssc_paper", dict(SMALL, **kw), ("p3", "p4", "p5"), (16, 32, 64))


@pytest.fixture(scope="module")
def model():
  codec = build()
  feats = checks.pyramid()
  variables = checks.init(codec, feats)
  params = variables["params"]
  consts = fit_constants(codec, params, codec.compacts(params, [checks.pyramid(seed=s)
                                                                for s in range(1, 4)]))
  return build(**consts), params, feats, consts


def test_forward_gives_the_proxy_rate_and_rebuilds_every_scale(model):
  codec, params, feats, _ = model
  out = checks.check_forward(codec, {"params": params}, feats)
  assert set(out["bits"]) == {"compact/frame"}
  # The proxy rate falls with the QP's noise level (quality 0 = the highest QP).
  rates = [float(checks.check_forward(codec.clone(quality=q), {"params": params}, feats)["bits"]
                 ["compact/frame"][0]) for q in range(3)]
  assert rates[0] < rates[1] < rates[2]


def test_fitted_constants_are_a_range_and_a_permutation(model):
  codec, params, feats, consts = model
  lo, hi = consts["compact_range"]
  assert 0.0 < lo < hi < 1.0  # (V1): the compact representation is a sigmoid
  assert sorted(consts["permutation"]) == list(range(32))


def test_the_training_proxy_is_not_in_the_fingerprint(model):
  """qp_noise shapes training only; the fitted order shapes decoding."""
  codec, params, _, consts = model
  fp = codec.fingerprint(params, {})
  assert codec.clone(qp_noise=(9.0, 5.0, 1.0)).fingerprint(params, {}) == fp
  assert codec.clone(permutation=tuple(consts["permutation"][::-1])).fingerprint(params, {}) != fp


def _decode_by_hand(codec, params, data, sizes):
  """Container -> HEVC frame -> untile -> undo the order -> dequantize -> SFTNet rebuild, written
  out here with the inner codec and tiling directly (not through `decompress`)."""
  c = codec.unpack(params, codec.build_tables(params), data)
  shape = c.shapes["compact"]
  layout = tiling.make_layout({"compact": tuple(shape[1:])})
  frame = inner.HEVC().decode(c.streams["compact/frame"], layout.frame_shape, np.uint16,
                              qp=codec.qp())
  codes = reorder_lib.undo(tiling.untile(layout, frame)["compact"], np.asarray(codec.permutation))
  compact = anchor_lib.dequantize(codes, codec.compact_range, 10)
  return compact, codec.reconstruct(params, compact[None], sizes)


@pytest.mark.parametrize("header", ["full", "compact"])
def test_round_trip_through_real_hevc(model, header):
  codec, params, feats, consts = model
  codec = codec.clone(header=header)
  lengths = {}
  compact = codec.compact(params, feats)[0]
  for q in range(3):
    coder = codec.clone(quality=q)
    tables = coder.build_tables(params)
    data = coder.compress(params, tables, feats, (320, 320))
    decoded = coder.decompress(params, tables, data)
    by_hand, rebuilt = _decode_by_hand(coder, params, data,
                                       [f.shape[1:3] for f in feats.values()])
    for s in feats:
      assert decoded[s].shape == feats[s].shape
      np.testing.assert_allclose(decoded[s], rebuilt[s], atol=1e-5, err_msg=s)
    lengths[q] = len(data)
    lo, hi = consts["compact_range"]
    err = np.sqrt(np.mean(np.square((by_hand - compact) * 1023 / (hi - lo))))  # in codes
    if q == 2:  # QP 22: close to the 10-bit codes
      assert err < 12, err
  assert lengths[0] < lengths[1] < lengths[2]


def test_per_image_order_travels_and_a_lying_permutation_is_refused(model):
  codec, params, feats, consts = model
  codec = codec.clone(reorder_fit="per_image", permutation=None, quality=2)
  tables = codec.build_tables(params)
  data = codec.compress(params, tables, feats, (320, 320))
  c = bitstream.unpack(data)
  assert set(c.streams) == {"compact/frame", "compact/perm"}
  assert codec.decompress(params, tables, data)["p3"].shape == feats["p3"].shape
  # A valid checksum over a permutation rank out of range (not a permutation).
  bad = dataclasses.replace(c, streams=dict(c.streams, **{
      "compact/perm": b"\xff" * len(c.streams["compact/perm"])}))
  with pytest.raises(errors.CorruptBitstreamError, match="permutation"):
    codec.decompress(params, tables, bitstream.pack(bad))


def test_bad_inputs_and_frames_that_disagree_with_the_model(model):
  codec, params, feats, consts = model
  codec = codec.clone(header="full", quality=1)
  tables = codec.build_tables(params)
  data = codec.compress(params, tables, feats, (320, 320))
  checks.check_bad_input(codec, params, tables, data, feats)
  c = bitstream.unpack(data)
  # A compact shape (tile layout) other than the one the model writes for these feature sizes.
  lying = dataclasses.replace(c, shapes={"compact": (1, 5, 5, 32)})
  with pytest.raises(errors.CorruptBitstreamError, match="shapes"):
    codec.decompress(params, tables, bitstream.pack(lying))
  # A frame of another size behind an honest header: the inner decoder's frame is refused.
  big = inner.HEVC().encode(np.zeros((48, 64), np.uint16), 30)
  swapped = dataclasses.replace(c, streams={"compact/frame": big})
  with pytest.raises(errors.CorruptBitstreamError):
    codec.decompress(params, tables, bitstream.pack(swapped))
  garbage = dataclasses.replace(c, streams={"compact/frame": b"\x00\x00\x01" + bytes(40)})
  with pytest.raises(errors.CorruptBitstreamError):
    codec.decompress(params, tables, bitstream.pack(garbage))


def test_bad_configs_are_refused(model):
  _, _, feats, consts = model
  cases = [dict(qps=(40, 30)),                                   # one QP per quality
           dict(qps=(40, 30, 99)),                               # QP out of HEVC's range
           dict(inner="nonexistent"),
           dict(reorder="sideways"),
           dict(permutation=(0,) * 32, compact_range=(0.0, 1.0)),  # not a permutation
           dict(compact_range=(1.0, 0.0), permutation=tuple(consts["permutation"])),
           dict(refine_scales=("p5",))]                          # HSSC's refinement: never coded
  for kw in cases:
    with pytest.raises(errors.ConfigError):
      checks.init(build(**kw), feats)
  codec = build()  # fixed order not fitted yet: trains, but cannot code
  params = checks.init(codec, feats)["params"]
  with pytest.raises(errors.ConfigError, match="permutation"):
    codec.compress(params, {}, feats, (320, 320))


def test_measure_proxy_reports_the_real_codec_error(model):
  codec, params, feats, _ = model
  rows = measure_proxy(codec, params, [codec.compact(params, feats)[0]])
  assert [r["qp"] for r in rows] == [45, 34, 22]
  stds = [r["codec_std"] for r in rows]
  assert stds[0] > stds[1] > stds[2] > 0
  assert rows[0]["bits_per_sample"] < rows[2]["bits_per_sample"]


def test_config_trains_one_sftnet_for_the_qp_sweep():
  config = hssc_paper_config.get_config("smoke")
  assert len(config.loss.lmbdas) == len(config.codec.kwargs.qps) == len(hssc_paper_config.QPS)
  assert config.codec.name == "hssc_paper"
  assert hssc_paper_config.get_config("per_image,reorder=none").codec.kwargs.reorder_fit == "per_image"


@pytest.mark.slow  # two minutes of XLA compilation; the forward and HEVC round trips stay in `make test`
def test_smoke_training_fits_the_constants_and_the_zoo_model_codes(tmp_path):
  from hssc_jax import train_lib, zoo  # pylint: disable=g-import-not-at-top
  config = hssc_paper_config.get_config("smoke")
  with config.unlocked():
    config.progress = False
    config.steps = 2
  train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  constants = json.loads((tmp_path / "run" / train_lib.CONSTANTS_FILE).read_text())
  assert sorted(constants["permutation"]) == list(range(8))
  zoo.export(tmp_path / "run", "paper", tmp_path / "zoo")
  model = zoo.load("paper", 0, tmp_path / "zoo")
  assert model.codec.qp() == hssc_paper_config.QPS[0]
  assert list(model.codec.compact_range) == constants["compact_range"]
  rng = np.random.default_rng(0)
  feats = {s: rng.normal(size=(1, 16 >> i, 16 >> i, c)).astype(np.float32)
           for i, (s, c) in enumerate(zip(model.info["scales"], model.info["channels"]))}
  data = model.compress(feats, (128, 128))
  assert bitstream.is_compact(data)
  assert model.decompress(data)["p5"].shape == feats["p5"].shape


@pytest.mark.slow  # trains a learned HSSC first: about 90 s on two cores
def test_warm_start_from_a_learned_hssc_workdir_copies_sftnet(tmp_path):
  """`init_from=<workdir>` of another codec: the parameters of the same name and shape (SFTNet)
  are copied, the source's coder is not, and the source's feature normalisation comes along."""
  from configs import hssc as hssc_config  # pylint: disable=g-import-not-at-top
  from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
  config = hssc_config.get_config("smoke")
  with config.unlocked():
    config.progress = False
    config.steps = 1
  train_lib.train_and_evaluate(config, str(tmp_path / "hssc"))
  info, source = train_lib.read_warm_start(str(tmp_path / "hssc"))
  assert info["codec_kwargs"]["feature_norm"]
  kwargs = dict(hssc_paper_config.get_config("smoke").codec.kwargs)
  codec = registry.build_codec("hssc_paper", kwargs, ("p3", "p4", "p5"), (16, 32, 64))
  fresh = checks.init(codec, checks.pyramid(channels=(16, 32, 64)))["params"]
  with pytest.raises(errors.ConfigError, match="shape"):  # widths of another detector's pyramid
    train_lib.overlay_params(fresh, source)
  # An ablation started from the full model keeps its own init where shapes differ.
  _, copied, total = train_lib.overlay_params(fresh, source, skip_mismatched=True)
  assert 0 < copied < total
  run = train_lib.load_codec(tmp_path / "hssc")[3]
  codec = registry.build_codec("hssc_paper", kwargs, run["scales"], run["channels"])
  fresh = checks.init(codec, checks.pyramid(channels=run["channels"]))["params"]
  params, copied, total = train_lib.overlay_params(fresh, source)
  assert "coder" in source and "coder" not in params and copied == total
  np.testing.assert_array_equal(params["to_compact"]["kernel"], source["to_compact"]["kernel"])


def test_warm_start_merges_sources_in_order():
  """`init_from="zoo:hssc+zoo:hssc_paper"`: the learned HSSC's coder with the paper form's SFTNet
  (the later source wins where both hold an array); the header is the last source's."""
  from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
  from hssc_jax import zoo  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  first, second = zoo.read(zoo.path_of("hssc")), zoo.read(zoo.path_of("hssc_paper"))
  info, merged = train_lib.read_warm_start("zoo:hssc+zoo:hssc_paper")
  assert info["codec_kwargs"] == second[0]["codec_kwargs"]
  flat = flax.traverse_util.flatten_dict(merged)
  a, b = (flax.traverse_util.flatten_dict(s[1]) for s in (first, second))
  assert set(flat) == set(a) | set(b) and any(k[0] == "coder" for k in flat)
  assert any(not np.array_equal(a[k], b[k]) for k in b)  # so the order below is seen
  for k, v in flat.items():
    np.testing.assert_array_equal(v, b[k] if k in b else a[k])
  with pytest.raises(errors.ConfigError, match="no zoo model 'nope'"):
    train_lib.read_warm_start("zoo:hssc+zoo:nope")
