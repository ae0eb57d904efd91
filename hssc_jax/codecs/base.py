"""The interface every learned feature codec implements, and the helpers they share.

A codec is a Flax module over a named feature pyramid ({"p3": NHWC, ...}, any set of scales):

  out = codec.apply(variables, features, training, rngs={"noise": key})   # pure, jit/grad
  out["features_hat"]  -> pyramid of the same shapes
  out["bits"]          -> {stream: (N,) bits per image}   (estimates from the entropy models)

  tables = codec.build_tables(params)                      # host, once after training
  data = codec.compress(params, tables, features, image_size)   # host: real bitstream (bytes)
  features_hat = codec.decompress(params, tables, data)          # host

Rate is reported in bits per pixel of the original image (`bits_per_pixel`), the convention of the
MPEG feature-coding tests and CompressAI-Vision. The loss lives outside the module (train_lib).
"""

import dataclasses
import functools
import json
from typing import Any, Callable, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np

from hssc_jax import bitstream
from hssc_jax import errors
from hssc_jax.entropy import determinism
from hssc_jax.entropy import quantization

Pyramid = Mapping[str, Any]


def bits_per_pixel(bits: Any, image_size: Sequence[int]) -> Any:
  """bits / (H x W) of the original image (before any resizing)."""
  h, w = image_size
  return bits / float(h * w)


_TEMPLATES: dict = {}
_FINGERPRINTS: dict = {}
DIGEST_KEY = "digest"  # the compact container's one digest of every stream's entropy indexes
PYRAMID_KEY = "pyramid"  # the full container's feature sizes, [[H, W] per scale]


def _is_digest(key: str, value: Any) -> bool:
  return key.split("/")[-1] == "crc" and isinstance(value, int) and not isinstance(value, bool)


def _fold_digests(meta: Mapping[str, Any], folded: Sequence[str]) -> dict[str, Any]:
  """Metadata with the per-stream index digests `folded` replaced by one combined digest."""
  if not folded:
    return dict(meta)
  out = {k: v for k, v in meta.items() if k not in folded}
  out[DIGEST_KEY] = determinism.combine([meta[k] for k in folded])
  return out


def check_pyramid(features: Pyramid, names: Sequence[str], batch: int | None = None,
                  finite: bool = True, channels: Sequence[int] | None = None
                  ) -> dict[str, np.ndarray]:
  """Host-side validation of a pyramid; returns it as float32 numpy arrays.

  Raises InvalidInputError for a missing or extra scale, a non-NHWC array, a batch size other than
  `batch`, channel counts other than `channels` (features of another detector), or NaN/inf values.
  """
  if not isinstance(features, Mapping):
    raise errors.InvalidInputError(f"features must be a dict of arrays, got {type(features).__name__}")
  missing = [n for n in names if n not in features]
  extra = [n for n in features if n not in names]
  if missing or extra:
    raise errors.InvalidInputError(
        f"feature pyramid has scales {sorted(features)}, codec expects {list(names)}")
  out = {}
  for n in names:
    a = np.asarray(features[n])
    if a.ndim != 4:
      raise errors.InvalidInputError(f"feature {n!r} must be NHWC (rank 4), got shape {a.shape}")
    if batch is not None and a.shape[0] != batch:
      raise errors.InvalidInputError(f"feature {n!r} has batch {a.shape[0]}, expected {batch}")
    if channels is not None and a.shape[3] != list(channels)[list(names).index(n)]:
      raise errors.InvalidInputError(
          f"feature {n!r} has {a.shape[3]} channels, this codec was built for "
          f"{list(channels)[list(names).index(n)]} (features of another detector?)")
    if finite and not np.all(np.isfinite(a)):
      raise errors.InvalidInputError(f"feature {n!r} holds NaN/inf values")
    out[n] = a.astype(np.float32, copy=False)
  return out


def module_config(module: nn.Module) -> dict[str, Any]:
  """The dataclass fields of a (sub)module that define it (for fingerprints and checkpoints)."""
  skip = {"parent", "name"}
  cfg = {}
  for f in dataclasses.fields(module):
    if f.name in skip:
      continue
    v = getattr(module, f.name)
    cfg[f.name] = module_config(v) if isinstance(v, nn.Module) else v
  return cfg


