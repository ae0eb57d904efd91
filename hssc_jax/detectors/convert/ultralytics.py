"""Reads an ultralytics YOLOv5 `.pt` checkpoint without torch or the ultralytics code.

A `.pt` file written by `torch.save` is a zip archive:

```
<prefix>/data.pkl     pickle of {"model": models.yolo.Model, "ema": ..., "epoch": ..., ...}
<prefix>/data/<key>   raw little-endian bytes of each tensor storage
```

`load_checkpoint` unpickles `data.pkl` with a restricted unpickler: the module classes of
ultralytics (`models.common.Conv`, `models.yolo.Detect`, ...) and of `torch.nn` become `Module`
containers (class path + attribute dict, no code runs), tensors are rebuilt with numpy from the
storages (`torch._utils._rebuild_tensor_v2`), and every other global is refused with a
`CheckpointError` that names it. `convert` maps the module tree onto the Flax variables of
`detectors.yolov5.YOLOv5Module`:

```
model.{i}.conv.weight (O, I, kh, kw)      -> params/layer_{i}/conv/kernel (kh, kw, I, O)
model.{i}.m.{j}.cv1.bn.{weight,bias}      -> params/layer_{i}/m_{j}/cv1/bn/{scale,bias}
model.{i}.*.bn.running_{mean,var}         -> batch_stats/layer_{i}/.../bn/{mean,var}
model.24.m.{k}.{weight,bias}              -> params/detect/m_{k}/{kernel,bias}
```

With `fuse=True` (default) every BatchNorm is folded into its convolution exactly as upstream's
`fuse_conv_and_bn` does in float32 (the reference outputs were made with the fused model):
w' = w gamma / sqrt(var + eps), b' = beta - gamma mean / sqrt(var + eps).
"""

import hashlib
import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from hssc_jax import errors
from hssc_jax.detectors import yolov5
from hssc_jax.detectors.convert import numpy_pickle

