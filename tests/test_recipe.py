"""The training recipe: normalization, variable rate, the task term, the compact container, the
feature cache without flips, exact resume, MFIBA's encode-time allocation and the model zoo."""

import dataclasses
import json
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base as base_config
from hssc_jax import bitstream, errors, train_lib, zoo
from hssc_jax.codecs import registry
from hssc_jax.codecs.hyperprior import HyperpriorCodec
from hssc_jax.codecs.mfiba import MFIBACodec
from hssc_jax.training import feature_cache
from hssc_jax.training import loss as loss_lib

SCALES = ("p3", "p4", "p5")
CHANNELS = (4, 8, 8)
SMALL = dict(channels=CHANNELS, latent_channels=8, hidden_channels=8, hyper_channels=8)


def _feats(seed=0, size=16, batch=1, scale=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  return {s: (offset + scale * rng.normal(size=(batch, size >> i, size >> i, c))).astype(np.float32)
          for i, (s, c) in enumerate(zip(SCALES, CHANNELS))}


def _init(codec, feats):
  key = jax.random.PRNGKey(0)
  params = codec.init({"params": key, "noise": key}, codec.normalize(feats), True)["params"]
  return params, codec.build_tables(params)


def test_fit_feature_norm_and_normalized_round_trip():
  feats = _feats(batch=4, scale=3.0, offset=2.0)
  norm = train_lib.fit_feature_norm(iter([feats, feats]), 2, SCALES)
  for (s, mean, std), c in zip(norm, CHANNELS):
    x = feats[s].reshape(-1, c).astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-5)
  codec = HyperpriorCodec(**SMALL, feature_norm=norm)
  one = {s: a[:1] for s, a in feats.items()}
  z = codec.normalize(one)
  assert all(abs(float(np.mean(z[s]))) < 1.0 for s in SCALES)
  np.testing.assert_allclose(codec.denormalize(z)["p3"], one["p3"], rtol=1e-5, atol=1e-5)
  params, tables = _init(codec, one)
  out = codec.decompress(params, tables, codec.compress(params, tables, one, (64, 64)))
  ev = codec.denormalize(codec.apply({"params": params}, z, False)["features_hat"])
  for s in SCALES:
    np.testing.assert_allclose(out[s], ev[s], atol=1e-4)
  with pytest.raises(errors.ConfigError, match="feature_norm"):
    HyperpriorCodec(**SMALL, feature_norm=norm[:2]).normalize(one)
  with pytest.raises(errors.InvalidInputError, match="channels"):
    codec.compress(params, tables, {**one, "p4": np.zeros((1, 8, 8, 5), np.float32)}, (64, 64))


def test_variable_rate_qualities_order_rates_and_bind_bitstreams():
  codec = HyperpriorCodec(**SMALL, qualities=3)
  one = _feats(size=32)
  params, tables = _init(codec, one)
  assert params["models_p3"]["gain"].shape == (3, 8)
  sizes = []
  for q in range(3):
    c = codec.clone(quality=q)
    data = c.compress(params, tables, one, (256, 256))
    sizes.append(len(data))
    out = c.decompress(params, tables, data)
    ev = c.apply({"params": params}, one, False)["features_hat"]
    np.testing.assert_allclose(out["p4"], ev["p4"], atol=1e-4)
    if q:
      with pytest.raises(errors.ModelMismatchError):
        codec.clone(quality=q - 1).decompress(params, tables, data)
  # Initial gains spread over GAIN_RANGE: a higher quality scales the latents up, costs more bits.
  assert sizes[0] < sizes[1] < sizes[2], sizes


def test_train_step_samples_a_quality_per_step_with_its_lambda():
  import optax  # pylint: disable=g-import-not-at-top
  codec = HyperpriorCodec(**SMALL, qualities=4)
  feats = _feats(batch=2, size=16)
  params, _ = _init(codec, feats)
  tx = optax.adam(1e-3)
  step = jax.jit(train_lib.make_train_step(codec, tx, jax.random.PRNGKey(1), (1.0, 2.0, 4.0, 8.0),
                                           {}))
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  seen = set()
  for _ in range(12):
    state, m = step(state, {"features": feats, "pixels": np.full((2,), 256.0, np.float32)})
    q = int(m["quality"])
    seen.add(q)
    lmbda = (1.0, 2.0, 4.0, 8.0)[q]
    np.testing.assert_allclose(float(m["loss"]), float(m["bpp"]) + lmbda * float(m["mse"]),
                               rtol=1e-5)
  assert len(seen) >= 3


