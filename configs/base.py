r"""The base learned codec: a mean-scale hyperprior per pyramid scale (hssc_jax.codecs.hyperprior).

  python train.py --config configs/base.py --workdir runs/base            # YOLOv5n, shared COCO
  python train.py --config configs/base.py:smoke --workdir /tmp/smoke      # seconds, no shared data
  python train.py --config configs/base.py:lmbda=8,steps=20000 --workdir runs/base_l8
  python train.py --config configs/base.py:context --workdir runs/base_ctx  # channel-wise context
  python train.py --config configs/base.py:cross --workdir runs/base_cross  # cross-scale conditioning
  python train.py --config configs/base.py:cross,coarse --workdir runs/base_c2f  # ... coarse to fine
  python train.py --config configs/base.py:cross,wide --workdir runs/base_wide \
    --config.init_from=zoo:base --config.init_widen=True  # the zoo's base codec, widened

The zoo's base codec is the cross-scale one (`cross`); the default is the per-scale codec.

Arguments: smoke, context (channel-wise context entropy model), cross (each scale conditioned on the
finer one, `hssc_jax.codecs.cross_scale`), coarse (with cross: each scale conditioned on the coarser
one instead, P5 coded first), wide (latents of 192, 256, 384 channels for P3, P4, P5 instead of 64,
96, 128, and 128 hidden channels in P3's transforms), blocks (residual blocks on the latent grid of
P4's and P5's transforms, which are otherwise single linear convolutions), lmbda, steps, task
(weight of the detector-head distillation term). Any field can be overridden on the command line,
e.g. `--config.data.batch_size=16`. `get_sweep()` lists the lambda sweep for an RD curve.
"""

from configs import common

DEFAULTS = dict(smoke=False, context=False, cross=False, coarse=False, wide=False, blocks=0,
                lmbda=0.0, steps=100_000, task=common.TASK_WEIGHT)


def get_config(arg=None):
  arg = common.parse_arg(arg, **DEFAULTS)
  kwargs = dict(latent_channels=(64, 96, 128), hidden_channels=(64, 96, 128),
                hyper_channels=(48, 64, 64), stages=(2, 1, 1), transform="gdn",
                context_slices=4 if arg.context else 0, context_hidden=(96, 64),
                train_quantization="noise")
  if arg.wide:  # latents wide enough for near-lossless features (scripts/transform_ceiling.py)
    kwargs.update(latent_channels=(192, 256, 384), hidden_channels=(128, 96, 128))
  if arg.smoke:
    kwargs.update(latent_channels=8, hidden_channels=8, hyper_channels=8, context_hidden=(8,))
  if arg.blocks:
    kwargs.update(latent_blocks=(0, arg.blocks, arg.blocks))
  if arg.coarse and not arg.cross:
    raise ValueError("configs/base.py: coarse (the coarse-to-fine order) needs cross")
  if arg.cross:
    kwargs.update(condition_hidden=8 if arg.smoke else 64)
  if arg.coarse:
    kwargs.update(coarse_to_fine=True)
  config = common.training_config("cross_scale" if arg.cross else "hyperprior", kwargs, arg)
  config.lock()
  return config


def get_sweep():
  return common.sweep()
