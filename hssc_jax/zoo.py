"""The model zoo: trained codecs shipped in the repository, loadable by name.

  model = zoo.load("lmfc", quality=3)           # a codec fixed at one operating point
  data = model.compress(features, image_size)    # bytes (a real bitstream)
  features_hat = model.decompress(data)

One file per method, `hssc_jax/assets/zoo/<name>.hsz`: a variable-rate model (one quality per
lambda of its training sweep) with float16 parameters and its CDF tables. Layout (version 3):

```
  0   8  magic b"HSJXZOO\\0"
  8   2  format version (big-endian)
 10   4  header length n
 14   n  JSON header: name, codec, codec_kwargs, scales, channels, detector, lmbdas, steps,
           tables_bytes m, SHA-256 of everything after the header, fingerprint of each quality
14+n  m  the integer CDF tables (zlib of flax msgpack), built once at export
14+n+m * zlib of the flax msgpack of the float16 parameters (version 2: not compressed)
```

The tables travel with the weights because building them is floating-point work whose last bits
depend on the machine (NumPy dispatches exp and log to code for the CPU it runs on): a decoder
that rebuilt them could select other CDFs than the encoder did. Loading checks the magic, version,
length and SHA-256 (a truncated or damaged file raises `ZooError`) and that every quality's
fingerprint (configuration, parameters, tables) is the one recorded at export: a library change
that would decode the zoo's bitstreams differently fails loudly instead of silently. Version 1
files (no tables) still load, their tables rebuilt here, so on another machine than the one that
exported them their fingerprints may not match: `upgrade` rewrites one in the current version
(version 2 files load as they are; compressing their parameters changes no fingerprint). `export`
writes a zoo file from a training workdir, `resave` writes one again with other encoder options or
parameters, `respace` with its quality ladder moved.
"""

import dataclasses
import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import flax.serialization
import jax
import numpy as np

from hssc_jax import errors
from hssc_jax.codecs import coders

ZOO_DIR = Path(__file__).resolve().parent / "assets" / "zoo"
MAGIC = b"HSJXZOO\0"
FORMAT_VERSION = 3
_READS = (1, 2, 3)  # version 1: no tables section (rebuilt at load); 3: parameters compressed
SUFFIX = ".hsz"
_PREAMBLE = struct.Struct(">8sHI")


class ZooError(errors.HsscError, ValueError):
  """A zoo file that is missing, truncated, damaged, of another version or of another library."""


@dataclasses.dataclass(frozen=True)
class ZooModel(coders.LearnedCoder):
  """A zoo codec at one quality: the codec module, its parameters and tables (a `LearnedCoder`:
  `compress(features, image_size)`, `decompress(data)`), and the file's header `info`."""

  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def quality(self) -> int:
    return int(self.codec.quality)


def path_of(name: str, folder: str | Path | None = None) -> Path:
  return Path(folder or ZOO_DIR) / f"{name}{SUFFIX}"


def names(folder: str | Path | None = None) -> list[str]:
  """The models in the zoo folder."""
  folder = Path(folder or ZOO_DIR)
  return sorted(p.name[:-len(SUFFIX)] for p in folder.glob(f"*{SUFFIX}")) if folder.exists() else []


def _to_float16(tree: Any) -> Any:
  return jax.tree.map(lambda a: np.asarray(a, np.float16), tree)


def _to_float32(tree: Any) -> Any:
  return jax.tree.map(lambda a: np.asarray(a, np.float32), tree)


def _build(info: Mapping[str, Any]):
  from hssc_jax.codecs import registry  # pylint: disable=g-import-not-at-top
  return registry.build_codec(info["codec"], info["codec_kwargs"], info["scales"], info["channels"])


def _fingerprints(codec: Any, params: Any, tables: Any) -> list[str]:
  qualities = max(int(codec.qualities), 1)
  return [codec.clone(quality=q).fingerprint(params, tables).hex() for q in range(qualities)]


