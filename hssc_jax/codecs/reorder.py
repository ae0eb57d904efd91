"""HSSC-style channel reordering before tiling (host-side numpy).

Zhang et al., "HSSC", IEEE Transactions on Broadcasting, 2025: the channels of a representation are
reordered by semantic similarity before they are tiled into a frame for a video codec, so that
similar maps sit next to each other and the codec's intra prediction and transforms see smoother
content across tile borders. The permutation is side information; the decoder applies its inverse.

This port's choices (the paper's exact formulation was not available here):

- Similarity is Lin's concordance correlation coefficient (CCC), which, unlike plain correlation,
  also penalises differences of mean and scale (a DC step at a tile border costs bits):

    ccc(a, b) = 2 cov(a, b) / (var(a) + var(b) + (mean(a) - mean(b))^2)          in [-1, 1].

  It is invariant to the anchor's global affine quantisation, so it can be computed on the floats.
- Global term G[i, j]: ccc of whole maps of channels i and j (all pixels; over a training set for a
  fixed order, or over the one image for a per-image order).
- Local terms, for channels that become neighbours in the tile grid: L_h[i, j] = ccc of the right
  border column of i with the left border column of j (row by row; i left of j), and
  L_v[i, j] = ccc of the bottom border row of i with the top border row of j (i above j).
- "global": a greedy nearest-neighbour chain on G (from the least-similar channel), improved by
  2-opt on the chain, placed in serpentine (boustrophedon) order so chain neighbours are
  horizontal grid neighbours, also across row ends.
- "global+local": from the "global" placement, best-improvement pairwise swaps maximising
    J = sum_{i left of j} (G + lam L_h)[i, j] + sum_{i above j} (G + lam L_v)[i, j]
  over horizontal and vertical neighbours of the grid (lam = `local_weight`, 1 by default).
- One permutation per scale; `perm[k]` is the channel placed in raster cell k. Per-image orders
  travel as the Lehmer rank of the permutation, ceil(log2 C!) bits (1,684 bits for C = 256);
  fixed orders are part of the anchor's configuration and cost nothing per image.
"""

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from hssc_jax import errors

MODES = ("none", "global", "global+local")
_EPS = 1e-12


def _ccc(n, sum_a, sum_b, sum_ab, sq_a, sq_b) -> np.ndarray:
  """CCC matrix [i, j] between variables a_i and b_j from their moments over n samples."""
  m_a, m_b = sum_a / n, sum_b / n
  cov = sum_ab / n - np.outer(m_a, m_b)
  var_a = np.maximum(sq_a / n - m_a ** 2, 0.0)
  var_b = np.maximum(sq_b / n - m_b ** 2, 0.0)
  den = var_a[:, None] + var_b[None, :] + (m_a[:, None] - m_b[None, :]) ** 2
  return np.where(den > _EPS, 2.0 * cov / np.maximum(den, _EPS), 1.0)


class _PairMoments:
  """Streaming moments of channel pairs across tile borders: rows a of one tile beside rows b of
  the next (right column | left column, or bottom row / top row)."""

  def __init__(self, channels: int):
    c = int(channels)
    self.n = 0
    self.s_a, self.s_b, self.ss_a, self.ss_b, self.s_ab = (np.zeros(c), np.zeros(c), np.zeros(c),
                                                          np.zeros(c), np.zeros((c, c)))

  def update(self, a: np.ndarray, b: np.ndarray) -> None:
    self.n += a.shape[0]
    self.s_a += a.sum(0)
    self.s_b += b.sum(0)
    self.ss_a += (a * a).sum(0)
    self.ss_b += (b * b).sum(0)
    self.s_ab += a.T @ b

  def similarity(self) -> np.ndarray:
    return _ccc(self.n, self.s_a, self.s_b, self.s_ab, self.ss_a, self.ss_b)


