"""Header-lying bitstreams with a valid checksum: every decoder answers with a BitstreamError.

A server decodes bitstreams from devices it does not control, so a checksum proves nothing about
the honesty of the header. Each case takes a real bitstream of a small model, changes header fields
(metadata types and values, shapes, ranks, image and feature sizes, stream lengths, dropped,
renamed, swapped and foreign streams), and writes a valid checksum over the lie. A case passes when
decoding raises a `BitstreamError` subclass, or returns a finite pyramid of the model's scales and
channels (some lies, e.g. the original image size, do not change what is decoded). Any other
exception, or a case slower than `CASE_SECONDS`, fails. `make test` runs a few hundred cases per
codec and header; `pytest -m slow` runs 2,000 per codec and per anchor.
"""

import dataclasses
import json
import struct
import time
import zlib

import jax
import numpy as np
import pytest

from hssc_jax import bitstream, errors
from hssc_jax.codecs import registry
from hssc_jax.codecs.anchor import FeatureAnchor
from hssc_jax.codecs.image_anchor import ImageAnchor

SCALES = ("p3", "p4", "p5")
CHANNELS = (4, 8, 8)
SIZE = 16
CASE_SECONDS = 30.0
FAST_CASES, SLOW_CASES = 120, 2000
# Small limits so that a lie within them stays cheap; lies beyond them must be refused.
LIMITS = dict(max_image_side=1 << 14, max_feature_side=256, max_feature_values=1 << 16)

_KW = dict(latent_channels=8, hidden_channels=8, hyper_channels=8)
CODECS = {
    "hyperprior": dict(**_KW),
    "cross_scale": dict(condition_hidden=8, **_KW),
    "lmfc": dict(fused_channels=8, stages=0, predictor_hidden=8, **_KW),
    "hssc": dict(compact_channels=8, transform_channels=8, attention_channels=4, **_KW),
    "hsc": dict(core_channels=8, context_slices=2, context_hidden=(8,), **_KW),
    "mfiba": dict(mfip_channels=4, **_KW),
    "mfiba_cross": dict(mfip_channels=4, condition_hidden=8, **_KW),
}
HOSTILE_VALUES = ("x", "", None, True, False, 1.5, -1, 0, 1, 255, 2**31, 2**63, -2**63 - 1, 2**70,
                  [], {}, [1], [[1, 1]] * 3, [[2**40, 2**40]] * 3, [[0, 0]] * 3, {"a": 1},
                  [None, "x"], [[16, 16], [8, 8], [4, 4]], [[8, 8], [4, 4], [2, 2]], 1e308,
                  [[16.0, 16.0], [8.0, 8.0], [4.0, 4.0]])


@pytest.fixture(autouse=True)
def small_limits():
  old = bitstream.set_decode_limits(**LIMITS)
  yield
  bitstream.set_decode_limits(**dataclasses.asdict(old))


def _features(seed=0):
  rng = np.random.default_rng(seed)
  return {s: rng.normal(size=(1, SIZE >> i, SIZE >> i, c)).astype(np.float32)
          for i, (s, c) in enumerate(zip(SCALES, CHANNELS))}


_MODELS = {}


def _model(name, header):
  if (name, header) not in _MODELS:
    codec = registry.build_codec(name, dict(CODECS[name], header=header), SCALES, CHANNELS)
    feats = _features()
    key = jax.random.PRNGKey(0)
    params = codec.init({"params": key, "noise": key}, feats, True)["params"]
    tables = codec.build_tables(params)
    goods = [codec.compress(params, tables, _features(s), (60 + s, 64)) for s in range(2)]
    _MODELS[name, header] = (codec, params, tables, goods)
  return _MODELS[name, header]


# ---- lies in the full container -------------------------------------------------------------------

