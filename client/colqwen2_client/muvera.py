"""MUVERA fixed dimensional encodings (FDEs): one vector per multivector, for a single-vector first stage.

MUVERA (Dhulipala et al. 2024, "MUVERA: Multi-Vector Retrieval via Fixed Dimensional Encodings") maps a
set of vectors to one vector so that ``encode_query(Q) @ encode_document(D)`` approximates the Chamfer
(MaxSim) similarity ``sum over q in Q of max over d in D of <q, d>``. An HNSW index over document FDEs
(dot-product metric: FDEs are not normalised) finds candidates; exact MaxSim
(`colqwen2_client.scoring.maxsim`) reranks them.

Per repetition (``r_reps`` of them), ``k_sim`` random hyperplanes split the space into ``2**k_sim``
SimHash buckets: a vector's bucket is the bit pattern of the signs of its dot products with them.
Each vector is projected to ``dim_proj`` dimensions by a random +-1 matrix scaled by
``1 / sqrt(dim_proj)`` (an unbiased inner-product sketch; ``dim_proj == dim`` means no projection).
A query's FDE holds, per bucket, the SUM of its projected vectors; a document's the MEAN, and a bucket
no document vector falls in takes the document vector whose SimHash code is nearest to the bucket's in
Hamming distance (the lowest-index one of those at that distance), as the paper's `fill_empty_clusters`
does. The repetitions' ``2**k_sim x dim_proj`` blocks are concatenated: ``fde_dim = r_reps * 2**k_sim *
dim_proj``. Each query bucket's sum meets the mean of the document vectors near it, so the dot product
rewards a document that has vectors close to every query vector, as MaxSim does.

Defaults: ``k_sim=3, dim_proj=16, r_reps=16`` -> ``fde_dim = 16 * 8 * 16 = 2048`` (8 KiB per image as
float32, a size HNSW handles well). Chosen by measurement, not taken from the paper: on seven synthetic
late-interaction sets (documents of 100-450 vectors drawn from shared "topics", some with a common
background direction; queries of 8-25 noisy document vectors) it gave the best, or within about 0.03 of
the best, top-1 agreement with exact MaxSim and recall of the exact top-10 within the FDE top-100 among
the 2048-dim splits tried (``k_sim/dim_proj/r_reps`` = 4/16/8, 4/8/16, 5/8/8, 5/16/4, 2/16/32), and
matched the 4096-dim 5/16/8. On the hardest set its top-1 agreement was 0.45 against 0.29 for 4/16/8; on
tests/test_muvera.py's set its Pearson correlation with MaxSim is 0.70 against 0.64 for 4/16/8. The
1024-dim 3/16/8 was clearly worse (top-1 agreement 0.95 against 0.996 on an easier set, 0.20 against
0.45 on the hardest). At this size, averaging over more repetitions beats finer buckets: 8 buckets of a
450-vector image average about 56 vectors each, and 16 repetitions average out the SimHash and
projection noise. Re-tune on real ColQwen2 embeddings (recall of the exact top-k within the FDE
candidates) before relying on it, and let the first stage fetch generously (hundreds) for the rerank.

Reproducible: every parameter set draws its hyperplanes and projections from
``np.random.default_rng(seed)`` in a fixed order (all hyperplanes ``standard_normal((r_reps, dim, k_sim))``,
then all projection signs ``random((r_reps, dim, dim_proj)) < 0.5``), streams numpy has kept stable
across versions and machines (numpy 1.26 and 2.4 give the same pinned values); tests pin values of an
encoding so a change that would orphan stored FDEs fails.
Stored document FDEs are only comparable with query FDEs of the same parameters: keep them with the index.

Speed: `encode_documents` on 10,000 documents of 400-500 vectors (4.5 million vectors; 100 arrays
reused) took 4.6 s on 2 CPU cores of an idle AMD EPYC host (6-9 s while other jobs shared the cores);
10,000 queries of 20 vectors took 1.2-1.9 s. Per item, every step is a matrix product or an array
operation over all its vectors (the only Python loops are over items and over the ``k_sim`` bits). Measured with::

    OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 taskset -c 0,1 .venv/bin/python -c "
    import time, numpy as np
    from colqwen2_client.muvera import Muvera
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((int(n), 128), dtype=np.float32) for n in rng.integers(400, 501, 100)]
    pool = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in pool]
    docs = [pool[i % 100] for i in range(10_000)]
    m = Muvera(); t = time.perf_counter(); fde = m.encode_documents(docs)
    print(fde.shape, round(time.perf_counter() - t, 2), 's')"

(numpy 1.26.4 with OpenBLAS, Python 3.11, ``PYTHONPATH=client``; numpy 2.4 gives the same FDEs.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .types import Embedding

_MAX_K_SIM = 10  # 1024 buckets; the bucket-to-bucket Hamming table is [2**k_sim, 2**k_sim]

Vectors = np.ndarray | Embedding


def _hamming_table(bits: int) -> np.ndarray:
    """Hamming distance between every pair of `bits`-bit codes: int64 [2**bits, 2**bits]."""
    codes = np.arange(2**bits, dtype=np.int64)
    xor = codes[:, None] ^ codes[None, :]
    return ((xor[..., None] >> np.arange(bits, dtype=np.int64)) & 1).sum(axis=-1)


@dataclass(frozen=True)
class Muvera:
    """Fixed dimensional encoder: ``r_reps`` repetitions of ``2**k_sim`` SimHash buckets x ``dim_proj``.

    Args:
        dim: dimension of the input vectors (ColQwen2: 128).
        k_sim: SimHash hyperplanes per repetition; ``2**k_sim`` buckets (1..10).
        dim_proj: dimension each bucket is projected to (1..dim; ``dim`` = no projection).
        r_reps: independent repetitions, concatenated.
        seed: seed of ``np.random.default_rng`` for the hyperplanes and projections.

    The defaults give ``fde_dim == 2048`` (module docstring: why). Equal parameters give equal
    encoders (and equal FDEs) on every machine.
    """

    dim: int = 128
    k_sim: int = 3
    dim_proj: int = 16
    r_reps: int = 16
    seed: int = 0
    _planes: np.ndarray = field(init=False, repr=False, compare=False)  # float32 [dim, r_reps * k_sim]
    _projections: np.ndarray = field(init=False, repr=False, compare=False)  # float32 [r_reps, dim, dim_proj]
    _hamming: np.ndarray = field(init=False, repr=False, compare=False)  # int64 [2**k_sim, 2**k_sim]

    def __post_init__(self) -> None:
        for name in ("dim", "k_sim", "dim_proj", "r_reps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if not 1 <= self.k_sim <= _MAX_K_SIM:
            raise ValueError(f"k_sim must be in 1..{_MAX_K_SIM}, got {self.k_sim}")
        if not 1 <= self.dim_proj <= self.dim:
            raise ValueError(f"dim_proj must be in 1..dim ({self.dim}), got {self.dim_proj}")
        if self.r_reps < 1:
            raise ValueError(f"r_reps must be >= 1, got {self.r_reps}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

        # The draw order is part of the stored format: changing it orphans every stored FDE.
        rng = np.random.default_rng(int(self.seed))
        planes = rng.standard_normal((self.r_reps, self.dim, self.k_sim))
        signs = np.where(rng.random((self.r_reps, self.dim, self.dim_proj)) < 0.5, -1.0, 1.0)
        # Column r * k_sim + b: hyperplane b of repetition r.
        planes = np.ascontiguousarray(planes.transpose(1, 0, 2).reshape(self.dim, -1), dtype=np.float32)
        projections = (signs / np.sqrt(self.dim_proj)).astype(np.float32)  # unused when dim_proj == dim
        hamming = _hamming_table(self.k_sim)
        for name, array in (("_planes", planes), ("_projections", projections), ("_hamming", hamming)):
            array.flags.writeable = False
            object.__setattr__(self, name, array)

    @property
    def num_buckets(self) -> int:
        """SimHash buckets per repetition: ``2**k_sim``."""
        return 2**self.k_sim

    @property
    def fde_dim(self) -> int:
        """Length of every FDE: ``r_reps * 2**k_sim * dim_proj``."""
        return self.r_reps * self.num_buckets * self.dim_proj

    def encode_document(self, vectors: Vectors) -> np.ndarray:
        """One document's vectors, float [n, dim] (or an `Embedding`) -> float32 [fde_dim].

        Per bucket the mean of the document's vectors in it; empty buckets filled (module docstring).
        """
        return self._encode([vectors], document=True, what="document")[0]

    def encode_query(self, vectors: Vectors) -> np.ndarray:
        """One query's vectors, float [n, dim] (or an `Embedding`) -> float32 [fde_dim].

        Per bucket the sum of the query's vectors in it; empty buckets stay zero.
        """
        return self._encode([vectors], document=False, what="query")[0]

    def encode_documents(self, documents: Iterable[Vectors]) -> np.ndarray:
        """Many documents at once -> float32 [len(documents), fde_dim], equal to `encode_document` per row."""
        return self._encode(list(documents), document=True, what="documents")

    def encode_queries(self, queries: Iterable[Vectors]) -> np.ndarray:
        """Many queries at once -> float32 [len(queries), fde_dim], equal to `encode_query` per row."""
        return self._encode(list(queries), document=False, what="queries")

    # -- internals ----------------------------------------------------------------------------------

    def _check(self, vectors: Vectors, name: str) -> np.ndarray:
        """`vectors` as an array [n, dim] of real numbers, n >= 1, or ValueError naming the problem."""
        array = np.asarray(vectors.vectors if isinstance(vectors, Embedding) else vectors)
        if array.dtype.kind not in "fiu":
            raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D [n, {self.dim}], got shape {array.shape}")
        if array.shape[1] != self.dim:
            raise ValueError(f"{name} has vectors of dimension {array.shape[1]}, expected dim={self.dim}")
        if array.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 vectors)")
        return array

    def _encode(self, items: Sequence[Vectors], *, document: bool, what: str) -> np.ndarray:
        """Validate and encode every item -> float32 [len(items), fde_dim]."""
        single = what in ("document", "query")
        arrays = [self._check(item, what if single else f"{what}[{i}]") for i, item in enumerate(items)]
        out = np.empty((len(arrays), self.fde_dim), dtype=np.float32)
        for i, array in enumerate(arrays):
            name = what if single else f"{what}[{i}]"
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise ValueError(f"{name} contains non-finite values (NaN or inf)")
            with np.errstate(over="ignore"):
                x = np.ascontiguousarray(array, dtype=np.float32)
            if not np.isfinite(x).all():
                raise ValueError(f"{name} has values beyond the float32 range")
            out[i] = self._encode_one(x, document)
        return out

    def _encode_one(self, x: np.ndarray, document: bool) -> np.ndarray:
        """One item's vectors, float32 [n, dim] -> float32 [fde_dim]; no Python loop over the vectors.

        Buckets are summed in the input space (a one-hot matrix product) and projected afterwards: the
        projection is linear, so this equals projecting every vector first, at about half the work.
        """
        n, reps, bits, buckets = len(x), self.r_reps, self.k_sim, self.num_buckets
        signs = (x @ self._planes).reshape(n, reps, bits) > 0
        codes = np.zeros((n, reps), dtype=np.int64)  # the bucket of every (vector, repetition)
        for bit in range(bits):
            codes |= signs[:, :, bit].astype(np.int64) << bit
        cells = codes + np.arange(reps, dtype=np.int64) * buckets  # row of (repetition, bucket)
        members = np.zeros((reps * buckets, n), dtype=np.float32)
        members[cells, np.arange(n)[:, None]] = 1.0
        centers = members @ x  # [reps * buckets, dim]: per bucket the sum of its vectors
        if document:
            counts = members.sum(axis=1)
            np.divide(centers, counts[:, None], out=centers, where=counts[:, None] > 0)
            empty = np.flatnonzero(counts == 0)
            if len(empty):
                # The lowest-index vector whose code is nearest (Hamming) to the empty bucket's.
                distance = self._hamming[empty[:, None] % buckets, codes[:, empty // buckets].T]  # [empty, n]
                centers[empty] = x[distance.argmin(axis=1)]
        if self.dim_proj == self.dim:
            return centers.reshape(-1)
        return np.matmul(centers.reshape(reps, buckets, self.dim), self._projections).reshape(-1)
