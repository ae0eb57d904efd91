r"""MFIBA (Liu et al., ACM TOMM 2025): importance-based per-scale bit allocation on the base codec
(hssc_jax.codecs.mfiba).

  python train.py --config configs/mfiba.py --workdir runs/mfiba
  python train.py --config configs/mfiba.py:smoke --workdir /tmp/mfiba_smoke
  python train.py --config configs/mfiba.py:task=1 --workdir runs/mfiba_task    # task-aware MFIP
  python train.py --config configs/mfiba.py:exponent=0 --workdir runs/mfiba_fixed  # ablation
  python train.py --config configs/mfiba.py:cross --workdir runs/mfiba_cross \
    --config.init_from=runs/base_cross     # on the cross-scale base codec (configs/base.py:cross)

Arguments: smoke, context (channel-wise context entropy model), cross (MFIBA on the cross-scale
base codec, `hssc_jax.codecs.cross_scale.CrossScaleMFIBACodec`), coarse (with cross: on the
coarse-to-fine cross-scale codec, `configs/base.py:cross,coarse`), lmbda, steps, task (weight of the
detector-head distillation term, the task signal MFIP learns from), gain_range (per-image gains in
[1/G, G]), exponent (alpha: how strongly importance drives the gains; 0 = fixed per-scale gains).
The base codec's widths are those of configs/base.py, so the runs are comparable; the zoo's MFIBA
is the cross-scale one (`cross`).
"""

from configs import common

DEFAULTS = dict(smoke=False, context=False, cross=False, coarse=False, lmbda=0.0, steps=100_000,
                task=common.TASK_WEIGHT, gain_range=4.0, exponent=1.0)


def get_config(arg=None):
  arg = common.parse_arg(arg, **DEFAULTS)
  kwargs = dict(latent_channels=(64, 96, 128), hidden_channels=(64, 96, 128),
                hyper_channels=(48, 64, 64), stages=(2, 1, 1), transform="gdn",
                context_slices=4 if arg.context else 0, context_hidden=(96, 64),
                train_quantization="noise", mfip_channels=32, gain_range=arg.gain_range,
                gain_levels=255, importance_exponent=arg.exponent)
  if arg.smoke:
    kwargs.update(latent_channels=8, hidden_channels=8, hyper_channels=8, context_hidden=(8,),
                  mfip_channels=8)
  if arg.coarse and not arg.cross:
    raise ValueError("configs/mfiba.py: coarse (the coarse-to-fine order) needs cross")
  if arg.cross:
    kwargs.update(condition_hidden=8 if arg.smoke else 64)
  if arg.coarse:
    kwargs.update(coarse_to_fine=True)
  config = common.training_config("mfiba_cross" if arg.cross else "mfiba", kwargs, arg)
  config.lock()
  return config


def get_sweep():
  return common.sweep()
