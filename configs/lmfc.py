r"""L-MFC (Liu et al., ICASSP 2023): BFCNet codes P4+P5, MFCNet predicts P3 and a small hyperprior
codes what the prediction misses (hssc_jax.codecs.lmfc).

  python train.py --config configs/lmfc.py --workdir runs/lmfc
  python train.py --config configs/lmfc.py:smoke --workdir /tmp/smoke
  python train.py --config configs/lmfc.py:residual=false --workdir runs/lmfc_pred  # P3 never coded
  python train.py --config configs/lmfc.py:refine --workdir runs/lmfc_refine \
    --config.init_from=zoo:lmfc  # the zoo's L-MFC with P5's error coded beside the fused latent

The residual is on by default: the pure prediction caps P3's error whatever the rate (the zoo's
1,000-step model topped out at 0.12 mAP on coco-mini; its 1,500-step residual fine-tune reached
0.17 at about the same rate, README "The model zoo").

The refinement (`refine`) codes what the fused latent misses of P5 with a hyperprior of its own
(`refine_scales`): on pseudo-labelled Kodak the L-MFC before stop 62 with P5 left uncompressed
reaches 0.89-0.92 mAP where its fused latent left unquantized gives 0.48 (README, Kodak).
`refine_from` = q codes it only from quality q up, so the low qualities cost what they did
without it.

Arguments: smoke, residual, coded (how many coarse scales BFCNet codes: 1 or 2), refine,
refine_from, refine_scales (e.g. p4+p5: the coded scales only), lmbda, steps, task.
"""

from configs import common

DEFAULTS = dict(smoke=False, residual=True, coded=2, lmbda=0.0, steps=100_000,
                task=common.TASK_WEIGHT, **common.REFINE_DEFAULTS)


def get_config(arg=None):
  arg = common.parse_arg(arg, **DEFAULTS)
  coded = ("p4", "p5") if arg.coded == 2 else ("p5",)
  kwargs = dict(coded_scales=coded, fused_channels=192, latent_channels=128, hidden_channels=128,
                hyper_channels=64, stages=0, transform="gdn", predictor_hidden=96,
                predictor_blocks=3, residual=arg.residual, residual_latent_channels=32,
                train_quantization="noise")
  kwargs.update(common.refinement_kwargs(arg, "lmfc"))
  if arg.smoke:
    kwargs.update(fused_channels=8, latent_channels=8, hidden_channels=8, hyper_channels=8,
                  predictor_hidden=8, predictor_blocks=1, residual_latent_channels=4,
                  refine_latent_channels=4)
  config = common.training_config("lmfc", kwargs, arg)
  config.lock()
  return config


def get_sweep():
  return common.sweep()
