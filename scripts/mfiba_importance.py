r"""MFIBA's importance labels, and MFIP (M1) trained on them instead of only through (M6).

In the paper, MFIP learns from labels: for each training image, scale and quality, the task
accuracy lost when only that scale is compressed; per image and quality these losses are min-max
normalised over the scales, summed over the qualities and normalised to sum 1 per image (Liu et
al., ACM TOMM 2025, Sec. III: importance varies with scale, object size and image; the labels are
what the authors' code derives from single-image accuracies). The zoo's MFIP was learned without
labels, through the importance-weighted distortion (M6) alone, and its importance varies only 2-3%
between images (README, stop 38). Here the accuracy loss is the detector-head distillation that
training minimises (`training.loss.task_distortion`, per image), not a single-image mAP: on a few
hundred images a one-image mAP moves in steps of whole detections.

  python scripts/mfiba_importance.py --workdir runs/mfiba_imp          # labels, MFIP, zoo file
  python scripts/mfiba_alpha.py --source runs/mfiba_imp/zoo/mfiba.hsz ...   # then choose alpha

Labels come from one set of train images (default coco-tiny), MFIP is fitted to them by
cross-entropy (its output, S x softmax, against the label distribution), and the step kept is the
one with the lowest cross-entropy on other train images (default coco-mini train2017, the images
`mfiba_alpha.py` chooses alpha on); the evaluation images are never used. The bias of MFIP's last
layer is then moved so its mean log importance over the label images equals the source model's:
the average split across scales, which the codec's gain offsets were trained with, stays, and
only how the split varies between images changes. The model is written to <workdir>/zoo/mfiba.hsz
(under the name in the source's header; its codec, decoder and every other parameter unchanged).
"""

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.eval import zoo as zoo_config  # pylint: disable=wrong-import-position
from hssc_jax import detector_eval  # pylint: disable=wrong-import-position
from hssc_jax import zoo  # pylint: disable=wrong-import-position
from hssc_jax.codecs import base  # pylint: disable=wrong-import-position
from hssc_jax.codecs import mfiba  # pylint: disable=wrong-import-position
from hssc_jax.detectors import factory  # pylint: disable=wrong-import-position
from hssc_jax.training import loss as loss_lib  # pylint: disable=wrong-import-position

SHARED = ROOT.parent / "shared" / "data"


def features(root: str, split: str):
  """Part-1 features (raw, per batch) of every image of a COCO-format folder, letterboxed as the
  zoo evaluation does, with the detector."""
  return detector_eval.split_features(zoo_config.get_config(
      f"models=base,split={split},root={root},anchors=false,image_anchor=false"))


def task_losses(loaded, feats, heads, qualities) -> np.ndarray:
  """(N, S, Q): per image, the task distortion with only scale s decoded at quality q (the others
  uncompressed), at the gains MFIP chooses (M4)."""
  codec, params = loaded.codec, loaded.params
  out = np.zeros((sum(len(next(iter(f.values()))) for f in feats), len(codec.scales),
                  len(qualities)))
  per_image = jax.jit(jax.vmap(lambda a, b: loss_lib.task_distortion(a[None], b[None])))
  models = [codec.clone(quality=q, allocation_models=None) if codec.qualities else codec
            for q in qualities]
  row = 0
  for f in feats:  # the reference head outputs and normalisation once per batch, not per quality
    n = len(next(iter(f.values())))
    norm = codec.normalize(f)
    ref = heads(f)
    for j, model in enumerate(models):
      _, idx = base.compiled(model, "allocation_indexes")(params, norm)
      hat, _ = base.compiled(model, "forward_with_indexes")(params, norm, idx)
      for i, s in enumerate(codec.scales):
        head = heads(codec.denormalize(dict(norm, **{s: hat[s]})))
        out[row:row + n, i, j] = np.asarray(per_image(ref, head))
    row += n
  return out


def importance_labels(losses: np.ndarray) -> np.ndarray:
  """(N, S, Q) task losses -> (N, S) importance summing to S per image: per image and quality
  min-max normalised over the scales (all equal: 1 each), summed over the qualities."""
  lo, hi = losses.min(axis=1, keepdims=True), losses.max(axis=1, keepdims=True)
  span = hi - lo
  norm = np.where(span > 0, (losses - lo) / np.where(span > 0, span, 1.0), 1.0)
  w = norm.sum(axis=2)
  return losses.shape[1] * w / w.sum(axis=1, keepdims=True)


def stack(feats, codec) -> list[np.ndarray]:
  """The normalised features of all batches, one array per scale (MFIP's input)."""
  return [np.concatenate([np.asarray(codec.normalize(f)[s]) for f in feats]) for s in codec.scales]


def fit_mfip(init, channels, x_fit, w_fit, x_held, w_held, steps, lr, weight_decay):
  """Cross-entropy fit of MFIP to label distributions w / S; returns (params, log) with the
  params of the step with the lowest held-out cross-entropy."""
  net = mfiba.MFIP(len(x_fit), channels)
  s = float(len(x_fit))

  def ce(p, x, w):
    log_p = net.apply({"params": p}, x) - jnp.log(s)
    return -jnp.mean(jnp.sum(w / s * log_p, axis=-1))

  opt = optax.adamw(lr, weight_decay=weight_decay)
  state = opt.init(init)

  @jax.jit
  def step(p, st):
    value, g = jax.value_and_grad(ce)(p, x_fit, w_fit)
    upd, st = opt.update(g, st, p)
    return optax.apply_updates(p, upd), st, value

  held = jax.jit(ce)
  params, best = init, (float(held(init, x_held, w_held)), 0, init)
  log = [(0, float(ce(init, x_fit, w_fit)), best[0])]
  for k in range(1, steps + 1):
    params, state, value = step(params, state)
    if k % 10 == 0 or k == steps:
      h = float(held(params, x_held, w_held))
      log.append((k, float(value), h))
      if h < best[0]:
        best = (h, k, params)
  return best[2], log, best[1]


