"""Range coding through the tensorflow-compression ops (the only module that imports them).

`encode(values, indexes, table)` codes each integer `values[i]` with the distribution in row
`indexes[i]` of a `CDFTable` into one byte string; `decode(data, indexes, table)` inverts it. These
are host-side functions: call them outside `jit`, on numpy arrays.
"""

import functools

import numpy as np

from hssc_jax import errors
from hssc_jax._tf import tf as _tf
from hssc_jax.entropy.tables import CDFTable


@functools.lru_cache(maxsize=None)
def _ops():
  _tf()  # Import TensorFlow with GPUs hidden before the ops library loads it.
  try:
    import tensorflow_compression_ops as ops  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("range coding needs tensorflow-compression-ops==2.17.0 "
                      "(pip install -r requirements.txt)") from e
  return ops


def _check(values_or_shape, indexes: np.ndarray, table: CDFTable) -> np.ndarray:
  indexes = np.asarray(indexes)
  if not np.issubdtype(indexes.dtype, np.integer):
    raise errors.InvalidInputError(f"indexes must be integers, got {indexes.dtype}")
  if indexes.size and (indexes.min() < 0 or indexes.max() >= table.num_rows):
    raise errors.InvalidInputError(
        f"indexes must lie in [0, {table.num_rows}), got [{indexes.min()}, {indexes.max()}]")
  return indexes.astype(np.int32, copy=False)


def encode(values: np.ndarray, indexes: np.ndarray, table: CDFTable) -> bytes:
  """Range-codes integer `values` (any shape) with per-element table rows `indexes`."""
  values = np.asarray(values)
  if not np.issubdtype(values.dtype, np.integer):
    raise errors.InvalidInputError(f"values to range-code must be integers, got {values.dtype}")
  indexes = _check(values, indexes, table)
  if values.shape != indexes.shape:
    raise errors.InvalidInputError(
        f"values shape {values.shape} differs from indexes shape {indexes.shape}")
  if values.size == 0:
    return b""
  if values.min() < -2**30 or values.max() >= 2**30:
    raise errors.InvalidInputError("values too large to range-code (|value| >= 2**30)")
  return encode_symbols(values.astype(np.int32, copy=False) - table.offset[indexes], indexes, table)


def encode_symbols(symbols: np.ndarray, indexes: np.ndarray, table: CDFTable) -> bytes:
  """Range-codes int32 `symbols` (values minus row offsets) already checked by the caller.

  The fast path for entropy models that derive valid indexes and bounded symbols themselves.
  """
  if symbols.size == 0:
    return b""
  ops = _ops()
  handle = ops.create_range_encoder([], table.lookup)
  handle = ops.entropy_encode_index(handle, indexes.ravel(), symbols.ravel())
  return bytes(ops.entropy_encode_finalize(handle).numpy())


# A valid stream is decoded as if followed by zero bytes (the encoder leaves trailing zeros out;
# the decoder reads a few past the end). tfc's decoder reads the Elias-gamma length of an escaped
# (out-of-table) value in unary until it meets a 1 bit, so a hostile stream that runs dry inside an
# escape makes it count zeros for ~2^31 steps per symbol (a hang, found by
# tests/test_hostile_bitstreams.py). `guard` appends GUARD_ZEROS zero bytes, which a valid stream
# decodes exactly as before, then GUARD_BYTES_PER_SYMBOL bytes of 1 bits per symbol, more than a
# symbol consumes, so every unary count ends at once. The decoder can then no longer tell whether
# it stopped at the end of the stream (tfc's Finalize), so decoding checks instead that the decoded
# symbols re-encode to exactly the stream (`_check_canonical`): a stricter test of the same thing.
GUARD_ZEROS = 16
GUARD_BYTES_PER_SYMBOL = 4


