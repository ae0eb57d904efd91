"""MFIBA codec: shapes, importance and gains, round trip, allocation in the bitstream, weighted
loss, train step, configs, and the task loss-rate model / bit allocation."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from configs import mfiba as mfiba_config
from hssc_jax import bitstream
from hssc_jax import errors
from hssc_jax import train_lib
from hssc_jax.codecs import mfiba
from hssc_jax.codecs import registry
from hssc_jax.codecs.mfiba import MFIBACodec
from hssc_jax.training import loss as loss_lib

_spec = importlib.util.spec_from_file_location("codec_checks", Path(__file__).with_name("codec_checks.py"))
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

SMALL = dict(channels=(16, 32, 64), latent_channels=16, hidden_channels=16, hyper_channels=8,
             stages=1, hyper_stages=1, mfip_channels=8)
SCALES = ("p3", "p4", "p5")


def _perturb(variables, seed=0):
  """MFIP starts uniform (zero last layer); give it a non-trivial, image-dependent allocation."""
  rng = np.random.default_rng(seed)
  params = jax.tree.map(np.asarray, variables["params"])
  k = params["mfip"]["Dense_1"]["kernel"]
  params["mfip"]["Dense_1"]["kernel"] = (rng.normal(size=k.shape) * 2).astype(np.float32)
  params["log_gain_offset"] = np.array([0.6, -0.4, 0.1], np.float32)
  return {"params": params}


@pytest.fixture(scope="module")
def model():
  codec = MFIBACodec(**SMALL)
  feats = checks.pyramid(batch=2)
  fresh = checks.init(codec, feats)
  return codec, _perturb(fresh), feats, fresh


def test_forward_importance_gains_and_weights(model):
  codec, variables, feats, fresh = model
  out = checks.check_forward(codec, variables, feats)
  assert set(out["bits"]) == {f"{s}/{k}" for s in SCALES for k in ("y", "z")}
  w, g, idx = (np.asarray(out[k]) for k in ("importance", "gains", "gain_indexes"))
  assert w.shape == g.shape == idx.shape == (2, 3)
  np.testing.assert_allclose(w.sum(axis=1), 3.0, rtol=1e-5)  # uniform importance = 1 per scale
  assert np.ptp(w) > 0.1 and not np.array_equal(idx[0], idx[1])  # per image, per scale
  table, _ = codec.gains
  np.testing.assert_array_equal(g, table[idx])  # the 8-bit table gains, forward
  assert np.all((g >= 1 / 4 - 1e-6) & (g <= 4 + 1e-6)) and np.all(idx < 256)
  for i, s in enumerate(SCALES):
    np.testing.assert_array_equal(out["distortion_weights"][s], w[:, i])
  # Untrained MFIP: uniform importance, unit gains (the base codec).
  for a in codec.allocation(fresh["params"], feats).values():
    np.testing.assert_allclose(a["importance"], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(a["gain"], 1.0)


def test_round_trip_allocation_in_bitstream_and_bad_inputs(model):
  codec, variables, feats, _ = model
  one = {s: a[:1] for s, a in feats.items()}
  # Equal to the evaluation-mode reconstruction up to the last float32 bit (the float64 host
  # means of the hyperprior); a decode without jit gives the same bits.
  params, tables, data, ev = checks.check_round_trip(codec, variables, one, atol=1e-6)
  c = bitstream.unpack(data)
  assert set(c.streams) == {f"{s}/{k}" for s in SCALES for k in ("y", "z")}
  assert c.metadata["allocation"] == np.asarray(ev["gain_indexes"])[0].tolist()
  shown = codec.read_allocation(params, tables, data)
  alloc = codec.allocation(params, one)
  table, _ = codec.gains
  for i, s in enumerate(SCALES):
    assert shown[s]["index"] == int(alloc[s]["index"][0]) == c.metadata["allocation"][i]
    assert shown[s]["gain"] == float(table[shown[s]["index"]]) == float(alloc[s]["gain"][0])
    np.testing.assert_allclose(alloc[s]["importance"], np.asarray(ev["importance"])[:, i])
  checks.check_bad_input(codec, params, tables, data, one)
  # A malformed allocation (with a valid checksum and fingerprint) is refused clearly.
  for bad in ([1, 2], [0, 0, 300], [0, 0, "a"], None):
    meta = dict(c.metadata, allocation=bad)
    forged = bitstream.pack(bitstream.Container(c.codec_id, c.fingerprint, c.image_size, c.shapes,
                                                c.streams, meta))
    with pytest.raises(errors.CorruptBitstreamError, match="allocation"):
      codec.decompress(params, tables, forged)
  with pytest.raises(errors.CorruptBitstreamError, match="allocation"):
    meta = {k: v for k, v in c.metadata.items() if k != "allocation"}
    codec.decompress(params, tables, bitstream.pack(bitstream.Container(
        c.codec_id, c.fingerprint, c.image_size, c.shapes, c.streams, meta)))


def test_explicit_gains_set_the_rate_per_scale(model):
  codec, variables, feats, _ = model
  params = variables["params"]
  one = {s: a[:1] for s, a in feats.items()}
  tables = codec.build_tables(params)
  sizes = {}
  for g in (0.25, 1.0, 4.0):
    data = codec.compress_with_gains(params, tables, one, (320, 320), {s: g for s in SCALES})
    shown = codec.read_allocation(params, tables, data).values()
    assert all(v["gain"] == pytest.approx(g, rel=1e-6) for v in shown)
    c = bitstream.unpack(data)
    sizes[g] = {s: c.stream_bits[f"{s}/y"] for s in SCALES}
    dec = codec.decompress(params, tables, data)
    assert all(np.all(np.isfinite(dec[s])) for s in SCALES)
  for s in SCALES:  # a larger gain (finer quantization) costs more bits on that scale
    assert sizes[0.25][s] < sizes[1.0][s] < sizes[4.0][s], (s, sizes)
  with pytest.raises(errors.InvalidInputError, match="outside"):
    codec.compress_with_gains(params, tables, one, (320, 320), {"p3": 9.0, "p4": 1.0, "p5": 1.0})
  with pytest.raises(errors.InvalidInputError, match="gains must map"):
    codec.compress_with_gains(params, tables, one, (320, 320), {"p3": 1.0})
  with pytest.raises(errors.ModelMismatchError):
    registry.codec_class("hyperprior")(channels=(16, 32, 64)).decompress(params, tables, data)


def test_encode_exponent_tempers_the_allocation_and_keeps_the_fingerprint(model):
  codec, variables, feats, _ = model
  params = variables["params"]
  one = {s: a[:1] for s, a in feats.items()}
  tables = codec.build_tables(params)
  table, _ = codec.gains
  offset = np.asarray(params["log_gain_offset"])
  trained = codec.allocation(params, one)
  gains = {}
  for alpha in (0.0, 0.5, 1.0):
    enc = codec.clone(encode_exponent=alpha)
    assert enc.fingerprint(params, tables) == codec.fingerprint(params, tables)
    shown = enc.read_allocation(params, tables, enc.compress(params, tables, one, (320, 320)))
    gains[alpha] = np.array([shown[s]["gain"] for s in SCALES])
    # (M4) with alpha: log g = beta + alpha * log w, on the table.
    w = np.array([trained[s]["importance"][0] for s in SCALES])
    want = np.exp(np.clip(offset + alpha * np.log(w), -np.log(4), np.log(4)))
    np.testing.assert_allclose(gains[alpha], want, rtol=0.02)
    # The training-mode allocation (M6 weights) does not see the encoder's exponent.
    np.testing.assert_array_equal(enc.allocation(params, one)["p3"]["importance"],
                                  trained["p3"]["importance"])
    dec = codec.decompress(params, tables, enc.compress(params, tables, one, (320, 320)))
    assert all(np.all(np.isfinite(dec[s])) for s in SCALES)  # decodes with the trained codec
  np.testing.assert_allclose(gains[0.0], np.exp(offset), rtol=0.02)  # fixed per-scale gains
  np.testing.assert_allclose(gains[1.0], [float(trained[s]["gain"][0]) for s in SCALES])
  assert not np.allclose(gains[0.5], gains[1.0], rtol=0.02)
  with pytest.raises(errors.ConfigError, match="encode_exponent"):
    checks.init(MFIBACodec(**{**SMALL, "encode_exponent": -0.5}), feats)


def test_encode_exponent_weights_the_fitted_allocation():
  rows = (("p3", 0.002, 60.0, 0.0003, 0.05, 0.03), ("p4", 0.002, 80.0, 0.0002, 0.08, 0.05),
          ("p5", 0.002, 120.0, 0.0001, 0.05, 0.03))
  codec = MFIBACodec(**SMALL, allocation_models=(rows,))
  idx = np.array(codec.gain_indexes({"p3": 1.0, "p4": 1.0, "p5": 1.0}))
  skewed, flat = np.array([2.0, 0.5, 0.5]), np.ones(3)
  # alpha 0: (M3) ignores the importance; alpha 1: it moves rate to the important scale.
  a0 = codec.clone(encode_exponent=0.0)
  assert a0.choose_indexes(skewed, idx) == a0.choose_indexes(flat, idx)
  a1 = codec.clone(encode_exponent=1.0)
  assert a1.choose_indexes(skewed, idx)[0] > a1.choose_indexes(flat, idx)[0]
  assert a1.choose_indexes(skewed, idx) == codec.choose_indexes(skewed, idx)  # the default


def test_fitted_allocation_spends_the_budget_above_each_scales_floor():
  """Rates that cannot fall below a floor (side information, an all-zero y): (M3) must split only
  what the budget leaves above the floors, or a scale given no rate still costs its floor and
  the image overspends (the zoo MFIBA's quality 0 before the fix)."""
  g = (0.25, 0.5, 1.0, 2.0, 4.0)
  rows = (("p3", 0.002, 90.0, 0.002, g, (0.0025, 0.0025, 0.0026, 0.011, 0.043)),
          ("p4", 0.004, 75.0, 0.004, g, (0.0027, 0.0028, 0.005, 0.024, 0.079)),
          ("p5", 0.008, 120.0, 0.004, g, (0.001, 0.0013, 0.0079, 0.028, 0.055)))
  codec = MFIBACodec(**SMALL, allocation_models=(rows,))
  curves = {s: m[1] for s, m in codec.fitted_models().items()}
  table = codec.gains[0]
  for start in ({"p3": 1.06, "p4": 0.72, "p5": 0.75}, {"p3": 2.0, "p4": 1.5, "p5": 1.0}):
    idx = np.array(codec.gain_indexes(start))
    budget = sum(float(curves[s](table[i])) for s, i in zip(SCALES, idx))
    chosen = codec.choose_indexes(np.ones(3), idx)
    spent = sum(float(curves[s](table[i])) for s, i in zip(SCALES, chosen))
    assert spent == pytest.approx(budget, rel=0.03), (start, chosen)
  # budget_scale: the encoder spends that multiple of MFIP's budget.
  start = np.array(codec.gain_indexes({"p3": 2.0, "p4": 1.5, "p5": 1.0}))
  budget = sum(float(curves[s](table[i])) for s, i in zip(SCALES, start))
  for scale in (0.6, 1.3):
    chosen = codec.clone(budget_scale=scale).choose_indexes(np.array([1.5, 1.0, 0.5]), start)
    spent = sum(float(curves[s](table[i])) for s, i in zip(SCALES, chosen))
    assert spent == pytest.approx(scale * budget, rel=0.03), (scale, chosen)


def test_calibrate_measures_each_scale_over_the_detections_it_feeds(model):
  """A per-level head (each output a function of one cell of one scale): head outputs that no
  scale feeds (here appended constant rows, as P3's cells are to P5) must not dilute a scale's
  task loss, so the fitted (M2) models are the same with or without them."""
  codec, variables, feats, _ = model
  rng = np.random.default_rng(1)
  proj = {s: jnp.asarray(rng.normal(size=(feats[s].shape[-1], 7)) * 0.3, jnp.float32)
          for s in SCALES}

  def head(f, extra=0):
    rows = [jnp.reshape(f[s] @ proj[s], (f[s].shape[0], -1, 7)) for s in SCALES]
    return jnp.concatenate(rows + [jnp.zeros((f["p3"].shape[0], extra, 7))], axis=1)

  cells = sum(feats[s].shape[1] * feats[s].shape[2] for s in SCALES)
  fit = lambda task_fn: mfiba.calibrate(codec, variables["params"], [feats], 40.0 ** 2, task_fn,
                                        codec.denormalize)
  plain, padded = fit(head), fit(lambda f: head(f, extra=4 * cells))
  assert plain[0] is not None and len(plain[0]) == 3  # every scale fitted
  for (s, *got), (t, *want) in zip(padded[0], plain[0]):
    assert s == t
    np.testing.assert_allclose(got[:3], want[:3], rtol=1e-4)  # float32 sums in another order
    np.testing.assert_allclose(got[3:], want[3:], rtol=1e-6)  # the rate-gain curve


def test_weighted_distortion_in_the_loss():
  rng = np.random.default_rng(0)
  f = {s: jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32) for s in ("p3", "p4")}
  fh = {s: v + jnp.asarray(rng.normal(size=v.shape) * (i + 1), jnp.float32)
        for i, (s, v) in enumerate(f.items())}
  bits = {"p3/y": jnp.array([10.0, 20.0])}
  sw = {"p3": 1.0, "p4": 0.5}
  plain, m0 = loss_lib.rate_distortion({"features_hat": fh, "bits": bits}, f, 16.0, 2.0, sw)
  ones = {s: jnp.ones(2) for s in f}
  same, m1 = loss_lib.rate_distortion({"features_hat": fh, "bits": bits,
                                       "distortion_weights": ones}, f, 16.0, 2.0, sw)
  np.testing.assert_allclose(same, plain, rtol=1e-6)
  w = {"p3": jnp.array([2.0, 0.0]), "p4": jnp.array([0.5, 1.5])}
  got, m2 = loss_lib.rate_distortion({"features_hat": fh, "bits": bits, "distortion_weights": w},
                                     f, 16.0, 2.0, sw)
  per = {s: np.mean(np.square(np.asarray(fh[s] - f[s])).reshape(2, -1), axis=1) for s in f}
  want_d = np.mean(2 * per["p3"] * 1.0 * np.array([1.0, 0.0])) + np.mean(
      0.5 * per["p4"] * np.array([0.5, 1.5]))
  np.testing.assert_allclose(m2["mse_weighted"], want_d, rtol=1e-5)
  np.testing.assert_allclose(got, m0["bpp"] + 2.0 * want_d, rtol=1e-5)
  np.testing.assert_allclose(m2["mse"], m0["mse"], rtol=1e-6)  # the plain MSE metric is kept
  assert float(m2["distortion_weight/p4"]) == pytest.approx(1.0)


