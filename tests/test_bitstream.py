import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from hssc_jax import bitstream, errors
from hssc_jax.entropy import factorized
from hssc_jax.entropy import tables

FP = bitstream.fingerprint({"w": np.arange(4.0)}, "cfg")


def _container(**kw):
  args = dict(codec_id="toy", fingerprint=FP, image_size=(480, 640), shapes={"z": (1, 4, 4, 3)},
              streams={"z": b"\x01\x02\x03", "y": b""}, metadata={"qp": 32, "perm": [2, 0, 1]})
  args.update(kw)
  return bitstream.Container(**args)


def test_round_trip():
  c = _container()
  d = bitstream.unpack(bitstream.pack(c))
  assert d == bitstream.Container(**{**c.__dict__, "shapes": {"z": (1, 4, 4, 3)}})
  assert d.stream_bits == {"z": 24, "y": 0}


def test_fingerprint_depends_on_values_and_structure():
  assert bitstream.fingerprint({"w": np.arange(4.0)}, "cfg") == FP
  assert bitstream.fingerprint({"w": np.arange(4.0) + 1e-7}, "cfg") != FP
  assert bitstream.fingerprint({"w": np.arange(4.0, dtype=np.float32)}, "cfg") != FP
  assert bitstream.fingerprint({"v": np.arange(4.0)}, "cfg") != FP
  assert len(FP) == 16


@pytest.mark.parametrize("data,error,match", [
    (b"", errors.EmptyBitstreamError, "empty"),
    (b"JUNKJUNKJUNKJUNK", errors.BadMagicError, "magic"),
    (b"HS", errors.BadMagicError, "magic"),
    (b"HSJX\x01", errors.TruncatedBitstreamError, "minimum"),
])
def test_malformed_inputs(data, error, match):
  with pytest.raises(error, match=match):
    bitstream.unpack(data)


def test_version_truncation_trailing_and_checksum():
  data = bitstream.pack(_container())
  with pytest.raises(errors.UnsupportedVersionError, match="version 9"):
    bitstream.unpack(data[:4] + b"\x09" + data[5:])
  with pytest.raises(errors.TruncatedBitstreamError, match="truncated"):
    bitstream.unpack(data[:-1])
  with pytest.raises(errors.CorruptBitstreamError, match="trailing"):
    bitstream.unpack(data + b"\x00")
  flipped = bytearray(data)
  flipped[20] ^= 0x10
  with pytest.raises(errors.CorruptBitstreamError, match="checksum"):
    bitstream.unpack(bytes(flipped))


def test_header_inconsistency_with_valid_checksum_is_corruption():
  data = bytearray(bitstream.pack(_container()))
  body = data[:-4]
  # Claim a longer codec id than there is header: the checksum is recomputed so only the parser sees it.
  struct.pack_into(">H", body, 9, 60000)
  forged = bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))
  with pytest.raises(errors.CorruptBitstreamError, match="runs past"):
    bitstream.unpack(forged)


def test_check_model():
  c = bitstream.unpack(bitstream.pack(_container()))
  bitstream.check_model(c, "toy", FP)
  with pytest.raises(errors.ModelMismatchError, match="codec 'toy'"):
    bitstream.check_model(c, "other", FP)
  with pytest.raises(errors.ModelMismatchError, match="other parameters"):
    bitstream.check_model(c, "toy", bitstream.fingerprint("another model"))


# A complete decoder of a real factorized-prior stream: container checks, then range decoding.
_TABLE = tables.from_pmfs([np.array([0.6, 0.3, 0.1])] * 3, [-1, -1, -1])
_X = np.random.default_rng(0).integers(-1, 2, size=(1, 8, 8, 3)).astype(np.float32)


def _encode() -> bytes:
  data, _ = factorized.compress(_TABLE, _X)
  fp = bitstream.fingerprint(_TABLE.to_dict())
  return bitstream.pack(bitstream.Container("toy", fp, (64, 64), {"z": _X.shape}, {"z": data}))


_GOOD = _encode()


def _decode(data: bytes) -> np.ndarray:
  c = bitstream.unpack(data)
  bitstream.check_model(c, "toy", bitstream.fingerprint(_TABLE.to_dict()))
  bitstream.check_shapes(c, {"z": 4})
  return factorized.decompress(_TABLE, c.streams["z"], c.shapes["z"])


def test_real_stream_round_trip():
  np.testing.assert_array_equal(_decode(_GOOD), _X)


corruption = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, len(_GOOD) - 1),
                                                   st.integers(0, 7)), min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, len(_GOOD) - 1)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("replace"), st.tuples(st.integers(0, len(_GOOD) - 1), st.binary(min_size=1, max_size=16))),
    st.tuples(st.just("random"), st.binary(max_size=200)),
)


def _apply(kind, arg) -> bytes:
  data = bytearray(_GOOD)
  if kind == "flip":
    for pos, bit in arg:
      data[pos] ^= 1 << bit
  elif kind == "truncate":
    data = data[:arg]
  elif kind == "append":
    data += arg
  elif kind == "replace":
    pos, blob = arg
    data[pos:pos + len(blob)] = blob
  else:
    data = bytearray(arg)
  return bytes(data)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(corruption)
def test_random_corruptions_raise_bitstream_errors(c):
  data = _apply(*c)
  if data == _GOOD:
    return
  with pytest.raises(errors.BitstreamError):
    _decode(data)
