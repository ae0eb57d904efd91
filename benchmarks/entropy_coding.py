"""Entropy-coding throughput and rate overhead of the Gaussian conditional, next to the raw tfc ops.

  python benchmarks/entropy_coding.py [--symbols 1048576 4194304] [--repeats 7]

For each size: y ~ N(mu, sigma) with log-uniform sigma over the scale table's range. "raw" times
the tensorflow-compression ops alone on precomputed symbols and indexes (create encoder, encode,
finalize; and the decoder counterpart). "ours" times `gaussian.compress` / `gaussian.decompress`
end to end from float latents, means and scales (input checks, quantization, scale indexes, symbol
mapping, range coding, reconstruction). Rate overhead compares the bitstream with the model's
estimate (sum of -log2 P in evaluation mode) and with the ideal code length under the integer tables.
Prints a markdown table; reported times are medians.
"""

import argparse
import platform
import statistics
import subprocess
import time

import jax.numpy as jnp
import numpy as np

from hssc_jax._tf import tf as _tf
from hssc_jax.entropy import gaussian
from hssc_jax.entropy import range_coder
from hssc_jax.entropy import tables


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def _machine() -> str:
  try:
    model = next(l.split(":", 1)[1].strip() for l in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name"))
  except (StopIteration, OSError):
    model = platform.processor() or "unknown CPU"
  import os  # pylint: disable=g-import-not-at-top
  return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def run(n: int, repeats: int) -> dict:
  scales_table = gaussian.default_scale_table()
  table = gaussian.build_table(scales_table)
  rng = np.random.default_rng(n)
  mean = (rng.normal(size=n) * 5).astype(np.float32)
  scale = np.exp(rng.uniform(np.log(0.2), np.log(64.0), n)).astype(np.float32)
  y = (mean + scale * rng.normal(size=n)).astype(np.float32)

  ops, tf = range_coder._ops(), _tf()  # pylint: disable=protected-access
  idx = gaussian.scale_indexes(scale, scales_table)
  sym = (np.rint(y - mean).astype(np.int32) - table.offset[idx]).astype(np.int32)

  def raw_encode():
    h = ops.create_range_encoder([], table.lookup)
    h = ops.entropy_encode_index(h, idx, sym)
    return bytes(ops.entropy_encode_finalize(h).numpy())

  raw_data = raw_encode()

  def raw_decode():
    h = ops.create_range_decoder(raw_data, table.lookup)
    h, out = ops.entropy_decode_index(h, idx, tf.constant([n], tf.int32), tf.int32)
    ops.entropy_decode_finalize(h)
    return out.numpy()

  t_raw_enc, _ = _median_time(raw_encode, repeats)
  t_raw_dec, _ = _median_time(raw_decode, repeats)
  t_enc, (data, y_hat, _) = _median_time(
      lambda: gaussian.compress(table, scales_table, y, mean, scale), repeats)
  t_dec, decoded = _median_time(
      lambda: gaussian.decompress(table, scales_table, data, mean, scale), repeats)
  assert np.array_equal(decoded, y_hat) and data == raw_data

  _, est = gaussian.conditional(jnp.asarray(y), jnp.asarray(mean), jnp.asarray(scale), "round")
  est = float(est.sum())
  ideal = tables.ideal_bits(table, np.rint(y - mean).astype(np.int32), idx)
  real = 8 * len(data)
  return dict(n=n, raw_enc=n / t_raw_enc, enc=n / t_enc, raw_dec=n / t_raw_dec, dec=n / t_dec,
              bits_per_symbol=real / n, over_est=(real - est) / est, over_ideal=(real - ideal) / ideal)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--symbols", type=int, nargs="+", default=[1 << 20, 1 << 22])
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  rows = [run(n, args.repeats) for n in args.symbols]
  print(f"Machine: {_machine()}\n")
  print("| symbols | raw encode (Msym/s) | ours encode (Msym/s) | kept | raw decode (Msym/s) | "
        "ours decode (Msym/s) | kept | bits/symbol | overhead vs estimate | overhead vs ideal |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['n']:,} | {r['raw_enc'] / 1e6:.1f} | {r['enc'] / 1e6:.1f} | "
          f"{r['enc'] / r['raw_enc']:.0%} | {r['raw_dec'] / 1e6:.1f} | {r['dec'] / 1e6:.1f} | "
          f"{r['dec'] / r['raw_dec']:.0%} | {r['bits_per_symbol']:.3f} | {r['over_est']:+.3%} | "
          f"{r['over_ideal']:+.4%} |")


if __name__ == "__main__":
  main()
