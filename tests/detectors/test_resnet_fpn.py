"""ResNet/ResNeXt-FPN backbone: shapes, the torchvision reference (P2-P6), and the converters."""

import importlib.util
import pickle
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from hssc_jax import errors
from hssc_jax.detectors import resnet_fpn
from hssc_jax.detectors.convert import torchvision_frcnn as convert

REL_TOL = 1e-4  # max |jax - torch| / max |torch| per level, float32
LEVELS = {"p2": "0", "p3": "1", "p4": "2", "p5": "3", "p6": "pool"}  # ours -> torchvision FPN key
# torchvision parameter counts (Conv/BN weights, no fc, no BN statistics) + FPN 3,344,384.
# resnet50 25,557,032, resnet101 44,549,160, resnext101_32x8d 88,791,336 with fc 2,049,000.
PARAM_COUNTS = {"resnet50": 26_852_416, "resnet101": 45_844_544, "resnext101_32x8d": 90_086_720}


def _reference():
  torch = pytest.importorskip("torch")
  spec = importlib.util.spec_from_file_location(
      "torchvision_resnet_fpn_reference",
      Path(__file__).with_name("torchvision_resnet_fpn_reference.py"))
  ref = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ref)
  torch.set_num_threads(1)
  return torch, ref


def _rel_errors(torch_model, params, x_nchw, **kw):
  torch, _ = _reference()
  with torch.no_grad():
    expected = {k: v.numpy().transpose(0, 2, 3, 1)
                for k, v in torch_model(torch.from_numpy(x_nchw)).items()}
  got = resnet_fpn.backbone_features(params, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), **kw)
  got = dict(got, p6=resnet_fpn.p6_from_p5(got["p5"]))
  errs = {}
  for name, key in LEVELS.items():
    a, b = np.asarray(got[name]), expected[key]
    assert a.shape == b.shape, (name, a.shape, b.shape)
    assert np.abs(b).max() > 0.1, f"{name} collapsed: the comparison would be vacuous"
    errs[name] = float(np.abs(a - b).max() / np.abs(b).max())
  return errs


@pytest.fixture(scope="module")
def torch_resnet50():
  """Seeded random torchvision-layout ResNet-50-FPN and its converted params."""
  _, ref = _reference()
  model = ref.randomize(ref.FasterRCNNStub(), seed=0)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  return model, state, convert.convert_state_dict(state)


@pytest.mark.parametrize("hw", [(64, 96), (72, 100)])
def test_matches_torchvision_reference(torch_resnet50, hw):
  """P2..P6 equal the torch reference; 72x100 is no multiple of 32 (non-2x nearest upsampling)."""
  model, _, params = torch_resnet50
  x = np.random.default_rng(1).standard_normal((1, 3) + hw).astype(np.float32)
  errs = _rel_errors(model, params, x)
  assert max(errs.values()) < REL_TOL, errs


def test_matches_reference_on_a_real_image(torch_resnet50, shared):
  """One COCO image resized to 128x192, ImageNet-normalised as torchvision's transform does."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = shared("data", "coco-mini", "val2017")
  path = sorted(folder.glob("*.jpg"))[0]
  img = np.asarray(Image.open(path).convert("RGB").resize((192, 128), Image.BILINEAR), np.float32)
  x = (img / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  model, _, params = torch_resnet50
  errs = _rel_errors(model, params, x.transpose(2, 0, 1)[None].astype(np.float32))
  assert max(errs.values()) < REL_TOL, errs


def test_stride_in_1x1_matches_reference():
  """detectron2's MSRA blocks (stride in the first 1x1 conv), through the detectron2 names."""
  _, ref = _reference()
  model = ref.randomize(ref.FasterRCNNStub(stride_in_1x1=True), seed=3)
  d2 = {_d2_name(k): v.numpy() for k, v in model.state_dict().items()}
  params = convert.convert_detectron2(d2)
  x = np.random.default_rng(2).standard_normal((1, 3, 64, 96)).astype(np.float32)
  errs = _rel_errors(model, params, x, stride_in_1x1=True)
  assert max(errs.values()) < REL_TOL, errs