class ChannelStats:
  """Streaming moments of one scale's channels (whole maps and tile borders), in float64."""

  def __init__(self, channels: int):
    c = int(channels)
    self.channels = c
    self.n = 0                                      # pixels
    self.s, self.ss = np.zeros(c), np.zeros((c, c))  # whole maps: sum, sum of outer products
    self.horizontal = _PairMoments(c)               # right column of tile i | left column of j
    self.vertical = _PairMoments(c)                 # bottom row of tile i / top row of tile j

  def update(self, x: np.ndarray) -> "ChannelStats":
    """Adds maps of shape (H, W, C) or (N, H, W, C)."""
    x = np.asarray(x, np.float64)
    if x.ndim == 3:
      x = x[None]
    if x.ndim != 4 or x.shape[-1] != self.channels:
      raise errors.InvalidInputError(
          f"channel statistics expect (N, H, W, {self.channels}) maps, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
      raise errors.InvalidInputError("feature maps hold NaN/inf values")
    rows = lambda a: a.reshape(-1, self.channels)
    flat = rows(x)
    self.n += flat.shape[0]
    self.s += flat.sum(0)
    self.ss += flat.T @ flat
    self.horizontal.update(rows(x[:, :, -1, :]), rows(x[:, :, 0, :]))
    self.vertical.update(rows(x[:, -1, :, :]), rows(x[:, 0, :, :]))
    return self

  def similarities(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G, L_h, L_v), each C x C (see the module docstring)."""
    if self.n == 0:
      raise errors.InvalidInputError("channel statistics are empty: no maps were added")
    g = _ccc(self.n, self.s, self.s, self.ss, np.diag(self.ss), np.diag(self.ss))
    return g, self.horizontal.similarity(), self.vertical.similarity()


# --- placement ---------------------------------------------------------------------------------

def _chain(g: np.ndarray) -> np.ndarray:
  """Greedy nearest-neighbour chain on similarity g, from the channel least similar to the rest."""
  c = g.shape[0]
  off = g - np.diag(np.diag(g))
  start = int(np.argmin(off.sum(1)))
  chain, used = [start], np.zeros(c, bool)
  used[start] = True
  for _ in range(c - 1):
    row = np.where(used, -np.inf, g[chain[-1]])
    nxt = int(np.argmax(row))
    chain.append(nxt)
    used[nxt] = True
  return np.asarray(chain)


def _two_opt(chain: np.ndarray, g: np.ndarray, max_iters: int) -> np.ndarray:
  """Best-improvement 2-opt on an open path, maximising the sum of consecutive similarities."""
  chain = chain.copy()
  c = len(chain)
  if c < 4:
    return chain
  for _ in range(max_iters):
    a, b = chain[:-1], chain[1:]                        # edge k joins chain[k], chain[k+1]
    # Reversing chain[i+1 .. j] replaces edges i and j by (chain[i], chain[j]), (chain[i+1], chain[j+1]).
    delta = g[a[:, None], a[None, :]] + g[b[:, None], b[None, :]] - g[a, b][:, None] - g[a, b][None, :]
    delta = np.triu(delta, 2)
    # Also reversing a prefix or suffix (open path): only one edge changes.
    head = g[chain[0], b] - g[a, b]                     # reverse chain[0 .. k]: edge k -> (chain[0], chain[k+1])
    tail = g[a, chain[-1]] - g[a, b]                    # reverse chain[k+1 ..]: edge k -> (chain[k], chain[-1])
    best = [(delta.max(), "mid"), (head.max(), "head"), (tail.max(), "tail")]
    gain, kind = max(best, key=lambda t: t[0])
    if gain <= 1e-9:
      break
    if kind == "mid":
      i, j = np.unravel_index(np.argmax(delta), delta.shape)
      chain[i + 1:j + 1] = chain[i + 1:j + 1][::-1]
    elif kind == "head":
      k = int(np.argmax(head))
      chain[:k + 1] = chain[:k + 1][::-1]
    else:
      k = int(np.argmax(tail))
      chain[k + 1:] = chain[k + 1:][::-1]
  return chain


def serpentine(chain: np.ndarray, cols: int) -> np.ndarray:
  """Places a chain in raster cells row by row, every other row right to left."""
  c = len(chain)
  perm = np.empty(c, np.int64)
  for r, start in enumerate(range(0, c, cols)):
    seg = chain[start:start + cols]
    perm[start:start + len(seg)] = seg[::-1] if r % 2 else seg
  return perm


def _neighbours(c: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Raster-cell neighbour indexes (-1 where none) among the first c cells of a grid."""
  k = np.arange(c)
  right = np.where((k % cols != cols - 1) & (k + 1 < c), k + 1, -1)
  left = np.where(k % cols != 0, k - 1, -1)
  below = np.where(k + cols < c, k + cols, -1)
  above = np.where(k >= cols, k - cols, -1)
  return right, left, below, above


def grid_objective(perm: np.ndarray, cols: int, w_h: np.ndarray, w_v: np.ndarray) -> float:
  """J = sum over horizontal neighbours of w_h[left, right] + vertical ones of w_v[top, bottom]."""
  right, _, below, _ = _neighbours(len(perm), cols)
  hr, vb = right >= 0, below >= 0
  k = np.arange(len(perm))
  return float(w_h[perm[k[hr]], perm[right[hr]]].sum() + w_v[perm[k[vb]], perm[below[vb]]].sum())


def swap_deltas(perm: np.ndarray, cols: int, w_h: np.ndarray, w_v: np.ndarray) -> np.ndarray:
  """delta[p, q]: change of `grid_objective` when the channels of cells p and q are swapped."""
  c = len(perm)
  right, left, below, above = _neighbours(c, cols)
  # contrib[p, x]: objective of the edges at cell p if it held channel x (neighbours as now).
  contrib = np.zeros((c, c))
  for nb, w, x_first in ((right, w_h, True), (left, w_h, False), (below, w_v, True),
                         (above, w_v, False)):
    has = nb >= 0
    other = perm[nb[has]]
    contrib[has] += w[:, other].T if x_first else w[other, :]
  a = contrib[:, perm]                                  # a[p, q] = contrib[p, perm[q]]
  d = np.diag(a)
  delta = a + a.T - d[:, None] - d[None, :]
  # Adjacent p, q: the shared edge was counted with stale neighbours; fix it exactly.
  for nb, w in ((right, w_h), (below, w_v)):
    p = np.nonzero(nb >= 0)[0]
    q = nb[p]
    x, y = perm[p], perm[q]                             # x at p (left/top), y at q
    fix = w[y, x] + w[x, y] - w[x, x] - w[y, y]
    delta[p, q] += fix
    delta[q, p] += fix
  np.fill_diagonal(delta, 0.0)
  return delta


def _local_search(perm: np.ndarray, cols: int, w_h: np.ndarray, w_v: np.ndarray,
                  max_iters: int) -> np.ndarray:
  perm = perm.copy()
  for _ in range(max_iters):
    delta = swap_deltas(perm, cols, w_h, w_v)
    p, q = np.unravel_index(np.argmax(delta), delta.shape)
    if delta[p, q] <= 1e-9:
      break
    perm[[p, q]] = perm[[q, p]]
  return perm


def order(similarities: tuple[np.ndarray, np.ndarray, np.ndarray], cols: int, mode: str,
          local_weight: float = 1.0, max_iters: int | None = None) -> np.ndarray:
  """The permutation (perm[k] = channel in raster cell k) for a grid `cols` wide."""
  g, l_h, l_v = (np.asarray(s, np.float64) for s in similarities)
  c = g.shape[0]
  if mode not in MODES:
    raise errors.ConfigError(f"reorder mode {mode!r} is not one of {MODES}")
  if mode == "none" or c < 2:
    return np.arange(c)
  iters = 4 * c if max_iters is None else int(max_iters)
  perm = serpentine(_two_opt(_chain(g), g, iters), int(cols))
  if mode == "global+local":
    lam = float(local_weight)
    perm = _local_search(perm, int(cols), g + lam * l_h, g + lam * l_v, iters)
  return perm


def fit(pyramids: Iterable[Mapping[str, np.ndarray]], grids: Mapping[str, Sequence[int]],
        mode: str, local_weight: float = 1.0) -> dict[str, np.ndarray]:
  """Fixed per-scale permutations from the statistics of a training set of pyramids.

  `grids` gives (rows, cols) per scale (the tiling layout's).
  """
  stats: dict[str, ChannelStats] = {}
  for pyr in pyramids:
    for name in grids:
      x = np.asarray(pyr[name])
      stats.setdefault(name, ChannelStats(x.shape[-1])).update(x)
  if not stats:
    raise errors.InvalidInputError("cannot fit a channel order on an empty set of pyramids")
  return {name: order(stats[name].similarities(), grids[name][1], mode, local_weight)
          for name in grids}


# --- permutations ------------------------------------------------------------------------------

def check_permutation(perm: Sequence[int], channels: int, what: str = "permutation") -> np.ndarray:
  p = np.asarray(perm)
  if p.shape != (channels,) or not np.array_equal(np.sort(p), np.arange(channels)):
    raise errors.ConfigError(f"{what} is not a permutation of {channels} channels")
  return p.astype(np.int64)


def inverse(perm: np.ndarray) -> np.ndarray:
  inv = np.empty_like(perm)
  inv[perm] = np.arange(len(perm))
  return inv


def apply(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
  """Channels (last axis) in the new order: out[..., k] = x[..., perm[k]]."""
  return np.asarray(x)[..., perm]


def undo(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
  """Inverse of `apply`."""
  return np.asarray(x)[..., inverse(perm)]


def permutation_bytes(channels: int) -> int:
  """Bytes of an encoded permutation of `channels` items: ceil(log2(C!) / 8)."""
  return max(1, -(-(math.factorial(int(channels)) - 1).bit_length() // 8))


def encode_permutation(perm: Sequence[int]) -> bytes:
  """Lehmer rank of the permutation, big-endian, `permutation_bytes(C)` bytes."""
  p = list(int(v) for v in perm)
  c = len(p)
  remaining = list(range(c))
  rank = 0
  for i, v in enumerate(p):
    j = remaining.index(v)
    rank = rank * (c - i) + j
    remaining.pop(j)
  return rank.to_bytes(permutation_bytes(c), "big")


def decode_permutation(data: bytes, channels: int) -> np.ndarray:
  """Inverse of `encode_permutation`; CorruptBitstreamError for a rank that is not C! or less."""
  c = int(channels)
  if len(data) != permutation_bytes(c):
    raise errors.CorruptBitstreamError(
        f"a permutation of {c} channels takes {permutation_bytes(c)} bytes, got {len(data)}")
  rank = int.from_bytes(data, "big")
  if rank >= math.factorial(c):
    raise errors.CorruptBitstreamError(f"permutation rank {rank} is out of range for {c} channels")
  digits = []
  for base in range(1, c + 1):                          # least significant digit has base 1
    rank, d = divmod(rank, base)
    digits.append(d)
  remaining = list(range(c))
  return np.asarray([remaining.pop(d) for d in reversed(digits)], np.int64)
