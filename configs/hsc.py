r"""HSC (Li et al., arXiv:2502.16799, 2025): hierarchical core + feature latents (hssc_jax.codecs.hsc).

  python train.py --config configs/hsc.py --workdir runs/hsc
  python train.py --config configs/hsc.py:smoke --workdir /tmp/hsc_smoke
  python train.py --config configs/hsc.py:context=false --workdir runs/hsc_no_context   # ablation
  python train.py --config configs/hsc.py:refine,refine_from=3,refine_scales=p5,steps=600 \
    --workdir runs/hsc_refine --config.init_from=zoo:hsc \
    --config.optim.trainable="^refiners_|^refine_out_" \
    --config.loss.quality_weights="(0, 0, 0, 1, 1, 1, 1)" \
    --config.loss.lmbdas="(0.015, 0.05, 0.15, 0.5, 1.5, 4.5, 13.5)"
    # P5's error coded from quality 3 up, trained alone on the frozen zoo HSC (the refinement's
    # top two lambdas 4.5 and 13.5, the model's 12 and 96); measured at stop 64, not shipped
    # (docs/zoo_history.md)

The refinement (`refine`, not a step of the paper: hssc_jax.codecs.refinement) codes what the
two latents miss of a scale with a hyperprior of its own: from quality 3 up the zoo's HSC adds
rate but no mAP (README, "The model zoo"), and P5 left uncompressed lifts its ceiling most
(README, "Limits").

Arguments: smoke, context (channel-wise autoregression in both levels' context models; false: one
slice, the entropy parameters come from the hyper inputs alone), refine, refine_from,
refine_scales (e.g. p4+p5), lmbda, steps, task.
"""

from configs import common

DEFAULTS = dict(smoke=False, context=True, lmbda=0.0, steps=100_000, task=common.TASK_WEIGHT,
                **common.REFINE_DEFAULTS)


def get_config(arg=None):
  arg = common.parse_arg(arg, **DEFAULTS)
  kwargs = dict(core_channels=96, latent_channels=128, hidden_channels=128, hyper_channels=64,
                core_stages=1, feature_stages=1, hyper_stages=2, fusion_scale="", transform="gdn",
                ungained_core_synthesis=True,
                context_slices=4 if arg.context else 1, context_hidden=(96, 64),
                train_quantization="noise")
  kwargs.update(common.refinement_kwargs(arg, "hsc"))
  if arg.smoke:
    kwargs.update(core_channels=8, latent_channels=8, hidden_channels=8, hyper_channels=8,
                  context_hidden=(8,), refine_latent_channels=4)
  config = common.training_config("hsc", kwargs, arg)
  config.lock()
  return config


def get_sweep():
  return common.sweep()