def test_train_step_draws_qualities_in_proportion_to_quality_weights():
  import optax  # pylint: disable=g-import-not-at-top
  codec = HyperpriorCodec(**SMALL, qualities=4)
  feats = _feats(batch=1, size=16)
  params, _ = _init(codec, feats)
  tx = optax.sgd(0.0)
  step = jax.jit(train_lib.make_train_step(codec, tx, jax.random.PRNGKey(3), (1.0, 2.0, 4.0, 8.0),
                                           {}, quality_weights=(0.0, 1.0, 0.0, 3.0)))
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  counts = np.zeros(4, int)
  for _ in range(80):
    state, m = step(state, {"features": feats, "pixels": np.full((1,), 64.0, np.float32)})
    counts[int(m["quality"])] += 1
  assert counts[0] == counts[2] == 0  # zero weight: never drawn
  assert 40 <= counts[3] <= 75 and counts[1] >= 5, counts  # 3:1 in expectation (60 of 80)


def test_task_distortion_weights_object_rows():
  rng = np.random.default_rng(0)
  ref = jnp.asarray(rng.normal(size=(1, 50, 85)).astype(np.float32))
  ref = ref.at[:, :, 4].set(-9.0).at[:, 7, 4].set(4.0)  # one object row, the rest background
  assert float(loss_lib.task_distortion(ref, ref)) == 0.0
  bump = jnp.zeros_like(ref).at[:, :, 5].set(2.0)
  on_object = ref + bump * (jnp.arange(50) == 7)[None, :, None]
  on_background = ref + bump * (jnp.arange(50) == 20)[None, :, None]
  assert float(loss_lib.task_distortion(ref, on_object)) > 20 * float(
      loss_lib.task_distortion(ref, on_background))
  # A spurious detection (objectness raised on a background row) is weighted like an object.
  spurious = ref.at[:, 20, 4].set(4.0)
  assert float(loss_lib.task_distortion(ref, spurious)) > float(
      loss_lib.task_distortion(ref, on_background))
  # A mask keeps only its rows: the loss of a level (rows 10-19, no object) is not diluted by the
  # object elsewhere, and equals the loss computed on those rows alone.
  level = jnp.zeros((1, 50), bool).at[:, 10:20].set(True)
  hit = ref + bump * (jnp.arange(50) == 13)[None, :, None]
  np.testing.assert_allclose(float(loss_lib.task_distortion(ref, hit, level)),
                             float(loss_lib.task_distortion(ref[:, 10:20], hit[:, 10:20])),
                             rtol=1e-6)
  assert float(loss_lib.task_distortion(ref, hit, level)) > 5 * float(
      loss_lib.task_distortion(ref, hit))


def test_feature_cache_batches_are_stored_maps_and_reproducible(tmp_path):
  feats = _feats(batch=6, size=8)
  batches = iter([{"image": np.zeros((6, 1, 1, 3), np.float32)}] * 2)
  cache = feature_cache.build(tmp_path, batches, 1, lambda x: feats, SCALES, 64, {}, seed=3)
  a, b = cache.batch(5, 4), cache.batch(5, 4)
  for s in SCALES:
    np.testing.assert_array_equal(a["features"][s], b["features"][s])
    for row in a["features"][s]:  # every example is a stored map as it is, never flipped
      assert any(np.array_equal(row, x.astype(np.float16).astype(np.float32)) for x in feats[s])