def export(workdir: str | Path, name: str, folder: str | Path | None = None) -> Path:
  """Writes the trained codec of `workdir` as zoo model `name` (float16 parameters)."""
  from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
  from hssc_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  _, params, _, run = train_lib.load_codec(workdir)
  metrics_path = Path(workdir) / "final_metrics.json"
  return save(name, run["codec"], run["codec_kwargs"], run["scales"], run["channels"],
              jax.device_get(params), folder, detector=run["detector"],
              lmbdas=run.get("lmbdas", []), steps=checkpoints.latest_tables_step(workdir),
              final_metrics=json.loads(metrics_path.read_text()) if metrics_path.exists() else {})


def save(name: str, codec_name: str, codec_kwargs: Mapping[str, Any], scales: Sequence[str],
         channels: Sequence[int], params: Any, folder: str | Path | None = None,
         tables: Any = None, **info: Any) -> Path:
  """Writes a codec (registry name and options, parameters) as zoo model `name`: float16
  parameters, its CDF tables (`tables`, else built here), the compact header, the fingerprint of
  every quality. `info` adds header fields (detector, lmbdas, steps, final_metrics)."""
  codec_kwargs = json.loads(json.dumps(dict(codec_kwargs, header="compact")))
  head = {"name": name, "codec": codec_name, "codec_kwargs": codec_kwargs,
          "scales": list(scales), "channels": [int(c) for c in channels], "detector": {},
          "lmbdas": [], "steps": 0, "final_metrics": {}, **info}
  codec = _build(head)
  params = _to_float32(_to_float16(params))  # what loading will see
  tables = jax.tree.map(np.asarray, codec.build_tables(params) if tables is None else tables)
  packed = zlib.compress(flax.serialization.msgpack_serialize(tables), 9)
  payload = packed + zlib.compress(flax.serialization.msgpack_serialize(_to_float16(params)), 9)
  head.update(payload_sha256=hashlib.sha256(payload).hexdigest(), tables_bytes=len(packed),
              fingerprints=_fingerprints(codec, params, tables))
  header = json.dumps(head, sort_keys=True).encode("utf-8")
  path = path_of(name, folder)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_bytes(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header)) + header + payload)
  tmp.rename(path)
  return path


# Header fields that `save` writes from its arguments and the payload; the rest carry over.
_WRITTEN_BY_SAVE = ("name", "codec", "codec_kwargs", "scales", "channels", "payload_sha256",
                    "fingerprints", "tables_bytes")


def upgrade(path: str | Path) -> Path:
  """Rewrites a zoo file in place in the current version (a version-1 file gains its tables),
  tables built and fingerprints recomputed by this library on this machine; the parameters stay
  as they are. For a file whose fingerprints a library change moved (a re-export, no retraining)."""
  return resave(path, rebuild_tables=True)


def resave(path: str | Path, folder: str | Path | None = None, name: str | None = None,
           rebuild_tables: bool = False, params: Any = None, **codec_options: Any) -> Path:
  """Writes zoo file `path` again, its parameters and header info as they are and
  `codec_options` merged into its codec options (e.g. MFIBA's fitted models or encoder exponent),
  as `name` (default: its own) in `folder` (default: its own); `params`, if given, replaces its
  parameters (the same tree, e.g. an encoder-side network refitted).

  The file's tables are kept where the options and parameters leave them alone (this machine
  builds the same tables with and without them), so an encoder setting changed on another machine
  does not move their last bits (nor the fingerprints); they are rebuilt where the change moves
  them, where the file has none (version 1) or with `rebuild_tables`."""
  info, old_params, stored = _read(path)
  params = old_params if params is None else params
  if jax.tree.structure(params) != jax.tree.structure(old_params) or any(
      np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(params),
                                                 jax.tree.leaves(old_params))):
    raise ZooError(f"replacement parameters do not match the tree of {path}")
  keep = {k: v for k, v in info.items() if k not in _WRITTEN_BY_SAVE}
  kwargs = dict(info["codec_kwargs"], **codec_options)
  return _write_again(path, info, stored, old_params, kwargs, params, keep, folder, name,
                      rebuild_tables)