def test_one_train_step_reaches_mfip_and_gains():
  # Two scales (faster to compile); the coarsest map is 2x2, so MFIP pools a 1x1 map there.
  codec = MFIBACodec(**{**SMALL, "channels": (16, 32)}, scales=("p3", "p4"))
  rng = np.random.default_rng(3)
  feats = {"p3": rng.normal(size=(2, 4, 4, 16)).astype(np.float32),
           "p4": rng.normal(size=(2, 2, 2, 32)).astype(np.float32)}
  params = checks.init(codec, feats)["params"]
  tx = optax.adam(1e-2)
  step = jax.jit(train_lib.make_train_step(codec, tx, jax.random.PRNGKey(0), 2.0,
                                           {"p3": 1.0, "p4": 1.0}))
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  batch = {"features": feats, "pixels": jnp.float32(320 * 320)}
  new, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["bpp"]) > 0
  assert "mse_weighted" in metrics and "distortion_weight/p3" in metrics
  assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(new["params"]))
  moved = lambda a, b: float(jnp.max(jnp.abs(a - b))) > 0
  assert moved(new["params"]["log_gain_offset"], params["log_gain_offset"])
  assert moved(new["params"]["mfip"]["Dense_1"]["kernel"], params["mfip"]["Dense_1"]["kernel"])