def _raw_pack(c: bitstream.Container) -> bytes:
  """`bitstream.pack` without its argument checks: any image size, shape and metadata JSON."""
  head = [struct.pack(">H", len(c.codec_id.encode())) + c.codec_id.encode(), bytes(c.fingerprint),
          struct.pack(">II", *(int(v) % 2**32 for v in c.image_size)),
          struct.pack(">H", len(c.shapes))]
  for name, shape in c.shapes.items():
    head += [struct.pack(">H", len(name.encode())) + name.encode(),
             struct.pack(">B", len(shape)) + struct.pack(f">{len(shape)}I",
                                                         *(int(d) % 2**32 for d in shape))]
  head.append(struct.pack(">H", len(c.streams)))
  for name, data in c.streams.items():
    head += [struct.pack(">H", len(name.encode())) + name.encode(), struct.pack(">I", len(data))]
  meta = c.metadata if isinstance(c.metadata, (bytes, str)) else json.dumps(c.metadata)
  meta = meta.encode() if isinstance(meta, str) else meta
  head.append(struct.pack(">I", len(meta)) + meta)
  body = b"".join(head) + b"".join(c.streams.values())
  data = struct.pack(">4sBI", bitstream.MAGIC, bitstream.FORMAT_VERSION, 9 + len(body) + 4) + body
  return data + struct.pack(">I", zlib.crc32(data))


def _pick(rng, seq):
  seq = list(seq)
  return seq[int(rng.integers(len(seq)))] if seq else None


def _lie_full(c: bitstream.Container, other: bitstream.Container, rng) -> bitstream.Container:
  """One or more header fields of `c` changed (`other`: another image's bitstream, same model)."""
  meta, shapes, streams = dict(c.metadata), dict(c.shapes), dict(c.streams)
  image_size = c.image_size
  for _ in range(int(rng.integers(1, 4))):
    kind = _pick(rng, ["meta_value", "meta_value", "meta_drop", "meta_add", "meta_rename",
                       "shape_dim", "shape_dim", "shape_rank", "shape_drop", "shape_rename",
                       "stream_drop", "stream_rename", "stream_swap", "stream_cut",
                       "stream_other", "image_size", "json", "coherent_sizes"])
    key = _pick(rng, meta)
    if kind == "meta_value" and key:
      meta[key] = _pick(rng, HOSTILE_VALUES)
    elif kind == "meta_drop" and key:
      del meta[key]
    elif kind == "meta_add":
      meta[_pick(rng, ["x", "pyramid", "p3/crc", "allocation", "sizes"]) + "_"] = 1
    elif kind == "meta_rename" and key:
      meta[key + "_"] = meta.pop(key)
    elif kind.startswith("shape") and shapes:
      name = _pick(rng, shapes)
      shape = list(shapes[name])
      if kind == "shape_dim" and shape:
        i = int(rng.integers(len(shape)))
        shape[i] = _pick(rng, [0, 1, 2, 3, 255, 2**16, 2**31 - 1, 2**32 - 1, shape[i] + 1,
                               max(shape[i] - 1, 0), shape[i] * 2])
        shapes[name] = tuple(shape)
      elif kind == "shape_rank":
        shapes[name] = tuple(shape[:-1]) if rng.random() < 0.5 else tuple(shape + [1])
      elif kind == "shape_drop":
        del shapes[name]
      else:
        shapes[name + "_"] = shapes.pop(name)
    elif kind.startswith("stream") and streams:
      name = _pick(rng, streams)
      if kind == "stream_drop":
        del streams[name]
      elif kind == "stream_rename":
        streams[name + "_"] = streams.pop(name)
      elif kind == "stream_swap" and len(streams) > 1:
        a, b = rng.choice(list(streams), 2, replace=False)
        streams[a], streams[b] = streams[b], streams[a]
      elif kind == "stream_cut":
        streams[name] = streams[name][:int(rng.integers(len(streams[name]) + 1))]
      elif kind == "stream_other" and name in other.streams:
        streams[name] = other.streams[name]
    elif kind == "image_size":
      image_size = (_pick(rng, [0, 1, 7, 60, 2**14, 2**14 + 1, 2**31, 2**32 - 1]),
                    _pick(rng, [0, 1, 64, 2**16, 2**32 - 1]))
    elif kind == "json":
      meta = _pick(rng, ["[1, 2]", "null", '"x"', "7", "[" * 50000 + "]" * 50000,
                         '{"a": ' * 3000 + "1" + "}" * 3000, "{", "\xff"])
      break
    elif kind == "coherent_sizes" and "pyramid" in c.metadata:
      meta["pyramid"] = [[2 * h, 2 * w] for h, w in c.metadata["pyramid"]]
  return dataclasses.replace(c, image_size=image_size, shapes=shapes, streams=streams,
                             metadata=meta)