@functools.lru_cache(maxsize=256)
def compiled(module: nn.Module, method: str, *static: Any, host: bool = False, jit: bool = True
             ) -> Callable[..., Any]:
  """`f(params, *args) = module.apply({"params": params}, *args, *static, method=method)`, cached
  per (module, method, static arguments): `jax.jit`-compiled, or with `host=True` run in float64 on
  the CPU (`determinism.HostFunction`: the entropy-parameter paths whose outputs set the entropy
  coder's indexes); `jit=False` runs it op by op. `static` (hashable: sizes as tuples) trail the
  dynamic arguments."""
  fn = getattr(type(module), method)
  apply = lambda params, *args: module.apply({"params": params}, *args, *static, method=fn)
  if host:
    return determinism.HostFunction(apply, jit=jit)
  return jax.jit(apply) if jit else apply


def per_scale(value: Any, scales: Sequence[str], what: str) -> dict[str, Any]:
  """A codec option given once for all scales, as a per-scale sequence or as a dict, per scale."""
  if isinstance(value, Mapping):
    missing = [s for s in scales if s not in value]
    if missing:
      raise errors.ConfigError(f"{what} lacks scales {missing}")
    return {s: value[s] for s in scales}
  if isinstance(value, (list, tuple)):
    if len(value) != len(scales):
      raise errors.ConfigError(f"{what} has {len(value)} entries for {len(scales)} scales")
    return dict(zip(scales, value))
  return {s: value for s in scales}


