"""Which relative distances (query position - key position) do the samples supervise?

A pair (query i, key j) counts when j <= i in physical (causal) order and the query has a target inside the sample
(i < P-1; cue targets count too, their weight w_cue being > 0). Its distance is position_ids[i] - position_ids[j].
Counts are exact and computed per pair of segments (a trapezoid of distances), not per token pair, so a report
over thousands of 8K samples takes seconds. Buckets are log-spaced: {0}, [1, 2), [2, 4), ... up to T.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from megatron_endprompt.positions import Segment, position_ids


def bucket_edges(target_length: int) -> np.ndarray:
    """Edges 0, 1, 2, 4, ..., T (int64); bucket k is [edges[k], edges[k+1])."""
    top = max(1, math.ceil(math.log2(max(target_length, 2))))
    edges = [0] + [2**k for k in range(top) if 2**k < target_length] + [target_length]
    return np.asarray(edges, dtype=np.int64)


def _pair_counts(query: Segment, key: Segment, same: bool) -> tuple[int, np.ndarray]:
    """(smallest distance, counts per distance) of all causal pairs between two segments."""
    la, lb = query.length, key.length
    if same:
        return 0, np.arange(la, 0, -1, dtype=np.int64)  # distance d occurs la - d times
    k = np.arange(-(lb - 1), la, dtype=np.int64)  # k = x - y
    counts = np.minimum(la - 1, lb - 1 + k) - np.maximum(0, k) + 1
    return query.first_position - key.first_position - (lb - 1), counts


def accumulate(dense: np.ndarray, segments: Sequence[Segment]) -> None:
    """Add one sample's supervised pair counts to `dense` (indexed by distance, length T)."""
    for a, query in enumerate(segments):
        for b in range(a + 1):
            lo, counts = _pair_counts(query, segments[b], same=a == b)
            if lo < 0:
                raise ValueError("positions decrease across segments: distances would be negative")
            dense[lo : lo + len(counts)] += counts
    pos = position_ids(segments)
    # The last query has no target inside the sample: remove its row.
    np.subtract.at(dense, pos[-1] - pos, 1)


@dataclass
class CoverageReport:
    """Histogram of supervised distances over log-spaced buckets."""

    target_length: int
    num_samples: int
    edges: np.ndarray
    pairs: np.ndarray
    """Supervised (query, key) pairs per bucket, summed over samples."""
    distinct: np.ndarray
    """Distinct distances seen per bucket."""

    @property
    def bucket_sizes(self) -> np.ndarray:
        return np.diff(self.edges)

    def to_text(self) -> str:
        """A table, one bucket per line."""
        total = max(int(self.pairs.sum()), 1)
        lines = [
            f"supervised relative distances over {self.num_samples} samples, T = {self.target_length}",
            f"{'bucket':>22} {'pairs':>14} {'share':>8} {'distinct covered':>18}",
        ]
        for k, pairs in enumerate(self.pairs):
            lo, hi = int(self.edges[k]), int(self.edges[k + 1]) - 1
            cov = f"{int(self.distinct[k])}/{hi - lo + 1}"
            lines.append(f"{f'[{lo}, {hi}]':>22} {int(pairs):>14} {pairs / total:>8.2%} {cov:>18}")
        return "\n".join(lines)

    def summary(self) -> dict:
        """JSON-friendly numbers (fraction of all distances in [0, T) covered, pairs per bucket)."""
        return {
            "num_samples": self.num_samples,
            "target_length": self.target_length,
            "covered_fraction": float(self.distinct.sum() / self.target_length),
            "buckets": [[int(self.edges[k]), int(self.edges[k + 1])] for k in range(len(self.pairs))],
            "pairs": [int(x) for x in self.pairs],
            "distinct": [int(x) for x in self.distinct],
        }

    def save_png(self, path: str) -> str:
        """Bar chart of pairs per bucket (log scale) with the covered fraction of each bucket."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [f"<{int(e)}" for e in self.edges[1:]]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
        ax1.bar(range(len(self.pairs)), np.maximum(self.pairs, 0), color="tab:blue")
        ax1.set_yscale("symlog")
        ax1.set_ylabel("supervised pairs")
        ax1.set_title(f"relative-distance coverage ({self.num_samples} samples, T={self.target_length})")
        ax2.bar(range(len(self.pairs)), self.distinct / self.bucket_sizes, color="tab:green")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("distinct distances covered")
        ax2.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        ax2.set_xlabel("query-key distance bucket")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def distance_coverage(samples: Iterable[Sequence[Segment]], target_length: int) -> CoverageReport:
    """Coverage of an iterable of samples (each a list of segments) whose positions stay below T."""
    dense = np.zeros(target_length, dtype=np.int64)
    n = 0
    for segments in samples:
        accumulate(dense, segments)
        n += 1
    edges = bucket_edges(target_length)
    pairs = np.add.reduceat(dense, edges[:-1])
    distinct = np.add.reduceat((dense > 0).astype(np.int64), edges[:-1])
    return CoverageReport(target_length, n, edges, pairs, distinct)


def coverage_report(prefix: str, max_samples: int | None = 2048) -> CoverageReport:
    """Coverage of a built prefix from its sidecar (evenly spaced samples when there are more than max_samples)."""
    from megatron_endprompt.data.sidecar import read_sidecar

    sidecar = read_sidecar(f"{prefix}.seg")
    n = sidecar.num_samples
    if max_samples is None or n <= max_samples:
        indices = range(n)
    else:
        indices = np.unique(np.linspace(0, n - 1, max_samples).astype(np.int64))
    return distance_coverage((sidecar.segments(int(i)) for i in indices), sidecar.target_length)