# Module classes that may appear in a YOLOv5 v6.0 checkpoint; each becomes a `Module` container.
MODULE_CLASSES = {
    "models.yolo": ("Model", "Detect"),
    "models.common": ("Conv", "C3", "Bottleneck", "SPPF", "Concat"),
    "torch.nn.modules.conv": ("Conv2d",),
    "torch.nn.modules.batchnorm": ("BatchNorm2d",),
    "torch.nn.modules.activation": ("SiLU",),
    "torch.nn.modules.pooling": ("MaxPool2d",),
    "torch.nn.modules.upsampling": ("Upsample",),
    "torch.nn.modules.container": ("Sequential", "ModuleList"),
}
STORAGE_DTYPES = {
    "HalfStorage": np.float16, "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# The v6.0 layer list (models/yolov5*.yaml): (module class, `from` index or indices).
V6_LAYOUT = (
    ("Conv", -1), ("Conv", -1), ("C3", -1), ("Conv", -1), ("C3", -1), ("Conv", -1), ("C3", -1),
    ("Conv", -1), ("C3", -1), ("SPPF", -1), ("Conv", -1), ("Upsample", -1), ("Concat", [-1, 6]),
    ("C3", -1), ("Conv", -1), ("Upsample", -1), ("Concat", [-1, 4]), ("C3", -1), ("Conv", -1),
    ("Concat", [-1, 14]), ("C3", -1), ("Conv", -1), ("Concat", [-1, 10]), ("C3", -1),
    ("Detect", [17, 20, 23]),
)


class Module:
  """A pickled torch module as plain data: `cls` (its class path) and `state` (its __dict__)."""

  cls = "?"

  def __setstate__(self, state: Any) -> None:
    if not isinstance(state, dict):
      raise errors.CheckpointError(f"unexpected pickled state of {self.cls}: {type(state).__name__}")
    self.state = state

  @property
  def children(self) -> "OrderedDict[str, Module]":
    return self.state.get("_modules") or OrderedDict()

  def __repr__(self) -> str:
    return f"Module({self.cls})"


_module_types: dict[str, type] = {}


def _module_type(path: str) -> type:
  if path not in _module_types:
    _module_types[path] = type(path.rsplit(".", 1)[1], (Module,), {"cls": path})
  return _module_types[path]


class _StorageType:
  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Unpickler(pickle.Unpickler):
  """Restricted unpickler for torch zip checkpoints (see module doc)."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(io.BytesIO(data))
    self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if name in MODULE_CLASSES.get(module, ()):
      return _module_type(f"{module}.{name}")
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    allowed = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("builtins", "set"): set, ("__builtin__", "set"): set,
        ("_codecs", "encode"): numpy_pickle.encode_latin1,
        ("numpy.core.multiarray", "_reconstruct"): numpy_pickle.reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): numpy_pickle.Dtype,
    }
    if (module, name) in allowed:
      return allowed[(module, name)]
    raise errors.CheckpointError(
        f"refusing to unpickle global '{module}.{name}': not part of a YOLOv5 v6.0 checkpoint "
        "(only ultralytics/torch module classes, tensors and plain containers are read)")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise errors.CheckpointError(f"unexpected persistent id in checkpoint: {pid!r:.200}")
    _, storage_type, key, _, numel = pid
    key = str(key)
    if key not in self._storages:
      name = f"{self._prefix}data/{key}"
      try:
        raw = self._archive.read(name)
      except KeyError as e:
        raise errors.CheckpointError(f"checkpoint lacks the storage record {name!r}") from e
      dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
      if len(raw) < int(numel) * dtype.itemsize:
        raise errors.CheckpointError(
            f"storage {name!r} holds {len(raw)} bytes, fewer than {numel} x {dtype.itemsize}")
      self._storages[key] = np.frombuffer(raw, dtype, count=int(numel)).astype(
          storage_type.dtype.newbyteorder("="))
    return self._storages[key]

  @staticmethod
  def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_) -> np.ndarray:
    if not isinstance(storage, np.ndarray):
      raise errors.CheckpointError("tensor without a storage in checkpoint")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in stride):
      raise errors.CheckpointError(f"malformed tensor: size {size}, stride {stride}")
    if 0 in size:
      return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
      raise errors.CheckpointError(
          f"tensor of size {size}, stride {stride}, offset {offset} overruns its storage "
          f"of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], size, tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
  del requires_grad, backward_hooks
  return data


def load_checkpoint(path: str | Path) -> Any:
  """Unpickles a torch zip checkpoint into plain containers (see module doc)."""
  path = Path(path)
  if not path.is_file():
    raise errors.CheckpointError(f"checkpoint file not found: {path}")
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise errors.CheckpointError(
        f"{path} is not a zip archive: expected a PyTorch checkpoint written by torch.save "
        "(zip format, torch >= 1.6)") from e
  with archive:
    pkls = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkls) != 1:
      raise errors.CheckpointError(
          f"{path} is a zip archive but not a PyTorch checkpoint (found {len(pkls)} data.pkl)")
    prefix = pkls[0][:-len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
      byteorder = archive.read(f"{prefix}byteorder").decode().strip()
    try:
      return _Unpickler(archive.read(pkls[0]), archive, prefix, byteorder).load()
    except errors.CheckpointError:
      raise
    except Exception as e:  # malformed pickle streams raise many different types
      raise errors.CheckpointError(f"cannot unpickle {pkls[0]} of {path}: {e}") from e


def _state_dict(module: Module, prefix: str = "") -> dict[str, np.ndarray]:
  """Flat `name -> array` of a module tree's parameters and buffers, as torch's state_dict."""
  out = {}
  for kind in ("_parameters", "_buffers"):
    for k, v in (module.state.get(kind) or {}).items():
      if v is not None:
        out[prefix + k] = v
  for k, child in module.children.items():
    if not isinstance(child, Module):
      raise errors.CheckpointError(f"unexpected child {prefix + k}: {type(child).__name__}")
    out.update(_state_dict(child, f"{prefix}{k}."))
  return out


def _walk(module: Module, prefix: str = ""):
  yield prefix.rstrip("."), module
  for k, child in module.children.items():
    yield from _walk(child, f"{prefix}{k}.")


def _torch_key(flax_path: tuple[str, ...]) -> tuple[str, str]:
  """Flax (collection, ..., leaf) path -> (torch state_dict key, kind)."""
  collection, *names, leaf = flax_path
  parts = []
  for n in names:
    if n.startswith("layer_"):
      parts += ["model", n[len("layer_"):]]
    elif n == "detect":
      parts += ["model", "24"]
    elif n.startswith("m_"):
      parts += ["m", n[len("m_"):]]
    else:
      parts.append(n)
  leaf_map = {("params", "kernel"): "weight", ("params", "bias"): "bias",
              ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
              ("batch_stats", "var"): "running_var"}
  return ".".join(parts + [leaf_map[(collection, leaf)]]), leaf


def _model(ckpt: Any) -> Module:
  if not isinstance(ckpt, dict):
    raise errors.CheckpointError(f"expected a checkpoint dict, found {type(ckpt).__name__}")
  model = ckpt.get("ema") or ckpt.get("model")
  if not isinstance(model, Module) or model.cls != "models.yolo.Model":
    raise errors.CheckpointError(
        f"expected ckpt['model'] (or 'ema') to be a models.yolo.Model, found {model!r:.100}")
  return model


def _check_layout(model: Module) -> list[Module]:
  seq = model.children.get("model")
  layers = list(seq.children.values()) if isinstance(seq, Module) else []
  found = [(m.cls.rsplit(".", 1)[1], m.state.get("f")) for m in layers]
  if found != [(c, f) for c, f in V6_LAYOUT]:
    raise errors.CheckpointError(
        "unexpected module tree: not the YOLOv5 v6.0 layout (models/yolov5*.yaml); "
        f"found layers {[c for c, _ in found]}")
  for name, m in _walk(model):
    if m.cls.endswith("Conv") and m.cls.startswith("models.common"):
      act = m.children.get("act")
      if act is None or act.cls != "torch.nn.modules.activation.SiLU":
        raise errors.CheckpointError(f"{name}: activation {act!r} is not SiLU (not v6.0)")
  return layers


def _size(model: Module) -> tuple[str, int]:
  yaml = model.state.get("yaml") or {}
  multiples = (yaml.get("depth_multiple"), yaml.get("width_multiple"))
  sizes = [s for s, m in yolov5.MULTIPLES.items() if m == multiples]
  if not sizes:
    raise errors.CheckpointError(
        f"depth/width multiples {multiples} are none of YOLOv5 n/s/m/l/x {yolov5.MULTIPLES}")
  return sizes[0], int(model.state.get("nc", yaml.get("nc", 0)))


def _fuse(kernel: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
          var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
  """Upstream `fuse_conv_and_bn` in float32 (same operations, same order); kernel (O, I, kh, kw)."""
  f32 = np.float32
  kernel, gamma, beta, mean, var = (a.astype(f32) for a in (kernel, gamma, beta, mean, var))
  w = gamma / np.sqrt(f32(eps) + var)
  fused = (w[:, None, None, None] * kernel).astype(f32)
  bias = (beta - (gamma * mean) / np.sqrt(var + f32(eps))).astype(f32)
  return fused, bias


def convert(path: str | Path, fuse: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
  """Flax variables and a description of an ultralytics YOLOv5 v6.0 checkpoint.

  Returns:
    (variables: {"params"} when fused, else {"params", "batch_stats"}, float32 numpy arrays;
    info: size, num_classes, fused, anchors (pixels, per level), strides, names,
    depth_multiple, width_multiple, source (file name), sha256).
  """
  path = Path(path)
  model = _model(load_checkpoint(path))
  layers = _check_layout(model)
  size, nc = _size(model)
  state = _state_dict(model)
  detect = layers[24]
  strides = [float(s) for s in np.asarray(detect.state.get("stride", model.state.get("stride")))]
  if strides != [8.0, 16.0, 32.0]:
    raise errors.CheckpointError(f"Detect strides {strides}, expected [8, 16, 32]")
  anchors = np.asarray(state["model.24.anchors"], np.float64) * np.asarray(strides)[:, None, None]
  eps = {name: float(m.state.get("eps", 1e-5)) for name, m in _walk(model)
         if m.cls == "torch.nn.modules.batchnorm.BatchNorm2d"}

  det = yolov5.YOLOv5(size=size, num_classes=nc, fused=False, img_size=64)
  abstract = traverse_util.flatten_dict(jax.eval_shape(det.init, jax.random.PRNGKey(0)))
  out, used = {}, set()
  for fpath, spec in abstract.items():
    key, leaf = _torch_key(fpath)
    if key not in state:
      raise errors.CheckpointError(f"checkpoint lacks {key} (for Flax {'/'.join(fpath)})")
    value = np.asarray(state[key], np.float32)
    if leaf == "kernel":
      value = value.transpose(2, 3, 1, 0)
    if value.shape != spec.shape:
      raise errors.CheckpointError(
          f"{key} has shape {value.shape} (after layout change), expected {spec.shape} for a "
          f"YOLOv5{size} with {nc} classes")
    out[fpath] = value
    used.add(key)
  extra = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked")
                 and k not in ("model.24.anchors", "model.24.anchor_grid"))
  if extra:
    raise errors.CheckpointError(f"checkpoint holds tensors the v6.0 model does not use: {extra[:8]}")

  if fuse:
    fused = {}
    for fpath, value in out.items():
      if fpath[0] == "batch_stats" or "bn" in fpath:
        continue
      if fpath[-2] == "conv" and fpath[-1] == "kernel":
        base = fpath[1:-2]
        bn = lambda coll, leaf: out[(coll,) + base + ("bn", leaf)]
        torch_bn = _torch_key(("params",) + base + ("bn", "scale"))[0].rsplit(".", 1)[0]
        k, b = _fuse(value.transpose(3, 2, 0, 1), bn("params", "scale"), bn("params", "bias"),
                     bn("batch_stats", "mean"), bn("batch_stats", "var"), eps[torch_bn])
        fused[fpath] = k.transpose(2, 3, 1, 0)
        fused[fpath[:-1] + ("bias",)] = b
      else:
        fused[fpath] = value
    out = fused
  elif any(abs(e - 1e-3) > 1e-12 for e in eps.values()):
    raise errors.CheckpointError("unfused conversion needs BatchNorm eps 1e-3 everywhere")

  info = dict(size=size, num_classes=nc, fused=bool(fuse), strides=[8, 16, 32],
              anchors=[[float(v) for v in a.reshape(-1)] for a in anchors],
              names=list(model.state.get("names") or []),
              depth_multiple=yolov5.MULTIPLES[size][0], width_multiple=yolov5.MULTIPLES[size][1],
              source=path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
  return traverse_util.unflatten_dict(out), info