def test_frozen_batchnorm_formula_and_eps():
  """Against torchvision's FrozenBatchNorm2d with variances down to 1e-7, where eps dominates."""
  torch, ref = _reference()
  rng = np.random.default_rng(0)
  c = 16
  stats = dict(weight=rng.uniform(0.5, 2, c), bias=rng.normal(size=c),
               running_mean=rng.normal(size=c), running_var=np.geomspace(1e-7, 4, c))
  bn = ref.FrozenBatchNorm2d(c)
  for k, v in stats.items():
    getattr(bn, k).copy_(torch.tensor(v, dtype=torch.float32))
  x = rng.normal(size=(1, c, 3, 5)).astype(np.float32)
  expected = bn(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  variables = {"params": {"scale": stats["weight"], "bias": stats["bias"],
                          "mean": stats["running_mean"], "var": stats["running_var"]}}
  variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)
  got = resnet_fpn.FrozenBatchNorm().apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6)
  no_eps = resnet_fpn.FrozenBatchNorm(eps=0.0).apply(variables,
                                                     jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert np.abs(np.asarray(no_eps) - expected).max() > 1.0


def test_load_torchvision_pth(torch_resnet50, tmp_path):
  torch, _ = _reference()
  model, _, params = torch_resnet50
  path = tmp_path / "frcnn.pth"
  torch.save({"model": model.state_dict()}, path)
  loaded = convert.load_torchvision(path)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(errors.CheckpointError, match="not found"):
    convert.load_torchvision(tmp_path / "missing.pth")


# ---- without torch ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(resnet_fpn.ARCHS))
def test_shapes_and_strides(arch):
  """P2..P6 have strides 4..64 (ceil division) and 256 channels; parameter counts as torchvision."""
  params = resnet_fpn.abstract_params(arch)
  flat = traverse_util.flatten_dict(params)
  assert sum(int(np.prod(v.shape)) for k, v in flat.items()
             if k[-1] not in ("mean", "var")) == PARAM_COUNTS[arch]
  assert resnet_fpn.arch_of(params) == arch
  for h, w in ((64, 96), (72, 100))[:2 if arch == "resnet50" else 1]:
    feats = jax.eval_shape(resnet_fpn.backbone_features, params, jnp.zeros((2, h, w, 3)))
    feats = dict(feats, p6=jax.eval_shape(resnet_fpn.p6_from_p5, feats["p5"]))
    for name, stride in resnet_fpn.STRIDES.items():
      assert feats[name].shape == (2, -(-h // stride), -(-w // stride), 256), (name, h, w)
  grouped = flat[("body", "layer1_0", "conv2", "kernel")].shape
  assert grouped == {"resnet50": (3, 3, 64, 64), "resnet101": (3, 3, 64, 64),
                     "resnext101_32x8d": (3, 3, 8, 256)}[arch]


def test_bad_images():
  params = resnet_fpn.abstract_params("resnet50")
  with pytest.raises(errors.InvalidInputError, match=r"\(N, H, W, 3\)"):
    jax.eval_shape(resnet_fpn.backbone_features, params, jnp.zeros((1, 3, 64, 64)))
  with pytest.raises(errors.InvalidInputError, match="floating"):
    jax.eval_shape(resnet_fpn.backbone_features, params, jnp.zeros((1, 64, 64, 3), jnp.uint8))
  with pytest.raises(errors.ConfigError, match="unknown backbone"):
    resnet_fpn.abstract_params("resnet18")


def _tv_name(path):
  """Flax params path -> torchvision key, written independently of the converter."""
  *mods, leaf = path
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
          "var": "running_var"}[leaf]
  names = []
  for m in mods:
    names.append(re.sub(r"_(\d+)$", r".\1", m))
  if mods[0] == "fpn":
    names.append("0")
  return "backbone." + ".".join(names + [leaf])


def _d2_name(key):
  """torchvision key -> detectron2 key, written independently of the converter."""
  rules = [
      (r"backbone\.body\.conv1\.weight", "backbone.bottom_up.stem.conv1.weight"),
      (r"backbone\.body\.bn1\.(\w+)", r"backbone.bottom_up.stem.conv1.norm.\1"),
      (r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight",
       lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
      (r"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)",
       lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
      (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight",
       lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
      (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)",
       lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
      (r"backbone\.fpn\.inner_blocks\.(\d)\.0\.(\w+)",
       lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}.{m[2]}"),
      (r"backbone\.fpn\.layer_blocks\.(\d)\.0\.(\w+)",
       lambda m: f"backbone.fpn_output{int(m[1]) + 2}.{m[2]}"),
  ]
  for pattern, repl in rules:
    if re.fullmatch(pattern, key):
      return re.sub(pattern, repl, key)
  raise AssertionError(key)


@pytest.fixture(scope="module")
def synthetic():
  """A random torchvision-named ResNet-50-FPN state_dict (OIHW) and the params it must give."""
  rng = np.random.default_rng(0)
  params, state = {}, {}
  for path, spec in traverse_util.flatten_dict(resnet_fpn.abstract_params("resnet50")).items():
    value = rng.standard_normal(spec.shape, np.float32)
    params[path] = value
    state[_tv_name(path)] = value.transpose(3, 2, 0, 1) if path[-1] == "kernel" else value
  return state, params


def test_converter_round_trip_and_old_fpn_names(synthetic):
  state, params = synthetic
  extra = {"rpn.head.conv.0.0.weight": np.zeros((1,)), "backbone.body.bn1.num_batches_tracked":
           np.zeros((), np.int64)}
  out = traverse_util.flatten_dict(convert.convert_state_dict({**state, **extra}))
  assert out.keys() == params.keys()
  for k, v in params.items():
    np.testing.assert_array_equal(out[k], v)
  old = {re.sub(r"(inner|layer)_blocks\.(\d)\.0\.", r"\1_blocks.\2.", k): v for k, v in state.items()}
  assert "backbone.fpn.inner_blocks.0.weight" in old
  out_old = traverse_util.flatten_dict(convert.convert_state_dict(old, arch="resnet50"))
  np.testing.assert_array_equal(out_old[("fpn", "inner_blocks_0", "kernel")],
                                params[("fpn", "inner_blocks_0", "kernel")])
  body_only = {k[len("backbone."):]: v for k, v in state.items()}  # a BackboneWithFPN state_dict
  out_body = traverse_util.flatten_dict(convert.convert_state_dict(body_only))
  np.testing.assert_array_equal(out_body[("body", "conv1", "kernel")],
                                params[("body", "conv1", "kernel")])


def test_converter_errors(synthetic):
  state, _ = synthetic
  missing = dict(state)
  del missing["backbone.body.layer2.0.bn2.running_var"]
  with pytest.raises(errors.CheckpointError, match=r"lacks backbone\.body\.layer2\.0\.bn2\.running_var"):
    convert.convert_state_dict(missing, arch="resnet50")
  wrong = dict(state, **{"backbone.fpn.layer_blocks.1.0.weight": np.zeros((256, 256, 1, 1))})
  with pytest.raises(errors.CheckpointError, match=r"layer_blocks\.1\.0\.weight has shape"):
    convert.convert_state_dict(wrong)
  flat = dict(state, **{"backbone.body.conv1.weight": np.zeros((64, 3, 49))})
  with pytest.raises(errors.CheckpointError, match="4-d OIHW"):
    convert.convert_state_dict(flat)
  extra = dict(state, **{"backbone.body.layer1.0.bn4.weight": np.zeros((4,))})
  with pytest.raises(errors.CheckpointError, match="does not use.*bn4"):
    convert.convert_state_dict(extra)
  nan = dict(state, **{"backbone.body.bn1.bias": np.full((64,), np.nan, np.float32)})
  with pytest.raises(errors.CheckpointError, match="NaN"):
    convert.convert_state_dict(nan)
  with pytest.raises(errors.CheckpointError, match=r"layer1\.0\.conv2\.weight is missing"):
    convert.convert_state_dict({"backbone.body.conv1.weight": np.zeros((64, 3, 7, 7))})
  with pytest.raises(errors.CheckpointError, match="expected a state_dict"):
    convert.convert_state_dict([1, 2])


def test_infer_arch():
  def keys(blocks, width, groups):
    sd = {f"backbone.body.layer{s + 1}.{j}.conv1.weight": None
          for s, n in enumerate(blocks) for j in range(n)}
    sd["backbone.body.layer1.0.conv2.weight"] = np.zeros((width, width // groups, 3, 3))
    return sd
  assert convert.infer_arch(keys((3, 4, 6, 3), 64, 1)) == "resnet50"
  assert convert.infer_arch(keys((3, 4, 23, 3), 64, 1)) == "resnet101"
  assert convert.infer_arch(keys((3, 4, 23, 3), 256, 32)) == "resnext101_32x8d"
  with pytest.raises(errors.CheckpointError, match="none of"):
    convert.infer_arch(keys((2, 2, 2, 2), 64, 1))


@pytest.mark.parametrize("protocol", [2, 5])
def test_detectron2_pkl(synthetic, tmp_path, protocol):
  """A model-zoo-style pickle ({"model": {d2 name: array}, "__author__": ...}) converts exactly."""
  state, params = synthetic
  model = {_d2_name(k): v for k, v in state.items()}
  model["proposal_generator.rpn_head.conv.weight"] = np.zeros((2, 2, 3, 3), np.float32)
  model["pixel_mean"] = np.array([103.53, 116.28, 123.675]).reshape(3, 1, 1)
  path = tmp_path / "model_final.pkl"
  path.write_bytes(pickle.dumps({"model": model, "__author__": "Detectron2 Model Zoo"}, protocol))
  out = traverse_util.flatten_dict(convert.load_detectron2(path))
  assert out.keys() == params.keys()
  for k, v in params.items():
    np.testing.assert_array_equal(out[k], v)

  bad = dict(model, **{"backbone.bottom_up.res3.0.conv2.weight": np.zeros((128, 128, 1, 1))})
  with pytest.raises(errors.CheckpointError, match=r"from backbone\.bottom_up\.res3\.0\.conv2"):
    convert.convert_detectron2(bad)
  missing = dict(model)
  del missing["backbone.fpn_lateral4.bias"]
  with pytest.raises(errors.CheckpointError, match=r"lacks backbone\.fpn\.inner_blocks\.2\.0\.bias"):
    convert.convert_detectron2(missing)


class _Evil:
  def __reduce__(self):
    import os  # pylint: disable=g-import-not-at-top
    return (os.getcwd, ())


def test_detectron2_pkl_refuses_code_and_junk(tmp_path):
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"model": {"x": _Evil()}}))
  with pytest.raises(errors.CheckpointError, match="refusing to unpickle global"):
    convert.load_detectron2_pkl(path)
  path.write_bytes(pickle.dumps({"weights": {}}))
  with pytest.raises(errors.CheckpointError, match="no 'model' dict"):
    convert.load_detectron2_pkl(path)
  path.write_bytes(b"not a pickle")
  with pytest.raises(errors.CheckpointError, match="cannot unpickle"):
    convert.load_detectron2_pkl(path)
  with pytest.raises(errors.CheckpointError, match="no detectron2 backbone keys"):
    convert.convert_detectron2({"roi_heads.box_predictor.cls_score.weight": np.zeros((2, 2))})