def test_config_errors():
  feats = checks.pyramid()
  for kw, match in ((dict(gain_range=1.0), "gain_range"), (dict(gain_levels=300), "gain_levels"),
                    (dict(importance_exponent=-1.0), "importance_exponent"),
                    (dict(mfip_channels=0), "mfip_channels"),
                    (dict(budget_scale=0.0), "budget_scale"),
                    (dict(train_quantization="dither"), "train_quantization"),
                    (dict(channels=(16, 32)), "channel counts"),
                    (dict(allocation_models=((("p3", 1.0, 1.0, 0.0, (1.0, 0.5), (0.1, 0.2)),),)),
                     "allocation_models row of 'p3'"),
                    (dict(allocation_models=((("p3", 1.0, 1.0, 0.0, 0.1, -0.2),),)),
                     "allocation_models row of 'p3'"),
                    (dict(allocation_models=((("p3", 1.0, 1.0, 0.0, (0.5, 1.0), 0.2),),)),
                     "allocation_models row of 'p3'"),
                    (dict(allocation_models=((("p3", 1.0, 1.0, 0.0, "p", "q"),),)),
                     "allocation_models row of 'p3'")):
    with pytest.raises(errors.ConfigError, match=match):
      checks.init(MFIBACodec(**{**SMALL, **kw}), feats)


