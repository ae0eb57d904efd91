r"""Evaluation entry point: flags, then `hssc_jax.eval_lib.evaluate(config, workdir)`.

  python eval.py --config configs/eval/detector.py --workdir /tmp/x
"""

from absl import app
from absl import flags
from ml_collections import config_flags

import hssc_jax.eval_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Evaluation config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for the evaluation outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  hssc_jax.eval_lib.evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