def part(prefix: str, *entries: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
  """The entries ("<prefix>/<name>") of one coded part, the prefix removed, from each of `entries`
  (streams, shapes, metadata)."""
  p = prefix + "/"
  return tuple({k[len(p):]: v for k, v in d.items() if k.startswith(p)} for d in entries)


@dataclasses.dataclass
class Coded:
  """What `compress_streams` returns, gathered part by part under stream-name prefixes."""

  streams: dict[str, bytes] = dataclasses.field(default_factory=dict)
  shapes: dict[str, tuple] = dataclasses.field(default_factory=dict)
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

  def add(self, prefix: str, streams: Mapping[str, bytes], shapes: Mapping[str, Any],
          metadata: Mapping[str, Any], *rest: Any) -> Any:
    """Adds one part's (streams, shapes, metadata) as "<prefix>/<name>"; returns what the encoder
    gave beyond them (e.g. `HyperpriorModel.encode`'s decoded latent), if anything."""
    for mine, theirs in ((self.streams, streams), (self.shapes, shapes),
                         (self.metadata, metadata)):
      mine.update({f"{prefix}/{k}": v for k, v in theirs.items()})
    return rest[0] if rest else None

  def astuple(self) -> tuple[dict, dict, dict]:
    return self.streams, self.shapes, self.metadata


def norm_stats(feature_norm: Any, scales: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{scale: (mean (C,), std (C,))} from a codec's `feature_norm` field (see `FeatureCodec`)."""
  if not feature_norm:
    return {}
  stats = {}
  for entry in feature_norm:
    if len(entry) != 3:
      raise errors.ConfigError("feature_norm entries must be (scale, means, stds)")
    s, mean, std = entry
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean.shape != std.shape or mean.ndim != 1 or not np.all(std > 0):
      raise errors.ConfigError(f"feature_norm of {s!r}: means and stds must be (C,) with std > 0")
    stats[s] = (mean, std)
  if sorted(stats) != sorted(scales):
    raise errors.ConfigError(f"feature_norm covers scales {sorted(stats)}, codec codes {list(scales)}")
  return stats


class RateOptions(nn.Module):
  """Variable rate, for a codec and the entropy-coded models it builds (`rate_kwargs`).

  With `qualities` = Q > 0 the latents are scaled by learned per-channel gain vectors, one of Q
  selected by `quality` (Cui et al., "Asymmetric gained deep image compression with continuous
  rate adaptation", CVPR 2021), so one model covers a whole rate-accuracy curve; each quality has
  its own fingerprint. With `z_priors` each quality also codes its hyper-latents with its own
  factorized prior (`hssc_jax.training.z_priors`, fitted after training).
  """

  qualities: int = 0
  quality: Any = 0
  z_priors: bool = False


class FeatureCodec(RateOptions):
  """Base class: subclasses define __call__, build_tables, compress_streams and decompress_streams.

  The container (magic, version, codec id, fingerprint, shapes, streams, checksum) is handled here,
  so every codec refuses truncated, corrupted or foreign bitstreams the same way.

  Fields every codec shares, besides the rate options (`RateOptions`):
    feature_norm: ((scale, means, stds), ...) per-channel statistics fitted on the training
      features; model constants (in the fingerprint, never in a bitstream). `__call__` works on
      normalized features (the training loop calls `normalize`); `compress` normalizes and
      `decompress` undoes it. None: identity.
  """

  codec_id: ClassVar[str] = "codec"
  # Fields that only shape training (the quantization proxy); the fingerprint hashes their
  # defaults in their place, so it binds a bitstream to what decoding depends on and a model
  # fine-tuned under another proxy still reads its bitstreams (and the zoo's, all trained with
  # the defaults, keep their fingerprints).
  training_only: ClassVar[tuple[str, ...]] = ("train_quantization",)
  # Fields that only steer the encoder's choices, which travel in the bitstream (e.g. MFIBA's
  # allocation exponent): left out of the fingerprint, so setting them keeps a model's bitstreams.
  encoder_only: ClassVar[tuple[str, ...]] = ()
  # Decoding fields added after models were shipped, whose default is the behaviour from before
  # they existed: hashed only when set otherwise, so the older models keep their fingerprints.
  added_fields: ClassVar[tuple[str, ...]] = ()
  # Rate options added after models were shipped: for every codec, hashed only when set.
  added_rate_fields: ClassVar[tuple[str, ...]] = ("z_priors",)
  scales: Sequence[str] = ("p3", "p4", "p5")
  channels: Sequence[int] = (64, 128, 256)
  train_quantization: str = "noise"
  feature_norm: Any = None
  header: str = "full"

  @nn.nowrap
  def check_fields(self, min_scales: int = 1) -> None:
    """ConfigError unless the fields every codec shares are sound (call from `setup`)."""
    if len(self.scales) < min_scales:
      raise errors.ConfigError(f"{self.codec_id} needs at least {min_scales} scale(s), got "
                               f"{tuple(self.scales)}")
    if len(self.channels) != len(self.scales):
      raise errors.ConfigError(f"{len(self.channels)} channel counts for scales {self.scales}")
    if self.train_quantization not in quantization.MODES:
      raise errors.ConfigError(f"train_quantization {self.train_quantization!r} is not one of "
                               f"{quantization.MODES}")

  @nn.nowrap
  def rate_kwargs(self) -> dict[str, Any]:
    """Fields a codec passes to the entropy-coded models it builds (variable rate)."""
    return {"qualities": self.qualities, "quality": self.quality, "z_priors": self.z_priors}

  @nn.nowrap
  def normalize(self, features: Pyramid) -> dict[str, Any]:
    stats = norm_stats(self.feature_norm, self.scales)
    return {s: (f - stats[s][0]) / stats[s][1] if s in stats else f for s, f in features.items()}

  @nn.nowrap
  def denormalize(self, features: Pyramid) -> dict[str, Any]:
    stats = norm_stats(self.feature_norm, self.scales)
    return {s: f * stats[s][1] + stats[s][0] if s in stats else f for s, f in features.items()}

  @nn.nowrap
  def decoding_config(self) -> dict[str, Any]:
    """`module_config` with the `training_only` fields at their defaults, without the
    `encoder_only` ones and without `added_fields` at their defaults (what the fingerprint
    hashes)."""
    defaults = {f.name: f.default for f in dataclasses.fields(self)}
    config = dict(module_config(self), **{k: defaults[k] for k in self.training_only})
    return {k: v for k, v in config.items() if k not in self.encoder_only
            and not (k in (*self.added_fields, *self.added_rate_fields) and v == defaults[k])}

  @nn.nowrap
  def fingerprint(self, params: Any, tables: Any) -> bytes:
    """16-byte digest of codec id, config, parameters and tables (memoised per objects: hashing
    millions of parameters for every image would dominate a small codec's coding time)."""
    key = (self, id(params), id(tables))
    hit = _FINGERPRINTS.get(key)
    if hit is not None and hit[0] is params and hit[1] is tables:
      return hit[2]
    fp = bitstream.fingerprint(self.codec_id, self.decoding_config(), params, tables)
    if len(_FINGERPRINTS) >= 64:
      _FINGERPRINTS.pop(next(iter(_FINGERPRINTS)))
    _FINGERPRINTS[key] = (params, tables, fp)
    return fp

  @nn.nowrap
  def compress(self, params: Any, tables: Any, features: Pyramid,
               image_size: Sequence[int], **options: Any) -> bytes:
    """Host: one image's pyramid (batch 1) -> a self-describing bitstream (`options` go to the
    codec's `compress_streams`, e.g. MFIBA's explicit gains)."""
    feats = self.prepare(features)
    return self.pack(params, tables, feats, image_size,
                     *self.compress_streams(params, tables, feats, **options))

  @nn.nowrap
  def prepare(self, features: Pyramid) -> dict[str, np.ndarray]:
    """Host: one image's pyramid checked (batch 1, scales, channels, finite) and normalized."""
    return self.normalize(check_pyramid(features, self.scales, batch=1, channels=self.channels))

  @nn.nowrap
  def pack(self, params: Any, tables: Any, feats: Pyramid, image_size: Sequence[int],
           streams: Mapping[str, bytes], shapes: Mapping[str, tuple], meta: Mapping[str, Any]
           ) -> bytes:
    """Host: the coded streams of the prepared `feats` in this codec's container."""
    meta = json.loads(json.dumps(meta))  # what a decoder reads back (lists, not tuples)
    c = bitstream.Container(self.codec_id, self.fingerprint(params, tables), tuple(image_size),
                            shapes, streams, meta)
    sizes = tuple(tuple(int(v) for v in feats[s].shape[1:3]) for s in self.scales)
    if self.header == "compact":
      template = self.template(params, tables, sizes)
      folded = dataclasses.replace(c, metadata=_fold_digests(meta, template.folded))
      data = bitstream.pack_compact(folded, sizes, template)
      if data is not None:
        return data
    if PYRAMID_KEY in meta:
      raise errors.ConfigError(f"{self.codec_id} metadata must not use the key {PYRAMID_KEY!r}")
    meta[PYRAMID_KEY] = [list(hw) for hw in sizes]
    return bitstream.pack(dataclasses.replace(c, metadata=meta))

  @nn.nowrap
  def decompress(self, params: Any, tables: Any, data: bytes) -> dict[str, np.ndarray]:
    """Host: bitstream -> pyramid. Raises a BitstreamError subclass for any bad input.

    Every header field is validated against the model before use (`unpack`); an error the codec's
    own decoding still meets (a value in range but inconsistent with another) is reported as a
    CorruptBitstreamError, never as another exception type.
    """
    c = self.unpack(params, tables, data)
    try:
      return self._decode_container(params, tables, c, bitstream.is_compact(data))
    except (errors.HsscError, MemoryError):
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise errors.CorruptBitstreamError(
          f"{self.codec_id} bitstream cannot be decoded by this model: {type(e).__name__}: "
          f"{str(e)[:200]}") from e

  @nn.nowrap
  def _decode_container(self, params: Any, tables: Any, c: bitstream.Container, compact: bool
                        ) -> dict[str, np.ndarray]:
    if DIGEST_KEY not in c.metadata or not compact:
      out = self.decompress_streams(params, tables, c.streams, c.shapes, c.metadata)
    else:  # compact: one digest of all streams' entropy indexes, checked once they are decoded
      meta = {k: v for k, v in c.metadata.items() if k != DIGEST_KEY}
      with determinism.collecting() as got:
        out = self.decompress_streams(params, tables, c.streams, c.shapes, meta)
      if determinism.combine(got) != c.metadata[DIGEST_KEY]:
        raise errors.DeterminismError(
            "decoder entropy-model indexes differ from the encoder's (combined digest "
            f"{determinism.combine(got):04x} != {c.metadata[DIGEST_KEY]:04x})")
    return {s: np.asarray(v, np.float32) for s, v in self.denormalize(out).items()}

  @nn.nowrap
  def unpack(self, params: Any, tables: Any, data: bytes) -> bitstream.Container:
    """The container of a bitstream of this model (full or compact), every field checked against
    what this model writes for the bitstream's feature sizes (which are checked against
    `bitstream.LIMITS` first); BitstreamError otherwise."""
    fp = self.fingerprint(params, tables)
    if isinstance(data, (bytes, bytearray, memoryview)) and bitstream.is_compact(data):
      pre = bitstream.read_compact_preamble(data, len(self.scales))
      if pre.short_fingerprint != fp[:bitstream.SHORT_FINGERPRINT_BYTES]:
        raise errors.ModelMismatchError(
            "compact bitstream was written by another model (fingerprint prefix "
            f"{pre.short_fingerprint.hex()} != {fp[:bitstream.SHORT_FINGERPRINT_BYTES].hex()} of "
            f"this {self.codec_id!r} model)")
      sizes = bitstream.check_feature_sizes(pre.sizes, self.channels)
      template = self.template(params, tables, sizes)
      c = bitstream.unpack_compact(data, pre, template)
      meta = dict(c.metadata, **{PYRAMID_KEY: [list(hw) for hw in sizes]})
      if template.folded:  # per-stream digests travel as one; the decoder checks that one
        meta.update({k: 0 for k in template.folded})
      return dataclasses.replace(c, fingerprint=fp, metadata=meta)
    c = bitstream.unpack(data)
    bitstream.check_model(c, self.codec_id, fp)
    meta = dict(c.metadata)
    sizes = bitstream.check_feature_sizes(meta.pop(PYRAMID_KEY, None), self.channels)
    template = self.template(params, tables, sizes)
    if sorted(c.streams) != sorted(template.stream_names):
      raise errors.CorruptBitstreamError(f"bitstream has streams {sorted(c.streams)}, this model "
                                         f"writes {sorted(template.stream_names)}")
    if dict(c.shapes) != dict(template.shapes):
      raise errors.CorruptBitstreamError(
          f"bitstream shapes {dict(c.shapes)} are not those this model writes for feature sizes "
          f"{sizes}: {dict(template.shapes)}")
    expected = {k: v for k, v in template.metadata.items() if k != DIGEST_KEY or not template.folded}
    expected.update({k: 0 for k in template.folded})
    bitstream.check_metadata(meta, expected)
    return dataclasses.replace(c, metadata=dict(meta, **{PYRAMID_KEY: [list(hw) for hw in sizes]}))

  @nn.nowrap
  def coded_sizes(self, metadata: Mapping[str, Any], order: Sequence[str] | None = None
                  ) -> tuple[tuple[int, int], ...]:
    """For `decompress_streams`: (H, W) per scale in `order` (default `scales`), from the
    container's feature sizes (checked against the model and `bitstream.LIMITS` by `unpack`); a
    codec's own "sizes" metadata, where it writes one, must repeat them in that order."""
    if PYRAMID_KEY not in metadata:
      raise errors.CorruptBitstreamError("bitstream lacks its feature sizes")
    by_scale = dict(zip(self.scales, (tuple(int(v) for v in hw) for hw in metadata[PYRAMID_KEY])))
    out = tuple(by_scale[s] for s in (order or self.scales))
    if "sizes" in metadata and metadata["sizes"] != [list(hw) for hw in out]:
      raise errors.CorruptBitstreamError(
          f"bitstream metadata 'sizes' {str(metadata['sizes'])[:80]} differs from the feature "
          f"sizes of the container {out}")
    return out

  @nn.nowrap
  def template(self, params: Any, tables: Any, sizes: Sequence[Sequence[int]]
               ) -> bitstream.Template:
    """What this model writes for feature `sizes` apart from data (a dry run on zeros, cached)."""
    sizes = tuple(tuple(int(v) for v in s) for s in sizes)
    key = (self.fingerprint(params, tables), sizes)
    if key not in _TEMPLATES:
      zeros = {s: np.zeros((1, h, w, c), np.float32)
               for s, (h, w), c in zip(self.scales, sizes, self.channels)}
      streams, shapes, meta = self.compress_streams(params, tables, zeros)
      meta = json.loads(json.dumps(meta))
      folded = tuple(sorted(k for k, v in meta.items() if _is_digest(k, v)))
      if len(_TEMPLATES) >= 32:
        _TEMPLATES.pop(next(iter(_TEMPLATES)))
      _TEMPLATES[key] = bitstream.Template(
          self.codec_id, {k: tuple(int(d) for d in v) for k, v in shapes.items()},
          tuple(streams), _fold_digests(meta, folded), folded)
    return _TEMPLATES[key]

  # To be defined by subclasses (host side).
  @nn.nowrap
  def build_tables(self, params: Any) -> dict:
    raise NotImplementedError

  @nn.nowrap
  def compress_streams(self, params, tables, features):
    raise NotImplementedError

  @nn.nowrap
  def decompress_streams(self, params, tables, streams, shapes, metadata):
    raise NotImplementedError


def require(container_dict: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
  """Raises CorruptBitstreamError unless every key is present (streams, shapes or metadata)."""
  missing = [k for k in keys if k not in container_dict]
  if missing:
    raise errors.CorruptBitstreamError(f"bitstream lacks {what} {missing}")