# ---- lies in the compact container ----------------------------------------------------------------

def _lie_compact(data: bytes, other: bytes, rng) -> bytes:
  """Header bytes of a compact bitstream changed, inserted or deleted; the CRC recomputed."""
  body = bytearray(data[:-4])
  for _ in range(int(rng.integers(1, 4))):
    if len(body) < 5:
      break
    kind = _pick(rng, ["set", "set", "flip", "insert", "delete", "splice", "varint"])
    # Magic and version stay (their errors are tested apart); the header is the first 40 bytes.
    pos = int(rng.integers(3, min(len(body), 40)))
    if kind == "set":
      body[pos] = int(rng.integers(256))
    elif kind == "flip":
      body[pos] ^= 1 << int(rng.integers(8))
    elif kind == "insert":
      body[pos:pos] = bytes(rng.integers(256, size=int(rng.integers(1, 4)), dtype=np.uint8))
    elif kind == "delete":
      del body[pos:pos + int(rng.integers(1, 4))]
    elif kind == "splice":
      body = body[:pos] + bytearray(other[pos:-4])
    else:  # a long varint: a huge size, length or metadata value
      body[pos:pos + 1] = b"\xff" * int(rng.integers(1, 11)) + b"\x01"
  return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))


# ---- the check -----------------------------------------------------------------------------------

def _outcome(decode, data, check_output):
  t = time.perf_counter()
  try:
    out = decode(data)
  except errors.BitstreamError as e:
    result = type(e).__name__
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {str(e)[:300]}", time.perf_counter() - t
  else:
    check_output(out)
    result = "decoded"
  return result, time.perf_counter() - t


def _check_pyramid(out):
  assert sorted(out) == sorted(SCALES)
  for s, c in zip(SCALES, CHANNELS):
    assert out[s].ndim == 4 and out[s].shape[0] == 1 and out[s].shape[3] == c
    assert np.all(np.isfinite(out[s]))


def _run(decode, cases, check_output):
  bad, outcomes, slowest = [], {}, 0.0
  for i, data in enumerate(cases):
    result, seconds = _outcome(decode, data, check_output)
    slowest = max(slowest, seconds)
    outcomes[result.split(":")[0]] = outcomes.get(result.split(":")[0], 0) + 1
    if ":" in result or seconds > CASE_SECONDS:
      bad.append((i, result, round(seconds, 1)))
  assert not bad, f"{len(bad)} of {len(cases)} lying bitstreams escaped: {bad[:5]} ({outcomes})"
  return outcomes, slowest


def _learned_cases(name, header, n, seed):
  codec, params, tables, goods = _model(name, header)
  rng = np.random.default_rng(seed)
  cases = []
  for i in range(n):
    data, other = goods[i % 2], goods[1 - i % 2]
    if header == "compact":
      cases.append(_lie_compact(data, other, rng))
    else:
      cases.append(_raw_pack(_lie_full(bitstream.unpack(data), bitstream.unpack(other), rng)))
  return codec, params, tables, cases


def _check_learned(name, header, n, seed):
  codec, params, tables, cases = _learned_cases(name, header, n, seed)
  outcomes, slowest = _run(lambda d: codec.decompress(params, tables, d), cases, _check_pyramid)
  assert sum(v for k, v in outcomes.items() if k != "decoded") > n // 2, outcomes
  return outcomes, slowest


@pytest.mark.parametrize("header", ["full", "compact"])
@pytest.mark.parametrize("name", sorted(CODECS))
def test_lying_headers_end_in_bitstream_errors(name, header):
  _check_learned(name, header, FAST_CASES, seed=zlib.crc32(f"{name}/{header}".encode()))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CODECS))