def _write_again(path: str | Path, info: Mapping[str, Any], stored: Any, old_params: Any,
                 kwargs: Mapping[str, Any], params: Any, keep: Mapping[str, Any],
                 folder: str | Path | None, name: str | None, rebuild_tables: bool = False
                 ) -> Path:
  """Saves the zoo file `path` (read as `info`, `stored` tables, `old_params`) with codec options
  `kwargs`, parameters `params` and header fields `keep`, as `name` in `folder` (defaults: its own).
  The stored tables stay where this machine builds the same tables before and after the change."""
  tables = None
  if stored is not None and not rebuild_tables:
    before, after = (_build(dict(info, codec_kwargs=k)).build_tables(p)
                     for k, p in ((info["codec_kwargs"], old_params), (kwargs, params)))
    tables = stored if _same_tree(before, after) else after  # `after`: not built a third time
  return save(name or info["name"], info["codec"], kwargs, info["scales"], info["channels"],
              params, Path(path).parent if folder is None else folder, tables=tables, **keep)


# Quality-indexed parameters, (qualities, channels): log-gains (hyperprior, HSC), and the
# cross-scale condition's gains, stored as gains.
_LOG_GAINS = ("gain", "inv_gain", "feature_gain", "feature_inv_gain")
_GAINS = ("in_gain", "out_gain")
# Codec options with one entry per quality, which a gain ladder cannot interpolate.
_PER_QUALITY_OPTIONS = ("qps", "allocation_models")


def respace(path: str | Path, positions: Sequence[float], folder: str | Path | None = None,
            name: str | None = None) -> Path:
  """Writes zoo file `path` again with its quality ladder moved to `positions`, fractional
  qualities of its present ladder, increasing: e.g. (0, 1, 2, 2.5, 3, 4) drops quality 5 and adds
  one between 2 and 3. Each new quality's gain vectors are those of its two neighbours mixed
  log-linearly, the continuous rate adaptation of Cui et al. (asymmetric gained VAE, CVPR 2021),
  its lambda (header) mixed the same way; the header's `ladder` records the positions. Positions
  up to one step past either end (-1 to q) extrapolate the end pair's log-linear line: a rate the
  model was not trained for, to be measured before it is trusted.
  Transforms and entropy models stay; fingerprints are new. For codecs whose quality knob is
  gain vectors alone (ConfigError for per-quality QPs or allocation models: the HSSC paper form,
  MFIBA)."""
  info, params, stored = _read(path)
  kwargs = dict(info["codec_kwargs"])
  q = int(kwargs.get("qualities", 0))
  pos = np.asarray(positions, np.float64)
  if q < 2:
    raise errors.ConfigError(f"{path}: a model of {q} qualities has no ladder to respace")
  per_quality = [k for k in _PER_QUALITY_OPTIONS if k in kwargs]
  if per_quality:
    raise errors.ConfigError(f"{path}: codec {info['codec']!r} has per-quality options "
                             f"{per_quality}, not gains alone")
  if kwargs.get("z_priors"):
    raise errors.ConfigError(f"{path}: its z priors are fitted per quality and cannot be mixed; "
                             "respace the model they were fitted on, then fit them again")
  if (pos.ndim != 1 or not pos.size or not np.all(np.isfinite(pos)) or np.any(np.diff(pos) <= 0)
      or pos[0] < -1 or pos[-1] > q):
    raise errors.ConfigError(f"positions must increase within [-1, {q}], got {list(positions)}")
  lo = np.clip(np.floor(pos).astype(int), 0, q - 2)
  frac = (pos - lo)[:, None]

  def mix(a, geometric=False):  # whole positions keep their rows exactly
    a = np.asarray(a, np.float64)
    b = np.log(a) if geometric else a
    between = (1 - frac) * b[lo] + frac * b[lo + 1]
    between = np.exp(between) if geometric else between
    return np.where(frac == 1, a[lo + 1], np.where(frac == 0, a[lo], between))

  found = []

  def move(key_path, a):
    key = getattr(key_path[-1], "key", None)
    if key not in _LOG_GAINS + _GAINS or np.shape(a)[:1] != (q,):
      return a
    found.append(key)
    if key in _GAINS and np.any(np.asarray(a) <= 0):
      raise errors.ConfigError(f"{path}: gain {jax.tree_util.keystr(key_path)} is not positive")
    return mix(a, geometric=key in _GAINS).astype(np.float32)

  moved = jax.tree_util.tree_map_with_path(move, params)
  if not found:
    raise errors.ConfigError(f"{path}: no quality gain vectors found in its parameters")
  kwargs["qualities"] = int(pos.size)
  lmbdas = info.get("lmbdas") or []
  keep = {k: v for k, v in info.items() if k not in _WRITTEN_BY_SAVE + ("lmbdas", "ladder")}
  if len(lmbdas) == q and all(l > 0 for l in lmbdas):
    keep["lmbdas"] = [float(l) for l in mix(np.asarray(lmbdas)[:, None], geometric=True)[:, 0]]
  keep["ladder"] = list(info.get("ladder", [])) + [[float(p) for p in pos]]
  return _write_again(path, info, stored, params, kwargs, moved, keep, folder, name)


