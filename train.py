r"""Trains a learned feature codec: `python train.py --config configs/base.py --workdir DIR`.

See the docstring of each config file for its variants (e.g. `configs/base.py:smoke`).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from hssc_jax import train_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (ml_collections).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, tables and logs go (resumed if present).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not FLAGS.is_parsed() or FLAGS["verbosity"].using_default_value:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; -v 0 brings it back.
  train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
