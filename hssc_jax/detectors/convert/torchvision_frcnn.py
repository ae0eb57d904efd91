"""Faster R-CNN ResNet-FPN backbone weights from torchvision or detectron2 -> `resnet_fpn` params.

torchvision (`fasterrcnn_resnet50_fpn` and friends, a `state_dict` saved with `torch.save`):

```
backbone.body.conv1.weight (O, I, kh, kw)        -> body/conv1/kernel (kh, kw, I, O)
backbone.body.bn1.{weight,bias,running_mean,running_var}
                                                 -> body/bn1/{scale,bias,mean,var}
backbone.body.layer{k}.{j}.conv{m}.weight        -> body/layer{k}_{j}/conv{m}/kernel
backbone.body.layer{k}.{j}.bn{m}.*               -> body/layer{k}_{j}/bn{m}/*
backbone.body.layer{k}.0.downsample.{0,1}.*      -> body/layer{k}_0/downsample_{0,1}/*
backbone.fpn.inner_blocks.{i}.0.{weight,bias}    -> fpn/inner_blocks_{i}/{kernel,bias}
backbone.fpn.layer_blocks.{i}.0.{weight,bias}    -> fpn/layer_blocks_{i}/{kernel,bias}
```
Checkpoints of torchvision < 0.13 name the FPN convs `inner_blocks.{i}.weight` (no `.0`): both
are accepted. `num_batches_tracked` buffers are ignored; keys outside `backbone.` (RPN, box
head) are left for the later stages and not checked here.

detectron2 (model-zoo `model_final_*.pkl`: a plain pickle of `{"model": {name: numpy array}}`):

```
backbone.bottom_up.stem.conv1.weight / .norm.*   -> body/conv1, body/bn1
backbone.bottom_up.res{k+1}.{j}.conv{m}.weight / .norm.*
                                                 -> body/layer{k}_{j}/conv{m}, bn{m}
backbone.bottom_up.res{k+1}.0.shortcut.weight / .norm.*
                                                 -> body/layer{k}_0/downsample_0, downsample_1
backbone.fpn_lateral{i+2}.{weight,bias}          -> fpn/inner_blocks_{i}
backbone.fpn_output{i+2}.{weight,bias}           -> fpn/layer_blocks_{i}
```
detectron2 names are renamed to torchvision's and converted by the same code, so both follow the
one mapping documented in `resnet_fpn`. Note that detectron2's MSRA R-50/R-101 weights need
`backbone_features(..., stride_in_1x1=True)` and BGR input in [0, 255] minus its pixel mean
(the weights alone cannot tell). `.pkl` files are read with a restricted unpickler (numpy arrays,
dicts, lists and scalars only; no torch); `.pth` files need torch.
"""

import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from hssc_jax import errors
from hssc_jax.detectors import resnet_fpn
from hssc_jax.detectors.convert import numpy_pickle

PREFIX = "backbone."
_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
         "var": "running_var"}


def _torch_keys(path: tuple[str, ...]) -> list[str]:
  """Flax params path -> accepted torchvision keys (first is the current naming)."""
  *mods, leaf = path
  parts = []
  for m in mods:
    match = re.fullmatch(r"(layer\d|downsample|inner_blocks|layer_blocks)_(\d+)", m)
    parts += [match.group(1), match.group(2)] if match else [m]
  name = ".".join(parts)
  keys = [f"{PREFIX}{name}.{_LEAF[leaf]}"]
  if mods[0] == "fpn":
    keys = [f"{PREFIX}{name}.0.{_LEAF[leaf]}", f"{PREFIX}{name}.{_LEAF[leaf]}"]
  return keys


def _as_numpy(value: Any, key: str) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor handed over directly
    value = value.detach().cpu().numpy()
  try:
    arr = np.asarray(value)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.CheckpointError(f"{key}: not an array ({type(value).__name__})") from e
  if arr.dtype.kind not in "fiu":
    raise errors.CheckpointError(f"{key}: expected a numeric array, found dtype {arr.dtype}")
  return arr