def guard(data: bytes, symbols: int) -> bytes:
  """`data` with the padding that bounds decoding time (see GUARD_ZEROS)."""
  return bytes(data) + bytes(GUARD_ZEROS) + b"\xff" * (GUARD_BYTES_PER_SYMBOL * int(symbols) + 64)


def decode_symbols(data: bytes, indexes: np.ndarray, table: CDFTable) -> np.ndarray:
  """Decodes int32 symbols (values minus row offsets) for indexes already checked by the caller."""
  if indexes.size == 0:
    return np.zeros(indexes.shape, np.int32)
  if not data:
    raise errors.CorruptBitstreamError(
        f"empty range-coded stream where {indexes.size} symbols are expected")
  ops, tf = _ops(), _tf()
  handle = ops.create_range_decoder(guard(data, indexes.size), table.lookup)
  _, symbols = ops.entropy_decode_index(
      handle, indexes.ravel(), tf.constant([indexes.size], tf.int32), tf.int32)
  symbols = symbols.numpy().reshape(indexes.shape)
  _check_canonical(data, symbols, indexes, table)
  return symbols


def _check_canonical(data: bytes, symbols: np.ndarray, indexes: np.ndarray, table: CDFTable
                     ) -> None:
  """CorruptBitstreamError unless `symbols` re-encode to exactly `data` (what the encoder wrote)."""
  try:
    again = encode_symbols(symbols.astype(np.int32, copy=False),
                           indexes.astype(np.int32, copy=False), table)
  except Exception as e:  # pylint: disable=broad-except  (symbols no encoder can write)
    raise errors.CorruptBitstreamError(f"range-coded stream decodes to invalid symbols: {e}") from e
  if again != bytes(data):
    raise errors.CorruptBitstreamError(
        "range-coded stream is not the one its decoded symbols give: corrupted or forged stream")


class Decoder:
  """Incremental decoder of one stream: successive `decode(indexes)` calls read successive symbols.

  Needed by context models whose indexes depend on what was decoded before (channel slices).
  Call `finish()` at the end; it raises CorruptBitstreamError if the stream was inconsistent.
  """

  def __init__(self, data: bytes, table: CDFTable, symbols: int):
    """`symbols`: how many the successive `decode` calls read in all (sizes the `guard`)."""
    self._table = table
    self._data = bytes(data)
    self._symbols = int(symbols)
    self._handle = None
    self._seen: list[tuple[np.ndarray, np.ndarray]] = []

  def decode(self, indexes: np.ndarray) -> np.ndarray:
    indexes = _check(None, indexes, self._table)
    if indexes.size == 0:
      return np.zeros(indexes.shape, np.int32)
    if not self._data:
      raise errors.CorruptBitstreamError(
          f"empty range-coded stream where {indexes.size} symbols are expected")
    ops, tf = _ops(), _tf()
    if self._handle is None:
      self._handle = ops.create_range_decoder(guard(self._data, self._symbols),
                                              self._table.lookup)
    self._handle, symbols = ops.entropy_decode_index(
        self._handle, indexes.ravel(), tf.constant([indexes.size], tf.int32), tf.int32)
    symbols = symbols.numpy()
    self._seen.append((symbols, indexes.ravel()))
    values = symbols.astype(np.int64) + self._table.offset[indexes.ravel()]
    return values.reshape(indexes.shape).astype(np.int32)

  def finish(self) -> None:
    """CorruptBitstreamError unless everything decoded re-encodes to exactly the stream."""
    if self._seen:
      _check_canonical(self._data, np.concatenate([s for s, _ in self._seen]),
                       np.concatenate([i for _, i in self._seen]), self._table)


def decode(data: bytes, indexes: np.ndarray, table: CDFTable) -> np.ndarray:
  """Inverse of `encode`: returns int32 values with the shape of `indexes`.

  Raises CorruptBitstreamError when the range decoder reports an inconsistent stream.
  """
  decoder = Decoder(data, table, np.size(indexes))
  values = decoder.decode(indexes)
  decoder.finish()
  return values
