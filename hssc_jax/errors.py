"""Exceptions raised by hssc_jax.

Every error a user can provoke with bad input is a subclass of `HsscError`, with a message that says
what is wrong. Bitstream problems are `BitstreamError`s; bad tensors are `InvalidInputError`s.
"""


class HsscError(Exception):
  """Base class of all errors raised on purpose by hssc_jax."""


class InvalidInputError(HsscError, ValueError):
  """An input tensor has the wrong shape or dtype, or holds NaN/inf."""


class ConfigError(HsscError, ValueError):
  """A configuration is malformed, has unknown fields or inconsistent values."""


class BitstreamError(HsscError, ValueError):
  """A bitstream cannot be decoded."""


class EmptyBitstreamError(BitstreamError):
  """The bitstream holds no bytes."""


class BadMagicError(BitstreamError):
  """The bytes do not start with the hssc_jax container magic."""


class UnsupportedVersionError(BitstreamError):
  """The container format version is not one this library reads."""


class TruncatedBitstreamError(BitstreamError):
  """The bitstream ends before the lengths in its header say it should."""


class CorruptBitstreamError(BitstreamError):
  """The bitstream fails its checksum or holds values that cannot be valid."""


class DecodeLimitError(BitstreamError):
  """The bitstream asks for a larger image or feature pyramid than the decoder's configured limits
  (`hssc_jax.bitstream.LIMITS`); refused before anything is allocated."""


class ModelMismatchError(BitstreamError):
  """The bitstream was produced by another codec, model parameters or configuration."""


class DeterminismError(BitstreamError):
  """The decoder computed entropy-model indexes that differ from the encoder's."""


class InnerCodecError(HsscError, RuntimeError):
  """A traditional (inner) codec failed: missing binary, non-zero exit or empty output."""


class CorruptPayloadError(CorruptBitstreamError, InnerCodecError):
  """The traditional codec's payload in a bitstream fails to decode, or decodes to another frame
  than the header describes (both a `BitstreamError` and an `InnerCodecError`)."""


class DatasetError(HsscError, ValueError):
  """A dataset folder or its annotation file is missing, malformed or inconsistent."""


class TrainingError(HsscError, RuntimeError):
  """Training cannot go on (e.g. the loss became NaN/inf)."""


class CheckpointError(HsscError, ValueError):
  """A model checkpoint is missing, not in the expected format, or holds an unexpected model."""