def test_configs_and_registry():
  for arg in ("smoke", "", "context,exponent=0,gain_range=2"):
    config = mfiba_config.get_config(arg)
    assert config.codec.name == "mfiba" and tuple(config.loss.lmbdas) == common.LAMBDAS
    codec = registry.build_codec("mfiba", config.codec.kwargs, SCALES, (32, 48, 64))
    assert isinstance(codec, MFIBACodec)
  assert mfiba_config.get_config("smoke").codec.kwargs.mfip_channels == 8
  kw = mfiba_config.get_config("").codec.kwargs
  assert tuple(kw.latent_channels) == (64, 96, 128) and kw.gain_range == 4.0
  assert codec.importance_exponent == 0 and codec.gain_range == 2 and codec.context_slices == 4
  assert len(mfiba_config.get_sweep()) == len(common.LAMBDAS)


# ---- task loss-rate model and bit allocation ---------------------------------------------------

def test_fit_rate_task_model_recovers_parameters():
  r = np.linspace(0.05, 1.5, 9)
  t = 0.8 * np.exp(-2.5 * r) + 0.1
  m = mfiba.fit_rate_task_model(r, t)
  assert (m.a, m.b, m.c) == pytest.approx((0.8, 2.5, 0.1), rel=1e-3)
  noisy = t + np.random.default_rng(0).normal(size=t.shape) * 1e-3
  m2 = mfiba.fit_rate_task_model(r, noisy)
  assert m2.b == pytest.approx(2.5, rel=0.15)
  with pytest.raises(errors.InvalidInputError, match="points"):
    mfiba.fit_rate_task_model(r[:2], t[:2])
  with pytest.raises(errors.InvalidInputError, match="NaN"):
    mfiba.fit_rate_task_model(r, np.where(r > 1, np.nan, t))