def centred(params, channels, x, target_mean, rounds=4):
  """MFIP params with the last layer's bias moved so the mean log importance over `x` is
  `target_mean` (S,) up to a constant common to all scales: sum_s w_s = S per input fixes it, and
  the more w varies between inputs the lower it is (Jensen)."""
  net = mfiba.MFIP(len(x), channels)
  apply = jax.jit(lambda p: net.apply({"params": p}, x))
  for _ in range(rounds):
    shift = target_mean - np.asarray(apply(params)).mean(axis=0)
    params = jax.tree.map(lambda a: a, params)
    params["Dense_1"]["bias"] = params["Dense_1"]["bias"] + jnp.asarray(shift, jnp.float32)
  return params


def spread(log_w: np.ndarray) -> str:
  w = np.exp(log_w)
  return ", ".join(f"{w[:, i].min():.3f}-{w[:, i].max():.3f} (std of log {log_w[:, i].std():.3f})"
                   for i in range(w.shape[1]))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--source", default=str(zoo.path_of("mfiba")), help="an MFIBA zoo file")
  p.add_argument("--workdir", default="runs/mfiba_imp")
  p.add_argument("--label-root", default=str(SHARED / "coco-tiny"))
  p.add_argument("--heldout-root", default=str(SHARED / "coco-mini"))
  p.add_argument("--split", default="train2017")
  p.add_argument("--qualities", default="0,1,2,3,4,5")
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--weight-decay", type=float, default=1e-2)
  args = p.parse_args(argv)
  work = Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  src = Path(args.source)
  loaded = zoo.load(src.stem, 0, src.parent)
  codec = loaded.codec
  if not isinstance(codec, mfiba.MFIBACodec):
    raise SystemExit(f"{src} does not hold an MFIBA model")
  qualities = [int(q) for q in args.qualities.split(",")]
  sets = {}
  for key, root in (("label", args.label_root), ("heldout", args.heldout_root)):
    cache = work / f"labels_{key}.npz"  # reused only for the same model, images and qualities
    made_by = json.dumps([loaded.info["fingerprints"], str(root), args.split, qualities])
    feats, det, det_vars = features(root, args.split)
    stored = np.load(cache) if cache.exists() else {}
    if "made_by" in stored and str(stored["made_by"]) == made_by:
      losses = stored["losses"]
    else:
      heads = jax.jit(lambda f, d=det, v=det_vars: factory.task_outputs(d, v, f))
      losses = task_losses(loaded, feats, heads, qualities)
      np.savez(cache, losses=losses, made_by=np.array(made_by))
    sets[key] = (stack(feats, codec), importance_labels(losses))
    print(f"{key}: {losses.shape[0]} images; label importance per scale {codec.scales}: "
          f"{spread(np.log(np.maximum(sets[key][1], 1e-3)))}", flush=True)
  channels = int(codec.mfip_channels)
  net = mfiba.MFIP(len(codec.scales), channels)
  init = loaded.params["mfip"]
  (x_fit, w_fit), (x_held, w_held) = sets["label"], sets["heldout"]
  before = {k: np.asarray(net.apply({"params": init}, x)) for k, (x, _) in sets.items()}
  fitted, log, best_step = fit_mfip(init, channels, x_fit, w_fit, x_held, w_held, args.steps,
                                    args.lr, args.weight_decay)
  const = np.log(w_fit.mean(axis=0) / len(codec.scales))  # the best constant prediction
  const_ce = float(-np.mean(np.sum(w_held / len(codec.scales) * const, axis=-1)))
  print(f"held-out cross-entropy: source MFIP {log[0][2]:.4f}, constant (mean label) "
        f"{const_ce:.4f}, fitted {min(h for _, _, h in log):.4f} at step {best_step}")
  new = centred(fitted, channels, x_fit, before["label"].mean(axis=0))
  after = {k: np.asarray(net.apply({"params": new}, x)) for k, (x, _) in sets.items()}
  print("mean log importance over the label images: source "
        f"{np.round(before['label'].mean(axis=0), 3)}, fitted {np.round(after['label'].mean(axis=0), 3)}")
  for k in sets:
    corr = [float(np.corrcoef(after[k][:, i], np.log(np.maximum(sets[k][1][:, i], 1e-3)))[0, 1])
            for i in range(len(codec.scales))]
    print(f"{k}: source MFIP {spread(before[k])}\n{k}: fitted MFIP {spread(after[k])}; "
          f"correlation with the labels' log {', '.join(f'{c:.2f}' for c in corr)}")
  params = dict(loaded.params, mfip=new)
  out = zoo.resave(src, work / "zoo", params=params)  # under the name in its header
  (work / "fit.json").write_text(json.dumps({"log": log, "best_step": best_step,
                                             "constant_ce": const_ce}, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