def test_lying_headers_end_in_bitstream_errors_long(name):
  for header in ("full", "compact"):
    _check_learned(name, header, SLOW_CASES // 2, seed=7 + len(name))


def _anchor_cases(encode_one, n, seed):
  goods = [encode_one(s) for s in range(2)]
  rng = np.random.default_rng(seed)
  return [_raw_pack(_lie_full(bitstream.unpack(goods[i % 2]), bitstream.unpack(goods[1 - i % 2]),
                              rng)) for i in range(n)]


def _anchor_pyramid(seed):
  rng = np.random.default_rng(seed)
  return {s: rng.uniform(0, 4, size=(1, 8 >> i, 8 >> i, c)).astype(np.float32)
          for i, (s, c) in enumerate(zip(SCALES, CHANNELS))}


ANCHOR_CASES = 60


def _check_feature_anchor(reorder, n):
  anchor = FeatureAnchor((0.0, 4.0), reorder=reorder)
  cases = _anchor_cases(lambda s: anchor.compress(_anchor_pyramid(s), (60, 64), 37), n, seed=3)

  def check(out):
    assert all(np.all(np.isfinite(v)) and v.size <= LIMITS["max_feature_values"]
               for v in out.values())

  _run(anchor.decompress, cases, check)


def _check_image_anchor(n):
  anchor = ImageAnchor()
  rng = np.random.default_rng(0)
  image = lambda s: rng.integers(0, 255, size=(16 + 2 * s, 24, 3), dtype=np.uint8)
  cases = _anchor_cases(lambda s: anchor.compress(image(s), 40), n, seed=4)
  _run(anchor.decompress, cases, lambda out: None)


@pytest.mark.parametrize("reorder", ["none", "global"])
def test_feature_anchor_lying_headers_end_in_bitstream_errors(reorder):
  _check_feature_anchor(reorder, ANCHOR_CASES)


def test_image_anchor_lying_headers_end_in_bitstream_errors():
  _check_image_anchor(ANCHOR_CASES)


@pytest.mark.slow
def test_anchor_lying_headers_end_in_bitstream_errors_long():
  for reorder in ("none", "global"):
    _check_feature_anchor(reorder, SLOW_CASES // 2)
  _check_image_anchor(SLOW_CASES)


def test_sizes_beyond_the_limits_are_refused_before_allocation():
  codec, params, tables, goods = _model("hyperprior", "full")
  c = bitstream.unpack(goods[0])
  huge = dict(c.metadata, pyramid=[[256, 256], [128, 128], [64, 64]])  # 360k values > 2^16
  with pytest.raises(errors.DecodeLimitError, match="limit"):
    codec.decompress(params, tables, _raw_pack(dataclasses.replace(c, metadata=huge)))
  with pytest.raises(errors.DecodeLimitError, match="image size"):
    codec.decompress(params, tables, _raw_pack(dataclasses.replace(c, image_size=(2**14 + 1, 9))))
  compact, cparams, ctables, cgoods = _model("hyperprior", "compact")
  pre = bitstream.read_compact_preamble(cgoods[0], 3)
  body = cgoods[0][:7] + bytes([60, 64]) + b"\x00\x80\x04\x80\x04"  # P3 512x512 > the side limit
  body += cgoods[0][pre.end:-4]
  with pytest.raises(errors.DecodeLimitError, match="feature size"):
    compact.decompress(cparams, ctables, body + struct.pack(">I", zlib.crc32(body)))
  with pytest.raises(errors.ConfigError):
    bitstream.set_decode_limits(max_image_side=0)


def test_version_1_full_bitstreams_are_refused_by_version():
  codec, params, tables, goods = _model("hyperprior", "full")
  body = bytearray(goods[0][:-4])
  body[4] = 1
  with pytest.raises(errors.UnsupportedVersionError, match="version 1"):
    codec.decompress(params, tables, bytes(body) + struct.pack(">I", zlib.crc32(bytes(body))))