def test_allocate_follows_importance_and_kkt():
  same = {s: mfiba.TaskRateModel(1.0, 2.0, 0.0) for s in SCALES}
  eq = mfiba.allocate(same, [1.0, 1.0, 1.0], 0.9)
  assert list(eq.values()) == pytest.approx([0.3, 0.3, 0.3], abs=1e-9)
  r = mfiba.allocate(same, {"p3": 2.0, "p4": 0.7, "p5": 0.3}, 0.9)
  assert sum(r.values()) == pytest.approx(0.9) and r["p3"] > r["p4"] > r["p5"] >= 0
  # Interior solution: equal marginal weighted task-loss reduction w_s a_s b_s exp(-b_s R_s).
  models = {"p3": mfiba.TaskRateModel(1.0, 3.0, 0.1), "p4": mfiba.TaskRateModel(0.5, 1.0, 0.0),
            "p5": mfiba.TaskRateModel(2.0, 2.0, 0.2)}
  w = {"p3": 1.2, "p4": 1.0, "p5": 0.8}
  r = mfiba.allocate(models, w, 2.0)
  assert all(v > 0 for v in r.values()) and sum(r.values()) == pytest.approx(2.0)
  marg = [w[s] * models[s].slope(r[s]) for s in SCALES]
  assert marg == pytest.approx([marg[0]] * 3, rel=1e-6)
  # Better than nearby feasible allocations.
  cost = lambda x: sum(w[s] * models[s](x[s]) for s in SCALES)
  for d in (0.05, -0.05):
    assert cost(r) <= cost(dict(r, p3=r["p3"] + d, p4=r["p4"] - d)) + 1e-12
  # A tiny budget goes where the marginal gain is largest; the others get exactly 0.
  small = mfiba.allocate(same, [3.0, 1.0, 1.0], 0.1)
  assert small["p3"] == pytest.approx(0.1) and small["p4"] == small["p5"] == 0.0
  assert mfiba.allocate(same, [1, 1, 1], 0.0) == {s: 0.0 for s in SCALES}
  with pytest.raises(errors.InvalidInputError):
    mfiba.allocate(same, [1.0, 1.0], 1.0)
  with pytest.raises(errors.InvalidInputError):
    mfiba.allocate(same, [1.0, 1.0, 1.0], -1.0)


