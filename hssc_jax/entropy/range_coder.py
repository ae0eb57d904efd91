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


def decode_symbols(data: bytes, indexes: np.ndarray, table: CDFTable) -> np.ndarray:
  """Decodes int32 symbols (values minus row offsets) for indexes already checked by the caller."""
  if indexes.size == 0:
    return np.zeros(indexes.shape, np.int32)
  if not data:
    raise errors.CorruptBitstreamError(
        f"empty range-coded stream where {indexes.size} symbols are expected")
  ops, tf = _ops(), _tf()
  handle = ops.create_range_decoder(data, table.lookup)
  handle, symbols = ops.entropy_decode_index(
      handle, indexes.ravel(), tf.constant([indexes.size], tf.int32), tf.int32)
  if not bool(ops.entropy_decode_finalize(handle).numpy()):
    raise errors.CorruptBitstreamError("range decoder finished in an error state: corrupted stream")
  return symbols.numpy().reshape(indexes.shape)


class Decoder:
  """Incremental decoder of one stream: successive `decode(indexes)` calls read successive symbols.

  Needed by context models whose indexes depend on what was decoded before (channel slices).
  Call `finish()` at the end; it raises CorruptBitstreamError if the stream was inconsistent.
  """

  def __init__(self, data: bytes, table: CDFTable):
    self._table = table
    self._data = bytes(data)
    self._handle = None

  def decode(self, indexes: np.ndarray) -> np.ndarray:
    indexes = _check(None, indexes, self._table)
    if indexes.size == 0:
      return np.zeros(indexes.shape, np.int32)
    if not self._data:
      raise errors.CorruptBitstreamError(
          f"empty range-coded stream where {indexes.size} symbols are expected")
    ops, tf = _ops(), _tf()
    if self._handle is None:
      self._handle = ops.create_range_decoder(self._data, self._table.lookup)
    self._handle, symbols = ops.entropy_decode_index(
        self._handle, indexes.ravel(), tf.constant([indexes.size], tf.int32), tf.int32)
    values = symbols.numpy().astype(np.int64) + self._table.offset[indexes.ravel()]
    return values.reshape(indexes.shape).astype(np.int32)

  def finish(self) -> None:
    if self._handle is not None and not bool(_ops().entropy_decode_finalize(self._handle).numpy()):
      raise errors.CorruptBitstreamError("range decoder finished in an error state: corrupted stream")


def decode(data: bytes, indexes: np.ndarray, table: CDFTable) -> np.ndarray:
  """Inverse of `encode`: returns int32 values with the shape of `indexes`.

  Raises CorruptBitstreamError when the range decoder reports an inconsistent stream.
  """
  decoder = Decoder(data, table)
  values = decoder.decode(indexes)
  decoder.finish()
  return values
