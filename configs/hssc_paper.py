r"""HSSC in its paper's form: SFTNet + 10-bit quantisation + channel reordering + tiling + HEVC
(hssc_jax.codecs.hssc_paper). One SFTNet serves the QP sweep: quality q trains with the proxy of
QP `qps[q]` (noise at that QP's coding error, an intra-rate proxy) at one lambda.

  python train.py --config configs/hssc_paper.py --workdir runs/hssc_paper
  python train.py --config configs/hssc_paper.py:smoke --workdir /tmp/hssc_paper_smoke
  python train.py --config configs/hssc_paper.py:steps=2000 --workdir runs/hssc_paper \
    --config.init_from=zoo:hssc                      # SFTNet warm-started from the learned HSSC

Arguments: smoke, no_inter, no_adaptive (the SFTNet ablations of configs/hssc.py), reorder
("none", "global", "global+local"), per_image (send a per-image order instead of the fixed one),
lmbda (one lambda for every QP), steps, task. After training, the 10-bit range and the fixed
channel order are fitted on training compacts (`post_training_constants`).
"""

from configs import common

QPS = (47, 42, 37, 32, 27, 22)  # one per quality; quality 0 = lowest rate
DEFAULTS = dict(smoke=False, no_inter=False, no_adaptive=False, reorder="global+local",
                per_image=False, lmbda=1.5, steps=100_000, task=common.TASK_WEIGHT)


def get_config(arg=None):
  arg = common.parse_arg(arg, **DEFAULTS)
  kwargs = dict(compact_channels=192, transform_channels=128, inter_scale=not arg.no_inter,
                adaptive_reconstruction=not arg.no_adaptive, spatial_attention=True,
                attention_channels=32, attention_pool=2, qps=QPS, inner="hevc",
                reorder=arg.reorder, reorder_fit="per_image" if arg.per_image else "fixed",
                train_quantization="noise")
  if arg.smoke:
    kwargs.update(compact_channels=8, transform_channels=8, attention_channels=4)
  config = common.training_config("hssc_paper", kwargs, arg)
  with config.unlocked():
    config.loss.lmbdas = (arg.lmbda,) * len(QPS)  # the QP, not lambda, sets each quality's rate
    config.calibrate_batches = 2 if arg.smoke else 16
  config.lock()
  return config


def get_sweep():
  return [{}]