def test_rate_gain_model():
  g = np.array([0.25, 0.5, 1.0, 2.0, 4.0])
  m = mfiba.fit_rate_gain_model(g, 0.3 + 0.1 * np.log2(g))
  assert (m.p, m.q) == pytest.approx((0.3, 0.1))
  assert m.gain(0.4) == pytest.approx(2.0) and m.gain(5.0, gain_range=4.0) == 4.0
  with pytest.raises(errors.InvalidInputError, match="grow"):
    mfiba.fit_rate_gain_model(g, 1 - 0.1 * np.log2(g))


def test_rate_gain_curve_follows_a_convex_measured_rate():
  """A floor of side information, then about one bit per element per doubling (the shape the zoo
  MFIBA measures): the curve is exact at the measured gains and within 15% between them, where
  the straight line of `fit_rate_gain_model` is off by over 50% and negative at the lowest gain."""
  g = np.geomspace(0.25, 4.0, 9)
  rate = 0.002 + 0.01 * np.log2(1 + (g / 0.7) ** 3)  # floor, then ~linear in log2 g
  measured = g[::2]  # what `calibrate` measures: five gains
  curve = mfiba.rate_gain_model(measured.tolist(), rate[::2].tolist())
  line = mfiba.fit_rate_gain_model(measured, rate[::2])
  np.testing.assert_allclose(curve(measured), rate[::2], rtol=1e-9)
  between = g[1::2]
  assert np.max(np.abs(curve(between) / rate[1::2] - 1)) < 0.15
  assert np.max(np.abs(line(between) / rate[1::2] - 1)) > 0.5 and line(0.25) < 0
  for r in rate[::2][1:]:  # the inverse gives back the measured gain
    assert curve.gain(r) == pytest.approx(measured[list(rate[::2]).index(r)])
  # a flat stretch: the largest gain of the stretch; outside the measured rates: clipped
  flat = mfiba.RateGainCurve((0.25, 0.5, 1.0, 2.0), (0.002, 0.002, 0.004, 0.008))
  assert flat.gain(0.002) == pytest.approx(0.5) and flat.gain(1e-6) == pytest.approx(0.5)
  assert flat.gain(1.0) == pytest.approx(2.0) and flat.gain(0.003) == pytest.approx(0.75)
  for gains, rates in [((1.0, 0.5), (0.1, 0.2)), ((0.5, 1.0), (0.2, 0.1)), ((0.5, 1.0), (0, 0.1)),
                       ((0.5, 1.0), (0.1, np.nan))]:
    with pytest.raises(errors.InvalidInputError):
      mfiba.RateGainCurve(gains, rates)


