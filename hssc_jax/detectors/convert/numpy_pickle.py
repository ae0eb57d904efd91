"""Pieces of a restricted unpickler that rebuild plain numeric numpy arrays and nothing else.

Shared by the checkpoint converters (`ultralytics`, `torchvision_frcnn`): their `find_class`
maps numpy's pickle globals to these, so a checkpoint can hold arrays but never code.
"""

from typing import Any

import numpy as np

from hssc_jax import errors


class Dtype:
  """`numpy.dtype(spec, align, copy)` in a pickle: plain numeric dtypes only."""

  def __init__(self, spec: Any, *_):
    self.dtype = np.dtype(str(spec))
    if self.dtype.hasobject:
      raise errors.CheckpointError(f"refusing a pickled object dtype {spec!r}")

  def __setstate__(self, state: Any) -> None:
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
      self.dtype = self.dtype.newbyteorder(state[1])


class Array:
  """Target of `numpy.core.multiarray._reconstruct`, filled by (version, shape, dtype, F, bytes);
  the array is `.value`."""

  def __setstate__(self, state: Any) -> None:
    if not (isinstance(state, tuple) and len(state) == 5):
      raise errors.CheckpointError("malformed pickled numpy array")
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, Dtype) or not isinstance(raw, (bytes, bytearray)):
      raise errors.CheckpointError("refusing a pickled numpy array with object or unknown data")
    self.value = from_bytes(raw, dtype.dtype, shape, "F" if fortran else "C")


def from_bytes(raw: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
  shape = tuple(int(s) for s in shape)
  if len(raw) != int(np.prod(shape)) * dtype.itemsize:
    raise errors.CheckpointError(f"pickled array of shape {shape} has {len(raw)} bytes")
  return np.frombuffer(bytes(raw), dtype).reshape(shape, order=order).copy()


def reconstruct(cls: Any, shape: Any, dtype: Any) -> Array:
  """`numpy.core.multiarray._reconstruct`, for ndarray only."""
  del shape, dtype
  if cls is not np.ndarray:
    raise errors.CheckpointError(f"refusing numpy _reconstruct of {cls!r}")
  return Array()


def frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
  """Protocol-5 numpy array pickles (`numpy.core.numeric._frombuffer`)."""
  if not isinstance(dtype, Dtype) or not isinstance(buf, (bytes, bytearray)):
    raise errors.CheckpointError("refusing a pickled numpy buffer with object or unknown data")
  return from_bytes(buf, dtype.dtype, shape, order)


def encode_latin1(text: str, encoding: str = "utf-8") -> bytes:
  """`_codecs.encode`, which pickles of numpy byte strings call with latin1 only."""
  if encoding != "latin1":
    raise errors.CheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
  return text.encode("latin1")