def test_feature_cache_crops_are_aligned_windows_of_the_stored_maps(tmp_path):
  feats = _feats(batch=6, size=16)  # maps of 64-pixel images: strides 4, 8, 16
  batches = iter([{"image": np.zeros((6, 1, 1, 3), np.float32)}])
  cache = feature_cache.build(tmp_path, batches, 1, lambda x: feats, SCALES, 64, {}, seed=3,
                              crop=32)
  stored = {s: v.astype(np.float16).astype(np.float32) for s, v in feats.items()}
  seen = set()
  for step in range(6):
    b = cache.batch(step, 4)
    assert b["pixels"].tolist() == [32.0**2] * 4
    for k in range(4):
      p3 = b["features"]["p3"][k]
      assert p3.shape == (8, 8, CHANNELS[0])
      # the one stored map and 16-pixel-aligned offset this window was cut from ...
      hits = [(i, y, x) for i in range(6) for y in range(0, 33, 16) for x in range(0, 33, 16)
              if np.array_equal(p3, stored["p3"][i, y // 4:y // 4 + 8, x // 4:x // 4 + 8])]
      assert len(hits) == 1
      i, y, x = hits[0]
      seen.add((y, x))
      for s, st in (("p4", 8), ("p5", 16)):  # ... is the same window at every scale
        np.testing.assert_array_equal(
            b["features"][s][k], stored[s][i, y // st:(y + 32) // st, x // st:(x + 32) // st])
  assert len(seen) > 1
  again = feature_cache.FeatureCache(tmp_path, seed=3, crop=32).batch(4, 4)
  np.testing.assert_array_equal(again["features"]["p5"], cache.batch(4, 4)["features"]["p5"])
  with pytest.raises(ValueError, match="does not fit"):
    feature_cache.FeatureCache(tmp_path, crop=24)


def test_crop_features_needs_the_cache_and_a_letterbox(tmp_path):
  config = base_config.get_config("smoke")
  with config.unlocked():
    config.data.crop_features = True
  from hssc_jax.detectors import factory  # pylint: disable=g-import-not-at-top
  det, variables = factory.build(config.detector)
  with pytest.raises(errors.ConfigError, match="crop_features"):
    train_lib._image_batches(  # pylint: disable=protected-access
        config, det, variables, tmp_path, factory.identity(config.detector))


def test_crop_features_trains_on_windows_of_whole_image_maps(tmp_path):
  config = base_config.get_config("smoke")
  with config.unlocked():
    config.data.update(cache_features=True, cache_variants=1, crop_features=True, letterbox=128,
                       cache_dir=str(tmp_path / "cache"))
  from hssc_jax.detectors import factory  # pylint: disable=g-import-not-at-top
  det, variables = factory.build(config.detector)
  batches_from, kind = train_lib._image_batches(  # pylint: disable=protected-access
      config, det, variables, tmp_path, factory.identity(config.detector))
  b = next(batches_from(0))
  whole = jax.eval_shape(det.part1, variables, jnp.zeros((1, 128, 128, 3), jnp.float32))
  for s, a in b["features"].items():
    assert a.shape[1:3] == tuple(d // 2 for d in whole[s].shape[1:3])  # 64 of 128 pixels
  assert kind == "features" and b["pixels"][0] == 64.0**2


def test_cached_stream_resumes_at_the_exact_batch(tmp_path):
  config = base_config.get_config("smoke")
  with config.unlocked():
    config.data.cache_features = True
    config.data.cache_variants = 2
    config.data.cache_dir = str(tmp_path / "cache")
  from hssc_jax.detectors import factory  # pylint: disable=g-import-not-at-top
  det, variables = factory.build(config.detector)
  batches_from, kind = train_lib._image_batches(  # pylint: disable=protected-access
      config, det, variables, tmp_path, factory.identity(config.detector))
  assert kind == "features"
  it = batches_from(0)
  stream = [next(it) for _ in range(4)]
  resumed = next(batches_from(3))
  for s in resumed["features"]:
    np.testing.assert_array_equal(resumed["features"][s], stream[3]["features"][s])


def _compact_codecs():
  return {
      "hyperprior": (HyperpriorCodec(**SMALL, header="compact"), {}),
      "lmfc": (registry.build_codec("lmfc", dict(fused_channels=8, latent_channels=8,
                                                 hidden_channels=8, hyper_channels=8, stages=0,
                                                 predictor_hidden=8, header="compact"),
                                    SCALES, CHANNELS), {}),
      "mfiba": (MFIBACodec(**SMALL, mfip_channels=4, header="compact"), {}),
  }


@pytest.mark.parametrize("name", ["hyperprior", "lmfc", "mfiba"])
def test_compact_container_round_trip_size_and_hostile_headers(name):
  codec, _ = _compact_codecs()[name]
  one = _feats(size=32)
  params, tables = _init(codec, one)
  data = codec.compress(params, tables, one, (480, 640))
  full = codec.clone(header="full").compress(params, tables, one, (480, 640))
  c = codec.unpack(params, tables, data)
  payload = sum(len(v) for v in c.streams.values())
  assert bitstream.is_compact(data) and len(data) - payload <= 40 < len(full) - payload
  assert c.image_size == (480, 640)
  out = codec.decompress(params, tables, data)
  ref = codec.clone(header="full").decompress(params, tables, full)
  for s in SCALES:
    np.testing.assert_array_equal(out[s], ref[s])
  # One combined digest of the streams' entropy indexes: a wrong one (valid checksum) is refused.
  sizes = ((32, 32), (16, 16), (8, 8))
  template = codec.template(params, tables, sizes)
  assert template.folded and "digest" in template.metadata
  meta = {k: v for k, v in c.metadata.items() if k not in template.folded and k != "pyramid"}
  meta["digest"] = (meta["digest"] + 1) % 2**14
  forged = bitstream.pack_compact(dataclasses.replace(c, metadata=meta), sizes, template)
  with pytest.raises(errors.DeterminismError):
    codec.decompress(params, tables, forged)
  # Truncation, bit flips and foreign models.
  for bad in (data[:-1], data[:5], data[:-4] + b"\0\0\0\0", b"Hj\x03" + data[3:]):
    with pytest.raises(errors.BitstreamError):
      codec.decompress(params, tables, bad)
  key = jax.random.PRNGKey(1)  # the same model trained otherwise: other weights
  other_params = codec.init({"params": key, "noise": key}, one, True)["params"]
  with pytest.raises(errors.ModelMismatchError):
    codec.decompress(other_params, codec.build_tables(other_params), data)

  def forge(body: bytes) -> bytes:  # valid checksum over lying fields
    return body + struct.pack(">I", zlib.crc32(body))

  fp = codec.fingerprint(params, tables)[:4]
  head = b"Hj\x02" + fp
  for lie in (b"\x00\x00" + b"\x00\x02\x02",            # image size 0
              b"\x01\x01" + b"\x00\xff\x7f\xff\x7f",    # feature side 16383 > MAX_FEATURE_SIDE
              b"\x01\x01" + b"\x07\x04\x04",            # 7 explicit sizes for 3 scales
              b"\x01\x01" + b"\x00\x08\x08" + b"\xff\xff\xff\x0f",  # stream longer than the data
              b"\x01\x01" + b"\x00\x08\x08" + b"\xff" * 12):        # a varint that never ends
    with pytest.raises(errors.BitstreamError):
      codec.decompress(params, tables, forge(head + lie))


def test_mfiba_encode_time_allocation_follows_task_models():
  codec = MFIBACodec(**SMALL, mfip_channels=4)
  one = _feats(size=32)
  params, tables = _init(codec, one)
  importance, idx = (np.asarray(a)[0] for a in codec.apply(
      {"params": params}, one, method=MFIBACodec.allocation_indexes))
  assert codec.choose_indexes(importance, idx) == [int(i) for i in idx]  # no models: MFIP's
  # p3's task loss falls steeply with rate, p5's barely: p3 gets the larger gain.
  rows = (("p3", 1.0, 20.0, 0.0, 0.05, 0.02), ("p4", 1.0, 5.0, 0.0, 0.05, 0.02),
          ("p5", 1.0, 0.5, 0.0, 0.05, 0.02))
  fitted = codec.clone(allocation_models=(rows,))
  chosen = fitted.choose_indexes(np.ones(3), idx)
  assert chosen[0] > chosen[2]
  data = fitted.compress(params, tables, one, (256, 256))
  assert [v["index"] for v in fitted.read_allocation(params, tables, data).values()] == chosen
  assert fitted.fingerprint(params, tables) != codec.fingerprint(params, tables)
  with pytest.raises(errors.ConfigError, match="allocation_models"):
    MFIBACodec(**SMALL, allocation_models=((("p9", 1, 1, 0, 0, 1),),)).init(
        jax.random.PRNGKey(0), one, False)


def test_mfiba_explicit_gains_go_through_normalization_and_the_compact_container():
  one = _feats(size=32, scale=3.0, offset=1.0)
  norm = train_lib.fit_feature_norm(iter([one]), 1, SCALES)
  codec = MFIBACodec(**SMALL, mfip_channels=4, feature_norm=norm, header="compact")
  params, tables = _init(codec, one)
  chosen = {s: float(a["gain"][0]) for s, a in codec.allocation(params, codec.normalize(one)).items()}
  data = codec.compress_with_gains(params, tables, one, (256, 256), chosen)
  assert data == codec.compress(params, tables, one, (256, 256)) and bitstream.is_compact(data)


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory):
  root = tmp_path_factory.mktemp("zoo")
  config = base_config.get_config("smoke")
  with config.unlocked():
    config.progress = False
    config.steps = 2
  train_lib.train_and_evaluate(config, str(root / "run"))
  path = zoo.export(root / "run", "tiny", root / "zoo")
  return root, path


def test_zoo_export_load_code_and_bad_files(smoke_zoo):
  root, path = smoke_zoo
  folder = root / "zoo"
  assert zoo.names(folder) == ["tiny"]
  info = zoo.read_info(path)
  qualities = int(info["codec_kwargs"]["qualities"])
  assert len(info["fingerprints"]) == qualities > 1
  model = zoo.load("tiny", 1, folder)
  assert model.quality == 1 and model.codec.header == "compact"
  rng = np.random.default_rng(0)
  feats = {s: rng.normal(size=(1, 16 >> i, 16 >> i, c)).astype(np.float32)
           for i, (s, c) in enumerate(zip(info["scales"], info["channels"]))}
  data = model.compress(feats, (128, 128))
  assert model.decompress(data)["p3"].shape == feats["p3"].shape
  with pytest.raises(errors.ModelMismatchError):
    zoo.load("tiny", 0, folder).decompress(data)
  with pytest.raises(errors.ConfigError, match="no zoo model"):
    zoo.load("nope", 0, folder)
  with pytest.raises(errors.ConfigError, match="qualities"):
    zoo.load("tiny", qualities, folder)
  with pytest.raises(errors.ConfigError, match="channels"):
    zoo.check_detector(model, info["scales"], [c + 1 for c in info["channels"]])
  blob = path.read_bytes()
  bad = root / "bad"
  bad.mkdir()
  for damaged in (blob[:len(blob) // 2], blob[:20], b"HSJXZOO\0\x00\x09" + blob[10:],
                  blob[:-1] + bytes([blob[-1] ^ 1])):
    (bad / "tiny.hsz").write_bytes(damaged)
    with pytest.raises(zoo.ZooError):
      zoo.load("tiny", 0, bad)
  # A header whose recorded fingerprints do not match what this library builds from the weights.
  n = struct.unpack(">I", blob[10:14])[0]
  header = json.loads(blob[14:14 + n])
  header["fingerprints"] = ["00" * 16] * qualities
  raw = json.dumps(header).encode()
  (bad / "tiny.hsz").write_bytes(blob[:10] + struct.pack(">I", len(raw)) + raw + blob[14 + n:])
  with pytest.raises(zoo.ZooError, match="fingerprint"):
    zoo.load("tiny", 0, bad)


def _zoo_file(header: dict, tables: bytes, params: bytes, version: int = zoo.FORMAT_VERSION):
  import hashlib  # pylint: disable=g-import-not-at-top
  header = dict(header, payload_sha256=hashlib.sha256(tables + params).hexdigest(),
                tables_bytes=len(tables))
  if version == 1:
    del header["tables_bytes"]
  raw = json.dumps(header).encode()
  return b"HSJXZOO\0" + struct.pack(">HI", version, len(raw)) + raw + tables + params


def test_zoo_files_carry_their_tables(smoke_zoo, monkeypatch):
  """The CDF tables are built once at export and read back, never rebuilt (their floating-point
  last bits depend on the machine); tables that lie under a valid checksum are refused, and a
  version-1 file (no tables) loads with rebuilt tables and upgrades to the current version; a
  version-2 file (parameters not compressed) loads with the same fingerprints."""
  root, path = smoke_zoo
  import flax.serialization  # pylint: disable=g-import-not-at-top
  blob = path.read_bytes()
  n = struct.unpack(">I", blob[10:14])[0]
  header = json.loads(blob[14:14 + n])
  m = header["tables_bytes"]
  packed, params = blob[14 + n:14 + n + m], blob[14 + n + m:]
  raw = zlib.decompress(params)  # versions 1 and 2 store the msgpack as it is
  tables = flax.serialization.msgpack_restore(zlib.decompress(packed))
  model = zoo.load("tiny", 1, root / "zoo")
  want = model.codec.build_tables(model.params)
  np.testing.assert_array_equal(model.tables["p3"]["z"]["lookup"], want["p3"]["z"]["lookup"])
  bad = root / "lying_tables"
  bad.mkdir()
  lookup = np.array(tables["p3"]["z"]["lookup"])
  lookup[0, 2] += 1  # one count moved between two symbols: a table the encoder never used
  tables["p3"]["z"]["lookup"] = lookup
  lying = zlib.compress(flax.serialization.msgpack_serialize(tables))
  (bad / "tiny.hsz").write_bytes(_zoo_file(header, lying, params))
  with pytest.raises(zoo.ZooError, match="fingerprint"):
    zoo.load("tiny", 1, bad)
  for junk in (b"\x78\x9c junk", packed[:-4]):
    (bad / "tiny.hsz").write_bytes(_zoo_file(header, junk, params))
    with pytest.raises(zoo.ZooError, match="cannot be read"):
      zoo.load("tiny", 1, bad)
  monkeypatch.setattr(zoo, "MAX_INFLATED_BYTES", len(raw) - 1)  # parameters that inflate too far
  (bad / "tiny.hsz").write_bytes(_zoo_file(header, packed, params))
  with pytest.raises(zoo.ZooError, match="at most"):
    zoo.load("tiny", 1, bad)
  monkeypatch.undo()
  old = root / "version1"
  old.mkdir()
  (old / "tiny.hsz").write_bytes(_zoo_file(header, b"", raw, version=1))
  data = model.compress({s: np.ones((1, 16 >> i, 16 >> i, c), np.float32) for i, (s, c) in
                         enumerate(zip(header["scales"], header["channels"]))}, (128, 128))
  assert zoo.load("tiny", 1, old).decompress(data)["p3"].shape == (1, 16, 16, header["channels"][0])
  zoo.upgrade(old / "tiny.hsz")
  assert (old / "tiny.hsz").read_bytes() == blob
  two = root / "version2"
  two.mkdir()
  (two / "tiny.hsz").write_bytes(_zoo_file(header, packed, raw, version=2))
  assert zoo.load("tiny", 1, two).decompress(data)["p3"].shape == (1, 16, 16, header["channels"][0])
  assert len(raw) > len(params)


def test_resave_keeps_the_tables_another_machine_built(smoke_zoo):
  """A zoo file written on another machine holds tables whose last bits this one may not rebuild
  (seen: MFIBA's, 54 entries apart on an AVX-512 EPYC). Re-saving it with options that leave the
  tables alone (an encoder setting, a new name) keeps those bits and so the fingerprints;
  `upgrade` (rebuild_tables) builds them here."""
  root, path = smoke_zoo
  info, params, built = zoo._read(path)  # pylint: disable=protected-access
  other = jax.tree.map(np.array, built)
  other["p3"]["z"]["lookup"][0, 2] += 1  # the tables "another machine" built
  keep = {k: v for k, v in info.items() if k in ("detector", "lmbdas", "steps")}
  elsewhere = zoo.save("tiny", info["codec"], info["codec_kwargs"], info["scales"],
                       info["channels"], params, root / "elsewhere", tables=other, **keep)
  again = zoo.resave(elsewhere, root / "resaved", "tiny_again")
  _, _, kept = zoo._read(again)  # pylint: disable=protected-access
  np.testing.assert_array_equal(kept["p3"]["z"]["lookup"], other["p3"]["z"]["lookup"])
  assert zoo.read_info(again)["fingerprints"] == zoo.read_info(elsewhere)["fingerprints"]
  zoo.load("tiny_again", 1, root / "resaved")
  zoo.upgrade(elsewhere)
  _, _, rebuilt = zoo._read(elsewhere)  # pylint: disable=protected-access
  np.testing.assert_array_equal(rebuilt["p3"]["z"]["lookup"], built["p3"]["z"]["lookup"])
  same = zoo._same_tree  # pylint: disable=protected-access
  assert same(built, rebuilt) and not same(built, other) and not same(built, {"p3": built["p3"]})


def test_resave_replaces_parameters_of_the_same_tree(smoke_zoo):
  """`resave(params=...)` writes other parameters of the same tree (e.g. MFIBA's MFIP refitted by
  scripts/mfiba_importance.py) under a new fingerprint; a tree of another shape is refused before
  anything is written."""
  root, path = smoke_zoo
  info, params, _ = zoo._read(path)  # pylint: disable=protected-access
  moved = jax.tree_util.tree_map_with_path(
      lambda p, a: np.asarray(a) * 0.5 if "kernel" in jax.tree_util.keystr(p) else np.asarray(a),
      params)
  out = zoo.resave(path, root / "halved", "tiny_half", params=moved)
  _, back, _ = zoo._read(out)  # pylint: disable=protected-access
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(moved)):
    np.testing.assert_array_equal(a, np.asarray(b, np.float16).astype(np.float32))
  assert zoo.read_info(out)["fingerprints"] != info["fingerprints"]
  assert zoo.load("tiny_half", 1, root / "halved").quality == 1
  wrong = dict(params)
  wrong.pop(sorted(wrong)[0])
  with pytest.raises(zoo.ZooError, match="do not match the tree"):
    zoo.resave(path, root / "bad", "tiny_bad", params=wrong)
  assert not (root / "bad" / "tiny_bad.hsz").exists()


def test_respace_moves_the_quality_ladder_by_gain_interpolation(smoke_zoo):
  """`respace` keeps whole positions' gain rows exactly, mixes fractional ones log-linearly (the
  lambdas too), changes the number of qualities, and the new file loads and codes at every
  quality; bad positions are refused before anything is written."""
  root, path = smoke_zoo
  info, params, _ = zoo._read(path)  # pylint: disable=protected-access
  out = zoo.respace(path, [0, 0.25, 1, 3], root / "respaced", "tiny_r")
  new_info, moved, _ = zoo._read(out)  # pylint: disable=protected-access
  assert new_info["codec_kwargs"]["qualities"] == 4 and new_info["ladder"] == [[0, 0.25, 1, 3]]
  l = info["lmbdas"]
  np.testing.assert_allclose(new_info["lmbdas"], [l[0], l[0] ** 0.75 * l[1] ** 0.25, l[1], l[3]])
  gains = 0
  for (key, old), new in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(moved)):
    if key[-1].key in ("gain", "inv_gain"):
      gains += 1
      np.testing.assert_array_equal(new[[0, 2, 3]], old[[0, 1, 3]])
      want = np.asarray(0.75 * old[0] + 0.25 * old[1], np.float16).astype(np.float32)
      np.testing.assert_allclose(new[1], want, atol=1e-3)
      assert not np.allclose(new[1], old[1])
    else:
      np.testing.assert_array_equal(new, old)
  assert gains == 2 * len(info["scales"])
  feats = {s: np.random.default_rng(0).normal(size=(1, 16 >> i, 16 >> i, c)).astype(np.float32)
           for i, (s, c) in enumerate(zip(info["scales"], info["channels"]))}
  for q in range(4):
    model = zoo.load("tiny_r", q, root / "respaced")
    assert model.decompress(model.compress(feats, (128, 128)))["p3"].shape == feats["p3"].shape
  q = info["codec_kwargs"]["qualities"]  # one step past either end: the end pair extrapolated
  out_info, outside, _ = zoo._read(zoo.respace(path, [-1, 0, q], root / "outside", "tiny_o"))  # pylint: disable=protected-access
  np.testing.assert_allclose(out_info["lmbdas"], [l[0] ** 2 / l[1], l[0], l[-1] ** 2 / l[-2]])
  for (key, old), new in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(outside)):
    if key[-1].key in ("gain", "inv_gain"):
      old = np.asarray(old, np.float64)  # log gains: a straight line
      np.testing.assert_allclose(new[0], 2 * old[0] - old[1], atol=2e-3)
      np.testing.assert_allclose(new[2], 2 * old[q - 1] - old[q - 2], atol=2e-3)
      assert not np.allclose(new[2], old[q - 1])
  for bad in ([1, 0.5], [0, q + 0.5], [-1.5, 0], [float("nan")], []):
    with pytest.raises(errors.ConfigError, match="positions must increase"):
      zoo.respace(path, bad, root / "respace_bad", "tiny_bad")
  for name in ("mfiba", "hssc_paper"):  # allocation models, QPs: one per quality, not gains
    with pytest.raises(errors.ConfigError, match="per-quality options"):
      zoo.respace(zoo.path_of(name), [0, 1], root / "respace_bad")
  assert not (root / "respace_bad").exists()
  warm_info, warm = train_lib.read_warm_start(str(out))  # a respaced file starts a training run
  assert warm_info["ladder"] == new_info["ladder"]
  jax.tree.map(np.testing.assert_array_equal, warm, moved)
  with pytest.raises(zoo.ZooError, match="zoo file not found"):
    train_lib.read_warm_start(str(root / "missing.hsz"))


@pytest.mark.parametrize("name", zoo.names())
def test_every_shipped_zoo_model_loads_on_this_machine(name):
  """The shipped files carry their tables and fingerprints: a library change that would decode
  their bitstreams differently, or tables rebuilt with other last bits, fails here."""
  info = zoo.read_info(zoo.path_of(name))
  assert info["tables_bytes"] > 0 and len(info["fingerprints"]) == info["codec_kwargs"]["qualities"]
  for quality in (0, len(info["fingerprints"]) - 1):
    assert zoo.load(name, quality).quality == quality


def test_the_shipped_zoo_stays_under_80_mb():
  """The recipe issue caps the zoo at 80 MB in all (every committed version stays in the history,
  so a heavier file costs every clone)."""
  sizes = {name: zoo.path_of(name).stat().st_size for name in zoo.names()}
  assert sizes and sum(sizes.values()) <= 80_000_000, sizes


def test_zoo_points_from_another_folder(smoke_zoo):
  """configs/eval/zoo.py:folder=... evaluates models exported elsewhere (e.g. ablations)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from hssc_jax import codec_eval  # pylint: disable=g-import-not-at-top
  root, _ = smoke_zoo
  method = dict(name="tiny", kind="zoo", model="tiny", folder=str(root / "zoo"), qualities=[0, 1])
  points = codec_eval.points_of(ml_collections.ConfigDict({"methods": [method]}))
  assert [(p.label, p.folder) for p in points] == [("q0", str(root / "zoo")),
                                                   ("q1", str(root / "zoo"))]
  with pytest.raises(errors.ConfigError, match="no zoo model 'tiny'"):
    codec_eval.points_of(ml_collections.ConfigDict({"methods": [dict(method, folder="")]}))


def test_transform_ceiling_passes_latents_through_unrounded_only_within_its_block(load_script):
  """scripts/transform_ceiling.py: within `unquantized()` the codec's test-time forward skips the
  rounding (so the output is the transforms' own reconstruction); outside it, rounding is back."""
  script = load_script("transform_ceiling")
  codec = HyperpriorCodec(**SMALL)
  feats = codec.normalize(_feats())
  params, _ = _init(codec, feats)
  run = lambda: codec.apply({"params": params}, feats, False)["features_hat"]["p3"]
  rounded = run()
  with script.unquantized():
    exact = run()
    x = jnp.linspace(-2.0, 2.0, 9)
    np.testing.assert_array_equal(script.quantization.quantize(x, "round")[0], x)
  assert not np.allclose(exact, rounded, atol=1e-4)
  np.testing.assert_array_equal(run(), rounded)


def test_fit_z_priors_script_fits_on_the_training_features_of_a_config(smoke_zoo, load_script,
                                                                      capsys):
  """scripts/fit_z_priors.py: the smoke config's training features (part 1 of its detector), a
  config override parsed as a literal, a file with per-quality priors written under --out; that
  file warm-starts a training run, which keeps one prior per quality (their shape)."""
  root, _ = smoke_zoo
  load_script("fit_z_priors").main(["tiny", "--folder", str(root / "zoo"), "--out",
                                    str(root / "zp"), "--config", "configs/base.py:smoke",
                                    "--batches", "2", "--steps", "20", "--config.data.seed=3"])
  info = zoo.read_info(root / "zp" / "tiny.hsz")
  assert info["codec_kwargs"]["z_priors"] and info["z_priors_fit"]["pyramids"] == 2
  assert "bits per element q0" in capsys.readouterr().out
  qualities = info["codec_kwargs"]["qualities"]
  assert len(info["fingerprints"]) == qualities and zoo.load("tiny", qualities - 1, root / "zp")
  config = base_config.get_config("smoke")  # the fitted file warm-starts a run that keeps them
  with config.unlocked():
    config.progress, config.steps = False, 1
    config.init_from = str(root / "zp" / "tiny.hsz")
  train_lib.train_and_evaluate(config, str(root / "zp_run"))
  _, params, _, run = train_lib.load_codec(root / "zp_run")
  assert run["codec_kwargs"]["z_priors"]
  _, fitted = zoo.read(root / "zp" / "tiny.hsz")
  shapes = lambda tree: jax.tree.map(np.shape, tree)
  assert shapes(jax.device_get(params)) == shapes(fitted)