@pytest.mark.slow
def test_smoke_config_trains(tmp_path):
  config = mfiba_config.get_config("smoke")
  with config.unlocked():
    config.steps, config.progress = 2, False
  metrics = train_lib.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["loss"]) and metrics["bpp"] > 0
  assert {f"distortion_weight/{s}" for s in ("p3", "p4", "p5")} <= set(metrics)
  codec, params, tables, run = train_lib.load_codec(tmp_path)
  assert run["codec"] == "mfiba" and isinstance(codec, MFIBACodec)
  rng = np.random.default_rng(0)
  feats = {s: rng.normal(size=(1, 16 >> i, 16 >> i, c)).astype(np.float32)
           for i, (s, c) in enumerate(zip(run["scales"], run["channels"]))}
  data = codec.compress(params, tables, feats, (128, 128))
  out = codec.decompress(params, tables, data)
  norm = codec.normalize(feats)
  ev = jax.jit(lambda p, f: codec.apply({"params": p}, f, False))(params, norm)
  # The encoder's allocation: MFIP's gains, re-split by the calibrated models where they fit.
  want = codec.choose_indexes(np.asarray(ev["importance"])[0], np.asarray(ev["gain_indexes"])[0])
  assert bitstream.unpack(data).metadata["allocation"] == want
  hat, _ = jax.jit(lambda p, f, i: codec.apply({"params": p}, f, i,
                                               method=MFIBACodec.forward_with_indexes))(
      params, norm, jnp.asarray([want]))
  hat = codec.denormalize(hat)
  for s in feats:
    np.testing.assert_allclose(out[s], hat[s], atol=1e-5, rtol=1e-5)


def test_warm_start_from_base_codec_codes_as_it():
  """`init_from="zoo:base"` overlays the base codec's per-scale models on a fresh MFIBA: with MFIP's
  uniform start (gain 1 on every scale) it then codes exactly as the base codec does."""
  base_kw = {k: v for k, v in SMALL.items() if k not in ("mfip_channels", "channels")}
  hyper = registry.build_codec("hyperprior", base_kw, SCALES, SMALL["channels"])
  feats = checks.pyramid(batch=2, seed=3)
  source = checks.init(hyper, feats)["params"]
  source = jax.tree.map(lambda a: a + 0.01, source)  # differs from MFIBA's own initialisation
  codec = MFIBACodec(**SMALL)
  params, copied, total = train_lib.overlay_params(checks.init(codec, feats)["params"], source)
  assert copied == len(jax.tree.leaves(source)) and total == copied + 11  # + MFIP, offsets
  want = hyper.apply({"params": source}, feats, False)
  got = codec.apply({"params": params}, feats, False)
  for s in SCALES:
    np.testing.assert_array_equal(got["features_hat"][s], want["features_hat"][s])
    np.testing.assert_array_equal(got["bits"][f"{s}/y"], want["bits"][f"{s}/y"])
  wider = registry.build_codec("hyperprior", dict(base_kw, latent_channels=24), SCALES,
                               SMALL["channels"])
  with pytest.raises(errors.ConfigError, match="differ in shape"):
    train_lib.overlay_params(params, checks.init(wider, feats)["params"])
  with pytest.raises(errors.ConfigError, match="shares no parameter"):
    train_lib.overlay_params(params, {"other": np.zeros(3)})
  with pytest.raises(errors.ConfigError, match="no zoo model 'nope'"):
    train_lib.read_warm_start("zoo:nope")
  assert train_lib.read_warm_start("") is None
  with pytest.raises(errors.ConfigError, match="not a training workdir"):
    train_lib.read_warm_start("runs/some_workdir")