def infer_arch(state_dict: Mapping[str, Any]) -> str:
  """Backbone name from a torchvision-named state_dict (block counts, grouped 3x3 kernels)."""
  blocks = []
  for k in range(1, 5):
    idx = {int(m.group(1)) for key in state_dict
           if (m := re.match(rf"{re.escape(PREFIX)}body\.layer{k}\.(\d+)\.", key))}
    blocks.append(max(idx) + 1 if idx else 0)
  key = f"{PREFIX}body.layer1.0.conv2.weight"
  if key not in state_dict:
    raise errors.CheckpointError(f"not a ResNet-FPN backbone: {key} is missing")
  shape = np.shape(state_dict[key])
  if len(shape) != 4 or shape[1] == 0 or shape[0] % shape[1]:
    raise errors.CheckpointError(
        f"{key} has shape {shape}, not a (width, width / groups, 3, 3) kernel")
  groups = shape[0] // shape[1]
  found = (tuple(blocks), groups, shape[0] // groups)
  for name, arch in resnet_fpn.ARCHS.items():
    if arch == found:
      return name
  raise errors.CheckpointError(
      f"backbone with blocks {found[0]}, groups {groups}, width per group {found[2]} is none of "
      f"{sorted(resnet_fpn.ARCHS)}")


def convert_state_dict(state_dict: Mapping[str, Any], arch: str | None = None,
                       source_names: Mapping[str, str] | None = None) -> dict[str, Any]:
  """torchvision-named state_dict (numpy arrays or tensors) -> `resnet_fpn` params (float32 numpy).

  Args:
    state_dict: a FasterRCNN (keys `backbone.*`) or `BackboneWithFPN` (keys `body.*`, `fpn.*`)
      state_dict.
    arch: a `resnet_fpn.ARCHS` name, or None to infer it from the keys and shapes.
    source_names: torchvision key -> original key, used in error messages (detectron2 files).

  Raises:
    CheckpointError: a tensor is missing, has the wrong shape, is not finite, or a `backbone.*`
      tensor is not used by the architecture.
  """
  if not isinstance(state_dict, Mapping):
    raise errors.CheckpointError(
        f"expected a state_dict mapping, found {type(state_dict).__name__}")
  if not any(k.startswith(PREFIX) for k in state_dict) and any(
      k.startswith(("body.", "fpn.")) for k in state_dict):
    state_dict = {PREFIX + k: v for k, v in state_dict.items()}
  source_names = source_names or {}
  shown = lambda k: f"{k} (from {source_names[k]})" if k in source_names else k
  arch = arch or infer_arch(state_dict)
  abstract = traverse_util.flatten_dict(resnet_fpn.abstract_params(arch))
  where = lambda path: f"for {'/'.join(path)} of a {arch} FPN backbone"
  sources = {}
  for path, spec in abstract.items():  # names and shapes first: errors come before any copying
    keys = _torch_keys(path)
    key = next((k for k in keys if k in state_dict), None)
    if key is None:
      raise errors.CheckpointError(f"state_dict lacks {keys[0]} ({where(path)})")
    shape = np.shape(state_dict[key])
    if path[-1] == "kernel":
      if len(shape) != 4:
        raise errors.CheckpointError(f"{shown(key)} has shape {shape}, expected a 4-d OIHW kernel")
      shape = (shape[2], shape[3], shape[1], shape[0])
    if tuple(shape) != spec.shape:
      raise errors.CheckpointError(
          f"{shown(key)} has shape {tuple(shape)} (after OIHW -> HWIO), expected {spec.shape} "
          f"{where(path)}")
    sources[path] = key
  used = set(sources.values())
  extra = sorted(k for k in state_dict if k.startswith(PREFIX) and k not in used
                 and not k.endswith("num_batches_tracked"))
  if extra:
    raise errors.CheckpointError(
        f"state_dict holds backbone tensors a {arch} FPN backbone does not use: "
        f"{[shown(k) for k in extra[:8]]}")
  out = {}
  for path, key in sources.items():
    value = _as_numpy(state_dict[key], shown(key))
    if path[-1] == "kernel":
      value = value.transpose(2, 3, 1, 0)
    value = np.ascontiguousarray(value, np.float32)
    if not np.isfinite(value).all():
      raise errors.CheckpointError(f"{shown(key)} holds NaN or inf")
    out[path] = value
  return traverse_util.unflatten_dict(out)


def load_torchvision(path: str | Path, arch: str | None = None) -> dict[str, Any]:
  """A torchvision Faster R-CNN `.pth` (state_dict, or a dict holding one) -> backbone params."""
  return convert_state_dict(_read_pth(path), arch)


def detectron2_to_torchvision_name(key: str) -> str:
  """One detectron2 state_dict key -> its torchvision name (non-backbone keys unchanged)."""
  if m := re.fullmatch(r"backbone\.bottom_up\.stem\.conv1\.weight", key):
    return "backbone.body.conv1.weight"
  if m := re.fullmatch(r"backbone\.bottom_up\.stem\.conv1\.norm\.(\w+)", key):
    return f"backbone.body.bn1.{m.group(1)}"
  if m := re.fullmatch(r"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.weight", key):
    return f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.conv{m.group(3)}.weight"
  if m := re.fullmatch(r"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)", key):
    return f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.bn{m.group(3)}.{m.group(4)}"
  if m := re.fullmatch(r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight", key):
    return f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.0.weight"
  if m := re.fullmatch(r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.(\w+)", key):
    return f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.1.{m.group(3)}"
  if m := re.fullmatch(r"backbone\.fpn_(lateral|output)(\d)\.(weight|bias)", key):
    kind = "inner_blocks" if m.group(1) == "lateral" else "layer_blocks"
    return f"backbone.fpn.{kind}.{int(m.group(2)) - 2}.0.{m.group(3)}"
  return key


def convert_detectron2(model: Mapping[str, Any], arch: str | None = None) -> dict[str, Any]:
  """detectron2-named state_dict (`pkl["model"]`) -> `resnet_fpn` params (see module doc)."""
  if not isinstance(model, Mapping):
    raise errors.CheckpointError(f"expected a detectron2 model dict, found {type(model).__name__}")
  renamed, origin = {}, {}
  for k, v in model.items():
    tv = detectron2_to_torchvision_name(k)
    if tv.startswith(PREFIX) and not k.startswith(("backbone.bottom_up.", "backbone.fpn_")):
      raise errors.CheckpointError(f"unexpected detectron2 backbone key {k}")
    if tv in renamed:
      raise errors.CheckpointError(f"detectron2 keys {origin[tv]} and {k} both map to {tv}")
    renamed[tv], origin[tv] = v, k
  if not any(k.startswith(PREFIX) for k in renamed):
    raise errors.CheckpointError(
        "no detectron2 backbone keys (backbone.bottom_up.*, backbone.fpn_*)")
  return convert_state_dict(renamed, arch, source_names=origin)


class _Unpickler(pickle.Unpickler):
  """Numpy arrays, dicts, lists and scalars only; every other global is refused."""

  ALLOWED = {
      ("collections", "OrderedDict"): OrderedDict,
      ("_codecs", "encode"): numpy_pickle.encode_latin1,
      ("numpy", "ndarray"): np.ndarray,
      ("numpy", "dtype"): numpy_pickle.Dtype,
  }

  def find_class(self, module: str, name: str) -> Any:
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
      return numpy_pickle.reconstruct
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
      return numpy_pickle.frombuffer
    if (module, name) in self.ALLOWED:
      return self.ALLOWED[(module, name)]
    raise errors.CheckpointError(
        f"refusing to unpickle global '{module}.{name}': a detectron2 model-zoo .pkl holds only "
        "numpy arrays and plain containers")


def _materialise(obj: Any) -> Any:
  if isinstance(obj, numpy_pickle.Array):
    return obj.value
  if isinstance(obj, dict):
    return type(obj)((k, _materialise(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  return obj


def load_detectron2_pkl(path: str | Path) -> dict[str, np.ndarray]:
  """The `"model"` dict of a detectron2 model-zoo `.pkl` (numpy arrays, detectron2 names)."""
  path = Path(path)
  if not path.is_file():
    raise errors.CheckpointError(f"checkpoint file not found: {path}")
  try:
    with open(path, "rb") as f:
      data = _materialise(_Unpickler(f, encoding="latin1").load())
  except errors.CheckpointError:
    raise
  except Exception as e:  # malformed pickle streams raise many different types
    raise errors.CheckpointError(f"cannot unpickle {path}: {e}") from e
  model = data.get("model") if isinstance(data, dict) else None
  if not isinstance(model, dict):
    raise errors.CheckpointError(f"{path} is not a detectron2 model-zoo pickle (no 'model' dict)")
  return model


def load_detectron2(path: str | Path, arch: str | None = None) -> dict[str, Any]:
  """A detectron2 model-zoo `.pkl` -> backbone params (see module doc for `stride_in_1x1`)."""
  return convert_detectron2(load_detectron2_pkl(path), arch)


# ------------------------------------------------------------------ RPN and box head (stage 2)
#
# torchvision                                   -> `faster_rcnn` params
# rpn.head.conv.0.0.{weight,bias} (or rpn.head.conv.{weight,bias}, torchvision < 0.13)
#                                               -> rpn/conv/{kernel (3, 3, 256, 256), bias}
# rpn.head.cls_logits.*  (A, 256, 1, 1)          -> rpn/cls_logits/*
# rpn.head.bbox_pred.*   (4A, 256, 1, 1)         -> rpn/bbox_pred/*
# roi_heads.box_head.fc6.* (1024, 256 * 7 * 7)   -> roi_heads/fc6/{kernel (7 * 7 * 256, 1024), bias}
#   torchvision flattens the pooled (C, 7, 7) map; the port flattens NHWC (7, 7, C): rows permuted
# roi_heads.box_head.fc7.*                       -> roi_heads/fc7/*
# roi_heads.box_predictor.cls_score.* (K, 1024)  -> roi_heads/cls_score/* (K = 91, background 0)
# roi_heads.box_predictor.bbox_pred.* (4K, 1024) -> roi_heads/bbox_pred/*
# detectron2: proposal_generator.rpn_head.{conv, objectness_logits, anchor_deltas},
#   roi_heads.box_head.{fc1, fc2}, roi_heads.box_predictor.{cls_score (81, background LAST),
#   bbox_pred (80 * 4)} are renamed to the torchvision names above.

_D2_HEADS = (
    (r"proposal_generator\.rpn_head\.conv\.", "rpn.head.conv."),
    (r"proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.cls_logits."),
    (r"proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.bbox_pred."),
    (r"roi_heads\.box_head\.fc1\.", "roi_heads.box_head.fc6."),
    (r"roi_heads\.box_head\.fc2\.", "roi_heads.box_head.fc7."),
)


def _get(state_dict: Mapping[str, Any], keys: list[str], shown) -> tuple[str, np.ndarray]:
  key = next((k for k in keys if k in state_dict), None)
  if key is None:
    raise errors.CheckpointError(f"state_dict lacks {keys[0]} (needed by the Faster R-CNN heads)")
  value = np.ascontiguousarray(_as_numpy(state_dict[key], shown(key)), np.float32)
  if not np.isfinite(value).all():
    raise errors.CheckpointError(f"{shown(key)} holds NaN or inf")
  return key, value


def _expect(key: str, value: np.ndarray, shape: tuple[int | None, ...], shown) -> None:
  if len(value.shape) != len(shape) or any(s is not None and s != v
                                           for s, v in zip(shape, value.shape)):
    want = tuple("*" if s is None else s for s in shape)
    raise errors.CheckpointError(f"{shown(key)} has shape {value.shape}, expected {want}")


def convert_heads(state_dict: Mapping[str, Any], source_names: Mapping[str, str] | None = None,
                  background_last: bool = False) -> dict[str, Any]:
  """torchvision-named RPN + box-head tensors -> {"rpn": ..., "roi_heads": ...} (float32 numpy).

  `background_last` (detectron2): cls_score has K = C + 1 rows with background last and bbox_pred
  4 C rows; otherwise (torchvision) background first and bbox_pred 4 K rows.
  """
  source_names = source_names or {}
  shown = lambda k: f"{k} (from {source_names[k]})" if k in source_names else k

  def conv(prefixes: list[str], shape_oi: tuple[int | None, int | None], k: int):
    kw, w = _get(state_dict, [p + "weight" for p in prefixes], shown)
    kb, b = _get(state_dict, [p + "bias" for p in prefixes], shown)
    _expect(kw, w, shape_oi + (k, k), shown)
    _expect(kb, b, (w.shape[0],), shown)
    return {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0)), "bias": b}

  def dense(prefix: str, shape: tuple[int | None, int | None]):
    kw, w = _get(state_dict, [prefix + "weight"], shown)
    kb, b = _get(state_dict, [prefix + "bias"], shown)
    _expect(kw, w, shape, shown)
    _expect(kb, b, (w.shape[0],), shown)
    return kw, w, b

  c = resnet_fpn.FPN_CHANNELS
  rpn = {"conv": conv(["rpn.head.conv.0.0.", "rpn.head.conv."], (c, c), 3),
         "cls_logits": conv(["rpn.head.cls_logits."], (None, c), 1)}
  a = rpn["cls_logits"]["bias"].shape[0]
  rpn["bbox_pred"] = conv(["rpn.head.bbox_pred."], (4 * a, c), 1)
  _, w6, b6 = dense("roi_heads.box_head.fc6.", (None, c * 49))
  rep = w6.shape[0]
  fc6 = w6.reshape(rep, c, 7, 7).transpose(2, 3, 1, 0).reshape(49 * c, rep)
  _, w7, b7 = dense("roi_heads.box_head.fc7.", (rep, rep))
  _, wc, bc = dense("roi_heads.box_predictor.cls_score.", (None, rep))
  k = wc.shape[0]
  nbox = 4 * (k - 1) if background_last else 4 * k
  _, wb, bb = dense("roi_heads.box_predictor.bbox_pred.", (nbox, rep))
  roi = {"fc6": {"kernel": np.ascontiguousarray(fc6), "bias": b6},
         "fc7": {"kernel": np.ascontiguousarray(w7.T), "bias": b7},
         "cls_score": {"kernel": np.ascontiguousarray(wc.T), "bias": bc},
         "bbox_pred": {"kernel": np.ascontiguousarray(wb.T), "bias": bb}}
  return {"rpn": rpn, "roi_heads": roi}


def convert_frcnn_state_dict(state_dict: Mapping[str, Any], arch: str | None = None,
                             background_last: bool = False) -> dict[str, Any]:
  """A torchvision FasterRCNN state_dict -> `faster_rcnn` params (backbone, rpn, roi_heads)."""
  return {"backbone": convert_state_dict(state_dict, arch),
          **convert_heads(state_dict, background_last=background_last)}


def _read_pth(path: str | Path) -> Mapping[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.CheckpointError(f"reading {path} needs torch (pip install torch)") from e
  path = Path(path)
  if not path.is_file():
    raise errors.CheckpointError(f"checkpoint file not found: {path}")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.CheckpointError(f"torch.load cannot read {path}: {e}") from e
  for k in ("model", "state_dict"):
    if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping):
      obj = obj[k]
  if not isinstance(obj, Mapping):
    raise errors.CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict")
  return {k: v.numpy() if hasattr(v, "numpy") else v for k, v in obj.items()}


def load_frcnn_torchvision(path: str | Path, arch: str | None = None) -> dict[str, Any]:
  """A torchvision Faster R-CNN `.pth` -> full `faster_rcnn` params."""
  return convert_frcnn_state_dict(_read_pth(path), arch)


def convert_frcnn_detectron2(model: Mapping[str, Any], arch: str | None = None
                             ) -> dict[str, Any]:
  """detectron2 GeneralizedRCNN state_dict -> full `faster_rcnn` params (81-way predictor)."""
  backbone = convert_detectron2(model, arch)
  renamed, origin = {}, {}
  for k, v in model.items():
    tv = k
    for pattern, repl in _D2_HEADS:
      tv = re.sub("^" + pattern, repl, tv)
    renamed[tv], origin[tv] = v, k
  return {"backbone": backbone,
          **convert_heads(renamed, source_names=origin, background_last=True)}


def load_frcnn_detectron2(path: str | Path, arch: str | None = None) -> dict[str, Any]:
  """A detectron2 model-zoo `.pkl` -> full `faster_rcnn` params."""
  return convert_frcnn_detectron2(load_detectron2_pkl(path), arch)