def fit_z_priors(path: str | Path, pyramids: Iterable[Mapping[str, Any]],
                 folder: str | Path | None = None, name: str | None = None, steps: int = 1500
                 ) -> tuple[Path, dict[str, Any]]:
  """(path written, report): zoo file `path` written again with one factorized prior of z per
  quality fitted on `pyramids`, raw training features (`training.z_priors`); transforms, gains and
  decoded features stay as they are, only the z streams change (new fingerprints). The report
  (bits per z element before and after, per quality) goes into the header as `z_priors_fit`."""
  from hssc_jax.training import z_priors  # pylint: disable=g-import-not-at-top
  info, params, stored = _read(path)
  pyramids = list(pyramids)
  _, fitted, report = z_priors.fit(_build(info), params, pyramids, steps)
  keep = {k: v for k, v in info.items() if k not in _WRITTEN_BY_SAVE}
  keep["z_priors_fit"] = {"pyramids": len(pyramids), "steps": int(steps), "modules": report}
  out = _write_again(path, info, stored, params, dict(info["codec_kwargs"], z_priors=True), fitted,
                     keep, folder, name, rebuild_tables=True)
  return out, report


def _same_tree(a: Any, b: Any) -> bool:
  """Whether two trees of arrays have the same structure, shapes, dtypes and values."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
  return all(np.asarray(x).dtype == np.asarray(y).dtype and np.shape(x) == np.shape(y)
             and np.array_equal(x, y) for x, y in pairs)


def _preamble(path: Path, head: bytes) -> tuple[int, int]:
  """(format version, header length) from the first bytes of a zoo file; ZooError unless it is
  one this library reads."""
  if len(head) < _PREAMBLE.size or head[:len(MAGIC)] != MAGIC:
    raise ZooError(f"{path} is not a hssc_jax zoo file (bad magic or shorter than its preamble)")
  _, version, n = _PREAMBLE.unpack_from(head)
  if version not in _READS:
    raise ZooError(f"{path} is zoo format version {version}; this library reads {_READS}")
  return version, n


def read_info(path: str | Path) -> dict[str, Any]:
  """The JSON header of a zoo file (without reading or checking its parameters)."""
  path = Path(path)
  if not path.is_file():
    raise ZooError(f"zoo file not found: {path}")
  with open(path, "rb") as f:
    _, n = _preamble(path, f.read(_PREAMBLE.size))
    raw = f.read(n)
  try:
    return json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ZooError(f"{path} has a truncated or damaged header") from e


def read(path: str | Path) -> tuple[dict[str, Any], Any]:
  """(header info, float32 parameters) of a zoo file; ZooError when it is not a sound one."""
  info, params, _ = _read(path)
  return info, params


def _read(path: str | Path) -> tuple[dict[str, Any], Any, Any]:
  """(header info, float32 parameters, tables or None for a version-1 file)."""
  path = Path(path)
  if not path.is_file():
    raise ZooError(f"zoo file not found: {path}")
  data = path.read_bytes()
  version, n = _preamble(path, data)
  if _PREAMBLE.size + n > len(data):
    raise ZooError(f"{path} is truncated: its header runs past the end of the file")
  try:
    info = json.loads(data[_PREAMBLE.size:_PREAMBLE.size + n].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ZooError(f"{path} has a damaged header") from e
  payload = data[_PREAMBLE.size + n:]
  if not isinstance(info, dict) or hashlib.sha256(payload).hexdigest() != info.get("payload_sha256"):
    raise ZooError(f"{path} is truncated or damaged: its parameters fail the SHA-256 check")
  m = info.get("tables_bytes", 0) if version >= 2 else 0
  if not isinstance(m, int) or not 0 <= m <= len(payload):
    raise ZooError(f"{path}: tables_bytes {m!r} does not fit its {len(payload)}-byte payload")
  try:
    tables = flax.serialization.msgpack_restore(_inflate(payload[:m])) if version >= 2 else None
    params = flax.serialization.msgpack_restore(
        _inflate(payload[m:]) if version >= 3 else payload[m:])
  except Exception as e:  # pylint: disable=broad-except
    raise ZooError(f"{path}: parameters or tables cannot be read ({e})") from e
  return info, _to_float32(params), tables


MAX_INFLATED_BYTES = 1 << 30  # a zoo file's tables or parameters, decompressed


def _inflate(data: bytes) -> bytes:
  """zlib-decompressed `data`; ValueError past MAX_INFLATED_BYTES (a file built to exhaust memory)."""
  inflater = zlib.decompressobj()
  out = inflater.decompress(data, MAX_INFLATED_BYTES)
  if inflater.unconsumed_tail or not inflater.eof:
    raise ValueError(f"not a whole zlib stream of at most {MAX_INFLATED_BYTES} bytes")
  return out


def load(name: str, quality: int | None = None, folder: str | Path | None = None) -> ZooModel:
  """Zoo model `name` at `quality` (0 = lowest rate; None = the highest).

  Raises ConfigError for an unknown name or quality, ZooError for a bad file or a model whose
  fingerprint no longer matches the one recorded at export.
  """
  path = path_of(name, folder)
  if not path.exists():
    raise errors.ConfigError(f"no zoo model {name!r}; the zoo has {names(folder)}")
  info, params, tables = _read(path)
  codec = _build(info)
  qualities = max(int(codec.qualities), 1)
  if quality is None:
    quality = qualities - 1
  if not isinstance(quality, (int, np.integer)) or not 0 <= quality < qualities:
    raise errors.ConfigError(f"zoo model {name!r} has qualities 0..{qualities - 1}, got {quality!r}")
  codec = codec.clone(quality=int(quality)) if codec.qualities else codec
  rebuilt = tables is None
  if rebuilt:
    tables = codec.build_tables(params)
  want = info.get("fingerprints") or []
  try:
    got = codec.fingerprint(params, tables).hex()
  except Exception as e:  # pylint: disable=broad-except
    raise ZooError(f"zoo model {name!r}: its tables do not fit the codec ({e})") from e
  if len(want) != qualities or got != want[int(quality)]:
    hint = (" (a version-1 file: its tables were rebuilt on this machine; zoo.upgrade(path) "
            "re-exports it with them)" if rebuilt else "")
    raise ZooError(f"zoo model {name!r} quality {quality}: fingerprint {got} differs from the one "
                   f"recorded at export; this library would not decode its bitstreams the same "
                   f"way{hint}")
  return ZooModel(codec, params, tables, info)


def check_detector(model: ZooModel, scales: Sequence[str], channels: Sequence[int]) -> None:
  """ConfigError unless the detector gives the scales and channel counts the model was trained on."""
  want = (list(model.info["scales"]), [int(c) for c in model.info["channels"]])
  if (list(scales), [int(c) for c in channels]) != want:
    raise errors.ConfigError(
        f"zoo model {model.info['name']!r} codes scales {want[0]} with channels {want[1]} "
        f"(detector {model.info['detector'].get('name')}), this detector gives {list(scales)} "
        f"with {list(channels)}")