def test_alpha_script_takes_the_zoo_mfiba_on_either_base(tmp_path, load_script):
  """scripts/mfiba_alpha.py writes encoder-exponent variants of the zoo's MFIBA (cross-scale since
  stop 39; the per-scale MFIBACodec before) and refuses a file that is not MFIBA."""
  from hssc_jax import zoo  # pylint: disable=g-import-not-at-top
  script = load_script("mfiba_alpha")
  out = script.write_variant(zoo.path_of("mfiba"), 0.25, tmp_path, "mfiba_a025")
  assert zoo.read_info(out)["codec_kwargs"]["encode_exponent"] == 0.25
  out = script.write_variant(zoo.path_of("mfiba"), 0.5, tmp_path, "mfiba_a05_b04", 0.4)
  assert zoo.read_info(out)["codec_kwargs"]["budget_scale"] == 0.4
  assert zoo.load("mfiba_a05_b04", 0, tmp_path).codec.budget_scale == 0.4
  with pytest.raises(SystemExit, match="does not hold an MFIBA model"):
    script.write_variant(zoo.path_of("base"), 0.25, tmp_path, "base_a025")


def test_importance_labels_follow_the_papers_normalisation(load_script):
  """Labels of scripts/mfiba_importance.py: per image and quality the task losses are min-max
  normalised over the scales (all equal: 1 each), summed over qualities, normalised to sum S."""
  script = load_script("mfiba_importance")
  losses = np.array([[[1.0, 2.0], [3.0, 6.0], [2.0, 4.0]],  # p4 > p5 > p3 at both qualities
                     [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]],  # nothing to choose between scales
                     [[1.0, 9.0], [2.0, 1.0], [3.0, 5.0]]])  # the order changes with quality
  w = script.importance_labels(losses)
  np.testing.assert_allclose(w.sum(axis=1), 3.0)
  np.testing.assert_allclose(w[0], [0.0, 2.0, 1.0])
  np.testing.assert_allclose(w[1], [1.0, 1.0, 1.0])
  np.testing.assert_allclose(w[2], np.array([1.0, 0.5, 1.5]) * 3 / 3.0)


def test_importance_fit_and_centring_of_mfip(load_script):
  """MFIP fitted to labels that follow an input statistic learns them (held-out cross-entropy below
  the start), and `centred` moves its mean log importance to the target up to a common constant
  (sum_s w_s = S fixes that constant) without changing how it varies between inputs."""
  script = load_script("mfiba_importance")
  rng = np.random.default_rng(0)
  def pyramid(n):
    x = [rng.normal(size=(n, 8 >> i, 8 >> i, 4)).astype(np.float32) for i in range(3)]
    level = rng.uniform(-2, 2, size=n).astype(np.float32)
    x[2] += level[:, None, None, None]
    logits = np.stack([np.zeros(n), np.zeros(n), level], 1)
    return x, 3 * np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  (x_fit, w_fit), (x_held, w_held) = pyramid(64), pyramid(32)
  net = mfiba.MFIP(3, 8)
  init = net.init(jax.random.PRNGKey(0), x_fit)["params"]
  fitted, log, best = script.fit_mfip(init, 8, x_fit, w_fit, x_held, w_held, 200, 1e-2, 0.0)
  assert best > 0 and min(h for _, _, h in log) < 0.9 * log[0][2]
  target = np.array([0.3, -0.1, -0.4])
  new = script.centred(fitted, 8, x_fit, target)
  before, after = (np.asarray(net.apply({"params": p}, x_fit)) for p in (fitted, new))
  gap = after.mean(0) - target
  assert np.ptp(gap) < 2e-2 and np.ptp(before.mean(0) - target) > 0.1
  assert np.corrcoef(before[:, 2], after[:, 2])[0, 1] > 0.99
