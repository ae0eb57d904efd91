"""Training of ShapesNet on freshly generated shapes (how the shipped checkpoint was made).

  python -m hssc_jax.detectors.shapes_net_train --steps 4000 --out hssc_jax/assets/shapes_net.msgpack

Images and boxes come straight from `hssc_jax.data.synthetic.make_image` (a new random batch every
step, so there is no overfitting to a fixed set); the loss is `shapes_net.loss` (CenterNet).
"""

import argparse
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hssc_jax.data import synthetic
from hssc_jax.detectors import shapes_net

ASSET = Path(__file__).resolve().parents[1] / "assets" / "shapes_net.msgpack"


def make_batch(rng: np.random.Generator, n: int, det: shapes_net.ShapesNet):
  images, heats, regs, masks = [], [], [], []
  for _ in range(n):
    img, objs = synthetic.make_image(rng, det.img_size, det.img_size, 4)
    boxes = np.array([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (o["bbox"] for o in objs)],
                     np.float32).reshape(-1, 4)
    labels = np.array([o["category"] for o in objs], np.int64)
    t = shapes_net.targets(boxes, labels, det.num_classes, det.img_size)
    images.append(img.astype(np.float32) / 255.0)
    heats.append(t["heat"])
    regs.append(t["reg"])
    masks.append(t["mask"])
  return (np.stack(images), {"heat": np.stack(heats), "reg": np.stack(regs),
                             "mask": np.stack(masks)})


def train(steps: int = 4000, batch: int = 16, lr: float = 2e-3, seed: int = 0, log_every: int = 200):
  det = shapes_net.ShapesNet()
  variables = det.init(jax.random.PRNGKey(seed))
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0, lr, 200, steps, lr * 0.02), weight_decay=1e-4)
  opt = tx.init(variables)

  @jax.jit
  def step(variables, opt, images, t):
    def loss_fn(v):
      return shapes_net.loss(det.module.apply(v, images), t, det.num_classes) / images.shape[0]
    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, opt = tx.update(grads, opt, variables)
    return optax.apply_updates(variables, updates), opt, loss

  rng = np.random.default_rng(seed)
  t0 = time.time()
  for i in range(steps):
    images, t = make_batch(rng, batch, det)
    variables, opt, loss = step(variables, opt, images, t)
    if (i + 1) % log_every == 0:
      print(f"step {i + 1}: loss {float(loss):.3f} ({time.time() - t0:.0f}s)", flush=True)
  return det, variables


def save(variables, path: Path = ASSET) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(flax.serialization.to_bytes(jax.device_get(variables)))


def load(path: Path = ASSET):
  det = shapes_net.ShapesNet()
  template = det.init(jax.random.PRNGKey(0))
  return det, flax.serialization.from_bytes(template, Path(path).read_bytes())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=4000)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--out", default=str(ASSET))
  args = parser.parse_args()
  _, variables = train(args.steps, args.batch)
  save(variables, Path(args.out))
  print(f"saved {args.out}")


if __name__ == "__main__":
  main()
