"""One typed config schema for every flow, validated at load.

Every field carries its help text (shown by `embedlake ... --help-config` and in the Prefect UI
form). Unknown keys and out-of-range values are refused with the dotted field name. The resolved
config is stored in every run's manifest so a run can be reproduced.

Sources, later wins: defaults < YAML file (`--config`) < `-p section.key=value` overrides.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from embedlake.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(Section):
    edges: str | None = Field(None, description="Edge list: path, glob, folder or s3:// URL (TSV/CSV/Parquet, .gz/.zst). "
                              "None = the built-in planted-community graph (see `synthetic`).")
    labels: str | None = Field(None, description="Node labels (node<TAB>label, one row per pair; multi-label allowed).")
    directed: bool = Field(False, description="Treat edges as directed; undirected graphs are symmetrised.")
    weighted: bool = Field(False, description="Read a third column as edge weight (must be finite and > 0).")
    id_type: Literal["int", "str"] = Field("int", description="Type of node ids in the input; outputs keep this type.")
    delimiter: str | None = Field(None, description="Column separator; None = tab for .tsv, comma for .csv, "
                                  "otherwise tab.")
    has_header: bool | None = Field(None, description="First line is a header; None = detect (non-numeric first line).")
    src_col: str = Field("src", description="Source column name (Parquet input or headed text).")
    dst_col: str = Field("dst", description="Destination column name.")
    weight_col: str = Field("weight", description="Weight column name when weighted.")
    self_loops: Literal["drop", "keep"] = Field("drop", description="What to do with edges u->u.")
    duplicates: Literal["drop", "sum", "keep"] = Field("drop", description="Repeated edges: drop (keep first "
                                                          "weight), sum their weights, or keep as multi-edges.")
    num_nodes: int | None = Field(None, ge=1, description="Node count for int ids 0..n-1 including isolated nodes "
                                  "(read from stats.json beside the edges when present).")
    chunk_rows: int = Field(2_000_000, ge=1000, description="Rows per streaming chunk while reading edges.")


class SyntheticConfig(Section):
    nodes: int = Field(3000, ge=10, description="Nodes of the built-in planted-community graph.")
    communities: int = Field(10, ge=2, description="Planted communities (the node labels).")
    avg_degree: float = Field(10.0, gt=0, description="Mean degree.")
    mixing: float = Field(0.5, ge=0, le=1, description="Share of each node's edges that leave its community.")
    seed: int = Field(7, description="Generator seed (the graph is deterministic by seed).")


class ShardConfig(Section):
    partitions: int = Field(0, ge=0, le=4096, description="Partitions of start nodes / rows (one Ray task each); "
                            "0 = one per CPU of the Ray cluster.")


class GraphConfig(Section):
    shards: int | Literal["auto"] = Field("auto", description="Graph shards by node range (workers/graph/shards.py): "
                                          "each holds its nodes' out-arcs as its own lake files and Ray objects, and "
                                          "no worker holds the whole graph when > 1. auto = 1 while the CSR fits "
                                          "shard_budget_mb, else the fewest shards that each fit it.")
    shard_budget_mb: float = Field(4096.0, gt=0, description="Per-worker memory budget for one shard's CSR "
                                   "(indptr, neighbours, weights, node ids) with graph.shards=auto.")

    @field_validator("shards")
    @classmethod
    def _shards_range(cls, v):
        if v != "auto" and not 1 <= v <= 4096:
            raise ValueError("graph.shards must be auto or an integer in 1..4096")
        return v


class WalkConfig(Section):
    walks_per_node: int = Field(10, ge=1, description="Walks started from every node.")
    length: int = Field(80, ge=1, description="Nodes per walk (a walk of length 1 is just its start node).")
    p: float = Field(1.0, gt=0, description="node2vec return parameter.")
    q: float = Field(1.0, gt=0, description="node2vec in-out parameter.")
    seed: int = Field(0, description="Walk k from node v depends only on (seed, v, k).")
    write_walks: bool = Field(False, description="Also write the walks to the lake as Parquet.")
    stream: Literal["auto", "always", "never"] = Field("auto", description="Stream walks into training one round "
                                                 "(one walk per node) at a time instead of holding all walks; "
                                                 "auto = when they exceed stream_threshold_mb.")
    stream_threshold_mb: float = Field(1024.0, gt=0, description="Walk volume above which walk.stream=auto streams.")


class TrainConfig(Section):
    dim: int = Field(128, ge=2, le=4096, description="Embedding dimension.")
    window: int = Field(10, ge=1, description="Max context window (dynamic window as in word2vec).")
    negatives: int = Field(5, ge=1, le=100, description="Negative samples per positive pair.")
    ns_exponent: float = Field(0.75, description="Noise distribution = unigram ** ns_exponent.")
    epochs: int = Field(1, ge=1, description="Passes over the walks / sentences.")
    lr: float = Field(0.025, gt=0, description="Initial learning rate (decays linearly to min_lr).")
    min_lr: float = Field(0.0001, ge=0, description="Final learning rate.")
    sample: float = Field(0.0, ge=0, description="Frequent-token subsampling threshold (word2vec's t; 0 = off).")
    engine: Literal["numba", "torch"] = Field("numba", description="numba: CPU Hogwild kernel; torch: batched "
                                              "kernel on `device`.")
    device: str = Field("auto", description="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N.")
    threads: int = Field(0, ge=0, description="Kernel threads per worker; 0 = the worker's CPUs.")
    workers: int = Field(1, ge=1, description="Ray workers for partitioned training (1 = one worker, whole table).")
    partitions: int = Field(0, ge=0, le=256, description="Node partitions P of block-partitioned training "
                            "(docs/training.md); 0 = 2 x workers when workers > 1, else the one-table kernel. "
                            "partitions >= 1 with workers = 1 runs the block engine on one worker (checkpoints).")
    rounds: int = Field(8, ge=1, description="Passes of the P-episode block schedule per epoch, each over 1/rounds "
                        "of the walks (short episodes keep the shards in step; 1 = P long episodes).")
    checkpoint: Literal["round", "episode", "epoch", "never"] = Field("round", description="Partitioned training "
                                                                    "writes W_in/W_out shards to the lake's "
                                                                    "checkpoints/ after every round, episode or epoch (never: no checkpoints).")
    resume: bool = Field(True, description="A re-run with the same lake.run_id continues from the run's last "
                         "checkpoint (a leftover claim of a dead writer on this host is taken over).")
    seed: int = Field(0, description="Initialisation and sampling seed.")
    negatives_per: Literal["window", "pair"] = Field("window", description="window: one draw of negatives shared by "
                                                     "a centre's contexts (HogBatch; the graph default: better "
                                                     "Micro-F1 at 10 % on BlogCatalog); pair: word2vec's / "
                                                     "gensim's own negatives per (context, centre) pair, context "
                                                     "after context (the embed-corpus default: +.008 SimLex rho "
                                                     "on Brown, at about the same speed). pair needs the numba "
                                                     "one-table kernel (docs/skipgram.md, issue 20).")
    split_negatives: bool = Field(True, description="negatives_per=pair at two or more threads: neighbouring "
                                  "blocks of text draw their negatives from two halves of the vocabulary (equal "
                                  "noise mass; the most frequent words, 12 % of it, in both), so two threads rarely "
                                  "write the same output rows; each word keeps its noise probability over the "
                                  "blocks. ~1.3x the tokens/s at two threads on a 2-vCPU VM; false: one noise table "
                                  "for every block (docs/skipgram.md, ninth and tenth passes).")
    incremental: Literal["auto", "off"] = Field("auto", description="auto: a deepwalk / node2vec run whose previous "
                                                "committed run of the dataset has compatible settings and whose graph "
                                                "changed by at most incremental_max_change updates that run's table "
                                                "(walks from the changed nodes only, other rows kept byte for byte; "
                                                "docs/incremental.md); otherwise, and with off, it retrains in full "
                                                "(the run record says which and why).")
    incremental_max_change: float = Field(0.1, gt=0, le=1, description="Changed edges (added + removed + "
                                          "reweighted) over the previous graph's edges above which train.incremental="
                                          "auto retrains in full (past ~10 % most rows are affected and an update "
                                          "costs about what a retrain does: docs/incremental.md).")
    incremental_radius: int = Field(1, ge=0, le=8, description="Hops around a changed edge whose nodes' rows an "
                                    "incremental run may update (0: the changed edge's endpoints and new nodes only; "
                                    "1 measured best on BlogCatalog: docs/incremental.md).")
    incremental_edge_walks: int | None = Field(None, ge=0, le=256, description="Walks an incremental run centres "
                                               "on each added edge (window // 2 steps each side: the pairs the edge "
                                               "brings). None (default): a quarter of the times c a retrain's walks "
                                               "cross one edge (walks_per_node x (length - 1) x nodes / edges), at "
                                               "most 8, but never under c / 15 (BlogCatalog 6, PPI 8, deezer_europe "
                                               "16): with incremental_lr_scale 0.4 that met a retrain's Micro-F1 and "
                                               "added-edge AUC and kept a v1 classifier's drop under 0.01 at 1 % and "
                                               "5 % new edges, where a flat cap of 8 left a sparse graph's new edges "
                                               "under-trained (deezer_europe AUC -0.012 to -0.018; "
                                               "docs/incremental.md).")
    incremental_lr_scale: float = Field(0.4, gt=0, le=1, description="An incremental run's learning rate as a share "
                                        "of train.lr: its rows are trained already, and at the full rate the walks "
                                        "around the new edges (a biased sample of contexts) pull them away from what "
                                        "a retrain gives, while far below it the new edges stay unlearnt (8 edge "
                                        "walks, 5 % new edges, added-edge AUC: 0.4 -> PPI 0.876, BlogCatalog 0.846; "
                                        "0.5 -> 0.892 at a lower Micro-F1; retrains 0.883, 0.844: docs/incremental.md). "
                                        "It is the rate where every node has a changed edge end on average; sparser changes "
                                        "rise from it (incremental_lr_rise).")
    incremental_lr_rise: float = Field(0.2, ge=0, le=2, description="How an incremental run's rate rises where "
                                       "the change is sparse: incremental_lr_scale x (nodes / (2 x changed edges)) "
                                       "** rise where that is above 1, at most train.lr (0: one rate at every "
                                       "change). A sparse change's new edges get few walks of other new edges "
                                       "around them, so at one rate they stay under-trained (0.2 met the retrains' "
                                       "added-edge AUC on PPI and BlogCatalog at 1 % and 5 %: docs/incremental.md).")
    table: Literal["full", "hash", "compose", "qr", "unified"] = Field("full", description="full: one row per "
                         "node / word. hash / compose / qr / unified: train a learned table of K << n rows "
                         "directly (deepwalk / node2vec walks, or embed-corpus text: compose codes words from "
                         "their co-occurrence graph; size from compress.compose_ratio, compress.compose_levels, "
                         "compress.compose_sketch_dim, compress.hash_buckets, compress.seed) and commit only it, "
                         "as method <method>.<table>; the full n x d table is never trained or stored.")


    @field_validator("incremental", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        """YAML reads a bare `off` as false (and `on` as true): take them as the words they were."""
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _pair_negatives_kernel(self) -> "TrainConfig":
        """negatives_per=pair exists in the numba one-table kernel only: refuse it where another runs."""
        if self.negatives_per == "pair" and not pair_negatives_kernel(self.engine, self.partitions, self.workers,
                                                                      self.table):
            raise ValueError("train.negatives_per=pair needs engine=numba, table=full and the one-table kernel "
                             "(workers=1, partitions=0)")
        return self


def pair_negatives_kernel(engine: str, partitions: int, workers: int, table: str) -> bool:
    """Whether these train.* settings run the numba one-table kernel, the one with per-pair negatives."""
    return engine == "numba" and partitions == 0 and workers == 1 and table == "full"


class FastRPConfig(Section):
    dim: int = Field(512, ge=2, description="Embedding dimension.")
    weights: list[float] = Field(default_factory=lambda: [0.0, 0.0, 1.0, 6.67],
                                 description="Weight of A^1 R, A^2 R, ... (one per iteration).")
    beta: float = Field(-0.64, description="Degree normalisation exponent (R scaled by degree**beta).")
    density: float | None = Field(None, gt=0, le=1, description="Non-zero share of the random projection; "
                                  "None = 1/sqrt(n).")
    normalization: Literal["row", "sym", "none"] = Field("row", description="Transition D^-1 A (row), "
                                                       "D^-1/2 A D^-1/2 (sym) or A (none).")
    standardize: bool = Field(True, description="Standardise output columns (zero mean, unit variance).")
    seed: int = Field(0, description="Projection seed.")
    projection: Literal["row", "node_id"] = Field("row", description="What keys a node's row of the random "
                                                  "projection: its dense row id (row), or a hash of its original "
                                                  "id (node_id: a node keeps its row when others are added or "
                                                  "removed; needs a set fastrp.density). Incremental FastRP "
                                                  "runs need node_id.")

    @model_validator(mode="after")
    def _keyed_projection_pins_density(self) -> "FastRPConfig":
        """The default density 1/sqrt(n) changes with n, and with it every node's row of R."""
        if self.projection == "node_id" and self.density is None:
            raise ValueError("fastrp.projection=node_id needs fastrp.density set (e.g. 0.01): the default "
                             "1/sqrt(n) changes with the node count, and with it every node's projection")
        return self


class OrbitsConfig(Section):
    combine: Literal["sum", "concat"] = Field("sum", description="sum: the 28 row-normalised matrices summed, "
                                              "then projected to `dim` columns; concat: each projected to "
                                              "dim_per_matrix columns, concatenated (docs/orbits.md).")
    dim: int = Field(512, ge=2, le=4096, description="Embedding dimension with combine=sum.")
    dim_per_matrix: int = Field(16, ge=1, le=512, description="combine=concat: columns of each of the 28 "
                                "matrices' projection; the embedding has 28 x this many.")
    weights: list[float] = Field(default_factory=lambda: [1.0, 1.0, 2.0, 4.0, 8.0], description="Weight of "
                                 "P^j X_1, j = 0, 1, ... (P = D^-1 A): the projections summed over the neighbours' "
                                 "up to len-1 hops further (docs/orbits.md has the measurements).")
    transform: Literal["log1p", "none"] = Field("log1p", description="Applied to each count before rows are "
                                                "normalised: log1p damps the hubs' huge counts.")
    density: float | None = Field(None, gt=0, le=1, description="Non-zero share of the random projection; "
                                  "None = 1/sqrt(n).")
    standardize: bool = Field(True, description="Standardise output columns (zero mean, unit variance).")
    seed: int = Field(0, description="Projection seed.")
    budget: float = Field(5e9, gt=0, description="Refuse to count when the estimated 3-step walks (sum over arcs "
                          "of d_u d_v: the counting cost, and a bound on the 4-4 matrix's non-zeros) exceed this; "
                          "the estimate and a 4-node graphlet bound are logged first.")
    write_matrices: bool = Field(True, description="Store the 28 matrices in the lake as Parquet (row, col, "
                                 "count) per orbit pair, under tables/<dataset>/orbits/run=<id>/orbit_adjacency/.")

    @property
    def table_dim(self) -> int:
        """Columns of the embedding table."""
        return self.dim if self.combine == "sum" else 28 * self.dim_per_matrix


class EvalConfig(Section):
    mode: Literal["sampled", "exact"] = Field("sampled", description="sampled (default): the evaluation stays a "
                                              "small share of the run: node classification scores sampled_repeats "
                                              "split(s) with a bootstrap 95 % interval over the test nodes, "
                                              "reconstruction reconstruction_sample queries (ci95), both reported "
                                              "as sampled. exact: every repeat, labelled node and query node, no "
                                              "caps (the expensive figures).")
    sampled_repeats: int = Field(1, ge=1, description="mode=sampled: random splits per ratio (repeats 0..k-1 of "
                                 "the exact protocol), each with its bootstrap interval.")
    sampled_small_ratio: float = Field(0.3, ge=0, lt=1, description="mode=sampled: train ratios up to this "
                                       "score every repeat (their fits are cheap, and their F1 varies most with "
                                       "the training set, which the bootstrap does not see).")
    bootstrap: int = Field(200, ge=20, description="mode=sampled: bootstrap resamples of the test nodes behind "
                           "node classification's ci95.")
    spectrum_rows: int = Field(4096, ge=0, description="mode=sampled: rows of the labelled set whose Gram matrix "
                               "preconditions the solver (its optimum is unchanged; 0 = every row).")
    spectrum_rank: int = Field(96, ge=0, description="mode=sampled: eigenpairs of that Gram matrix kept by the "
                               "solver's preconditioner, the others standing in as their mean (its optimum is "
                               "unchanged; 0 = every eigenpair, a full eigendecomposition).")
    train_ratios: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9],
                                      description="Labelled shares for node classification.")
    repeats: int = Field(3, ge=1, description="Random splits per ratio (mode=exact).")
    seed: int = Field(0, description="Split seed.")
    classify_max_nodes: int = Field(100_000, ge=0, description="mode=sampled, node classification: above this many labelled "
                                    "nodes, a seeded sample of this many is scored (reported as sampled, with "
                                    "labelled_nodes; the across-repeat std is the spread; the smaller training "
                                    "sets score somewhat lower). 0 = every node (exact).")
    classify_tol: float = Field(1e-3, gt=0, lt=1, description="Node classification: the logistic regressions stop "
                                "when each label's gradient norm falls below this share of its initial one "
                                "(1e-3 moved F1 by < 0.001 against 1e-6 on BlogCatalog and PPI).")
    link_prediction: bool = Field(False, description="Hold out edges before embedding and report ROC-AUC, MRR and "
                                  "Hits@K (the published table is then trained on the remaining edges).")
    test_edge_share: float = Field(0.1, gt=0, lt=1, description="Share of edges held out for link prediction.")
    lp_operators: list[str] = Field(default_factory=lambda: ["hadamard", "average", "l1", "l2", "dot"],
                                    description="Link-prediction scores: edge features hadamard, average, l1, l2 "
                                    "(logistic regression) or direct dot, cosine.")
    hits_k: list[int] = Field(default_factory=lambda: [10, 50, 100], description="K of the Hits@K figures.")
    reconstruction: bool = Field(True, description="Graph reconstruction mAP of the k-hop neighbourhoods.")
    reconstruction_hops: list[int] = Field(default_factory=lambda: [1, 2, 3], description="Hops for reconstruction.")
    reconstruction_sample: int = Field(100, ge=0, description="mode=sampled: query nodes sampled for reconstruction "
                                       "(0 = all); mode=exact queries every node.")
    reconstruction_work: int = Field(800_000_000, ge=0, description="mode=sampled, reconstruction: at most this many "
                                     "queries x nodes x (dim + 64) units of work (a query scores every node, "
                                     "about dim + 64 operations each with its search; about 14e9 units per "
                                     "CPU-s): above 8e6 units per query fewer queries are sampled (at least 50; "
                                     "reported as work_limited, with a wider ci95). 0 = reconstruction_sample "
                                     "queries at any size.")
    reconstruction_ball_cap: int = Field(1_000_000, ge=1, description="mode=sampled, reconstruction: a query's breadth-first "
                                         "search stops once its ball would exceed this many nodes; its farther "
                                         "hops are left out of the means (reported as truncated).")
    reconstruction_relevant_cap: int = Field(512, ge=0, description="mode=sampled, reconstruction: relevant nodes kept per "
                                             "query and hop ring; a larger ring is sampled (stratified, an "
                                             "unbiased estimate, reported as sampled). 0 = every node (exact).")
    align_to_previous: bool = Field(True, description="Rotate the table onto the previous committed run of the same "
                                    "dataset/method (Procrustes), report stability, publish it as files 'aligned'.")
    stability_sample: int = Field(1000, ge=1, description="Nodes sampled for the top-10 neighbourhood overlap.")
    artifacts: bool = Field(True, description="Publish the metrics table and plot as Prefect artifacts.")

    @field_validator("train_ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        for r in v:
            if not 0 < r < 1:
                raise ValueError(f"train ratio {r} is not in (0, 1)")
        return v

    @field_validator("lp_operators")
    @classmethod
    def _operators(cls, v: list[str]) -> list[str]:
        known = ("hadamard", "average", "l1", "l2", "dot", "cosine")
        for op in v:
            if op not in known:
                raise ValueError(f"unknown link-prediction operator {op!r} (known: {', '.join(known)})")
        return v


class CompressConfig(Section):
    codecs: list[str] = Field(default_factory=list, description="Codecs to build after training: fp16, int8, int4, "
                              "binary, pq, opq, lowrank, hash, compose, qr, unified (empty = none).")
    pq_m: int = Field(16, ge=1, description="PQ sub-quantisers.")
    pq_bits: int = Field(8, ge=1, le=16, description="Bits per PQ code.")
    lowrank_dim: int = Field(32, ge=1, description="Target dimension of the low-rank codec.")
    lowrank_dtype: Literal["float32", "float16"] = Field("float32", description="Stored type of the low-rank "
                                                         "coordinates.")
    scale_dtype: Literal["float16", "float32"] = Field("float16", description="Per-row scale/bias type of int8, "
                                                       "int4 and binary (float16 = FBGEMM's row header).")
    normalize: bool = Field(True, description="pq/opq encode L2-normalised rows (cosine use; norms are dropped).")
    train_sample: int = Field(100_000, ge=0, description="Rows sampled to train pq/opq codebooks and the "
                              "low-rank basis (0 = all rows).")
    opq_method: Literal["eigen", "faiss"] = Field("eigen", description="OPQ rotation: eigen = parametric OPQ "
                                                  "(eigenvalue allocation, one PCA); faiss = Faiss's iterative "
                                                  "OPQMatrix (slower).")
    opq_iter: int = Field(20, ge=1, description="Iterations of opq_method=faiss.")
    seed: int = Field(0, description="Training-sample and k-means seed.")
    rerank_candidates: int = Field(100, ge=1, description="Binary tier: Hamming candidates re-scored against "
                                   "int8 when measuring / searching.")
    evaluate: bool = Field(True, description="Measure recall@10 against exact search and the node-classification "
                           "F1 change (when the graph has labels); stored in each table's manifest.")
    recall_queries: int = Field(1000, ge=1, description="Sampled queries for recall@10.")
    hash_buckets: int = Field(0, ge=0, description="Rows K of the hash codec's table, trained by skip-gram on "
                              "hashed walks of the source graph (0 = source rows / 8).")
    compose_ratio: float = Field(8.0, gt=1, description="compose / qr / unified: the table has this many times "
                                 "fewer float parameters than the full n x d table (K = n / ratio rows).")
    compose_levels: int = Field(0, ge=0, le=64, description="compose / unified: rows R summed per id (0 = 5 for "
                                "compose, 2 for unified; qr always 2).")
    compose_sketch_dim: int = Field(256, ge=8, description="compose: columns of the FastRP sketch whose residual "
                                    "quantisation gives each node its codes (n x sketch_dim float32 while codes "
                                    "are assigned).")


RAY_STAGE_OPTIONS = ("accelerator_type", "max_retries", "memory", "num_cpus", "num_gpus", "resources")


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster address (also RAY_ADDRESS); None = start Ray locally.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (None = all).")
    max_retries: int = Field(3, ge=0, description="Ray task retries on worker failure.")
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per-stage Ray options, e.g. "
                                              "{train: {num_gpus: 1, num_cpus: 8}}; keys: num_cpus, num_gpus, "
                                              "memory, resources, max_retries, accelerator_type.")

    @field_validator("stages")
    @classmethod
    def _stage_options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for stage, opts in v.items():
            bad = set(opts) - set(RAY_STAGE_OPTIONS)
            if bad:
                raise ValueError(f"ray.stages.{stage}: unknown option(s) {sorted(bad)}; "
                                 f"allowed: {sorted(RAY_STAGE_OPTIONS)}")
        return v


class LakeConfig(Section):
    uri: str = Field("./lake", description="Lake root: a local folder or s3://bucket/prefix.")
    dataset: str | None = Field(None, description="Dataset name in the lake (default: from the input's folder).")
    run_id: str | None = Field(None, description="Run id (default: generated, time-ordered).")


class KGConfig(Section):
    """Knowledge-graph embeddings (`embedlake embed-kg`, docs/knowledge-graphs.md)."""
    train: str | None = Field(None, description="Training triples (head, relation, tail; string ids): file, folder, "
                              "glob or s3:// URL, TSV/CSV/whitespace (.gz/.zst) or Parquet with those columns.")
    valid: str | None = Field(None, description="Validation triples (needs kg.test too); None with kg.test None = "
                              "a seeded split of kg.train.")
    test: str | None = Field(None, description="Test triples; None = a seeded split of kg.train.")
    delimiter: str | None = Field(None, description="Column separator of text input; None = tab for .tsv, comma for "
                                  ".csv, else detected.")
    has_header: bool | None = Field(None, description="First line is a header; None = when it reads head, "
                                    "relation, tail.")
    unseen: Literal["refuse", "drop", "keep"] = Field("refuse", description="A valid/test entity missing from "
                                                      "training: refuse (error naming file and line), drop the "
                                                      "triple, or keep it (the entity gets an untrained row).")
    valid_share: float = Field(0.05, ge=0, lt=0.5, description="Seeded split: share of triples held out for "
                               "validation.")
    test_share: float = Field(0.05, gt=0, lt=0.5, description="Seeded split: share of triples held out for test.")
    model: Literal["transe", "distmult", "complex", "rotate"] = Field("complex", description="Scoring model.")
    dim: int = Field(256, ge=2, le=4096, description="Entity row width (complex / rotate: 2 x complex coordinates, "
                     "so it must be even).")
    norm: Literal[1, 2] = Field(1, description="TransE distance: L1 or L2.")
    gamma: float = Field(0.0, description="Distance models score gamma - distance (logistic / margin losses).")
    epochs: int = Field(30, ge=1, description="Passes over the training triples.")
    batch: int = Field(1000, ge=1, description="Positive triples per chunk (one update, one shared negative draw).")
    negatives: int = Field(2000, ge=0, description="Shared negative entities per chunk and side; 0 = every entity "
                           "(1-vs-all).")
    negative_sampling: Literal["uniform", "degree"] = Field("uniform", description="Negatives drawn uniformly or "
                                                            "by training degree ** degree_exponent.")
    degree_exponent: float = Field(0.75, ge=0, description="Exponent of degree-weighted negatives.")
    loss: Literal["softmax", "logistic", "margin"] = Field("softmax", description="softmax: cross-entropy over the "
                                                           "chunk's negatives; logistic; margin ranking.")
    margin: float = Field(1.0, gt=0, description="Margin of the margin-ranking loss.")
    optimizer: Literal["adagrad", "row_adagrad", "sgd"] = Field("adagrad", description="adagrad (elementwise), "
                                                                "row_adagrad (PyTorch-BigGraph's), or sgd.")
    lr: float = Field(0.1, gt=0, description="Learning rate.")
    regularizer: Literal["none", "n3", "l2"] = Field("n3", description="Penalty on the positives' rows.")
    reg_weight: float = Field(0.1, ge=0, description="Weight of the regulariser.")
    init_scale: float = Field(1e-3, gt=0, description="Std of the initial rows of DistMult / ComplEx.")
    seed: int = Field(0, description="Initialisation, shuffling, negatives and split seed.")
    threads: int = Field(1, ge=1, description="CPU threads of the training worker (numba and BLAS).")
    engine: Literal["numba", "torch"] = Field("numba", description="numba: the CPU kernel; torch: the same "
                                              "training as tensor operations (GPUs).")
    device: str = Field("auto", description="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N.")
    partitions: int = Field(1, ge=1, le=64, description="Entity partitions P: above 1, PyTorch-BigGraph's P x P "
                            "buckets trained in rounds of disjoint buckets (numba engine, uniform negatives).")
    workers: int = Field(1, ge=1, description="Buckets trained at once (Ray tasks) with kg.partitions > 1.")
    lent_rows: int = Field(1000, ge=0, description="kg.partitions > 1: rows every other partition lends a bucket "
                           "each round as read-only negatives, so its negatives come from all entities; 0 = from "
                           "its own partitions only (PyTorch-BigGraph's rule, biased: docs/knowledge-graphs.md).")
    edge_chunks: int = Field(16, ge=1, le=1024, description="kg.partitions > 1: parts each bucket's triples are cut "
                             "into per epoch; an epoch trains the first part of every bucket, then the second, ... "
                             "(PyTorch-BigGraph's num_edge_chunks; 1 = each bucket in one pass, which costs quality: "
                             "docs/knowledge-graphs.md).")
    eval_batch: int = Field(1000, ge=1, description="Test queries scored against every entity at once.")


class PipelineConfig(Section):
    method: Literal["deepwalk", "node2vec", "fastrp", "orbits"] = Field("deepwalk", description="Embedding method "
                                                                         "(orbits: graphlet orbit adjacencies, "
                                                                         "docs/orbits.md).")
    input: InputConfig = Field(default_factory=InputConfig, description="Input graph.")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description="Built-in demo graph.")
    shard: ShardConfig = Field(default_factory=ShardConfig, description="Partitioning of one shard's rows.")
    graph: GraphConfig = Field(default_factory=GraphConfig, description="Graph shards.")
    walk: WalkConfig = Field(default_factory=WalkConfig, description="Random walks.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Skip-gram training.")
    fastrp: FastRPConfig = Field(default_factory=FastRPConfig, description="FastRP.")
    orbits: OrbitsConfig = Field(default_factory=OrbitsConfig, description="Orbit adjacencies (method orbits).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    compress: CompressConfig = Field(default_factory=CompressConfig, description="Compressed tables.")
    kg: KGConfig = Field(default_factory=KGConfig, description="Knowledge-graph embeddings (embed-kg).")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray.")
    lake: LakeConfig = Field(default_factory=LakeConfig, description="Lake.")

    @model_validator(mode="after")
    def _learned_table_rules(self) -> "PipelineConfig":
        """train.table != full: refuse at load what the learned-table path cannot honour."""
        t = self.train.table
        if t == "full":
            return self
        if self.method not in LEARNED_TABLE_METHODS:
            raise ValueError(f"train.table={t}: a learned table is trained by skip-gram on walks; method "
                             f"{self.method!r} has none (use deepwalk or node2vec, or train.table=full)")
        if self.compress.codecs:
            raise ValueError(f"compress.codecs={self.compress.codecs} compress the full table, which "
                             f"train.table={t} never trains; leave compress.codecs empty (or use train.table=full)")
        if not _one_numba_worker(self.train):
            raise ValueError(f"train.table={t} trains on one worker with the numba kernel: set train.engine=numba, "
                             f"train.workers=1, train.partitions=0")
        if self.walk.write_walks:
            raise ValueError(f"train.table={t} does not write walks: set walk.write_walks=false")
        if t == "compose" and self.graph.shards != "auto" and self.graph.shards > 1:
            raise ValueError(LEARNED_TABLE_SHARDS)
        return self


LEARNED_TABLE_SHARDS = ("train.table=compose takes its codes from k-means on a FastRP sketch of the whole graph, "
                        "built in one task: it needs graph.shards=1 (hash, qr and unified train on graph.shards > 1)")
LEARNED_TABLE_METHODS = ("deepwalk", "node2vec")    # methods whose walks can train a learned table


def _one_numba_worker(train: TrainConfig) -> bool:
    return train.engine == "numba" and train.workers == 1 and train.partitions == 0


def check_table_fits(codec: str, params: dict, rows: int, dim: int) -> None:
    """The cross-field rules that need the data's shape (the source table's or vocabulary's rows
    and dim, known only once it is loaded): a codec's parameters (`codec_params`, sized for
    `rows` x `dim`) against that shape. Raises ConfigError naming the compress.* field."""
    if codec in ("pq", "opq"):
        train = min(rows, params["train_sample"] or rows)
        if train < (1 << params["nbits"]):
            raise ConfigError(f"{codec}: {train} training rows are fewer than the 2^{params['nbits']} centroids per "
                              f"sub-quantiser; lower compress.pq_bits or raise compress.train_sample")
        if dim % params["m"]:
            raise ConfigError(f"compress.pq_m={params['m']} does not divide the source dimension {dim}")
    if codec == "hash" and params["buckets"] > rows:
        raise ConfigError(f"compress.hash_buckets={params['buckets']} exceeds the source's {rows} rows")
    if codec in ("compose", "qr", "unified") and params["table_rows"] >= rows:
        raise ConfigError(f"compress.compose_ratio={params['ratio']}: a {codec} table for {rows} rows would have "
                          f"{params['table_rows']} rows, no fewer than the source; raise the ratio")
    if codec == "lowrank" and params["rank"] > dim:
        raise ConfigError(f"compress.lowrank_dim={params['rank']} exceeds the source dimension {dim}")


# ---- corpus embeddings (embed_corpus flow) -----------------------------------------------------

class CorpusInputConfig(Section):
    path: str | None = Field(None, description="Text corpus: file, folder, glob or s3:// URL. Plain text is one "
                             "sentence or document per line (.gz/.zst/.bz2/.xz too); .parquet reads `text_column`.")
    text_column: str = Field("text", description="Parquet input: the string column holding one sentence/document "
                             "per row.")
    encoding_errors: Literal["fail", "replace"] = Field("fail", description="Invalid UTF-8: fail (error names the "
                                                        "file and byte offset) or replace with U+FFFD (counted).")
    shard_mb: float = Field(32.0, gt=0, description="Uncompressed text files are cut at line boundaries into shards "
                            "of about this many MiB (one Ray task each); compressed files are one shard each.")


class TextConfig(Section):
    tokenizer: Literal["whitespace", "regex"] = Field("whitespace", description="whitespace: runs of non-space "
                                                      "characters; regex: every match of `pattern`.")
    pattern: str = Field(r"\w+(?:['’-]\w+)*|[^\w\s]", description="Token regex for tokenizer=regex (Rust regex "
                         "syntax, Unicode-aware).")
    lowercase: bool = Field(False, description="Lower-case text before tokenising.")
    max_sentence_tokens: int = Field(10_000, ge=2, description="Longest sentence trained on; longer lines are "
                                     "handled by `long_lines` (never silently truncated).")
    long_lines: Literal["split", "fail"] = Field("split", description="split: cut a long line into consecutive "
                                                 "sentences of max_sentence_tokens (counted in the summary); "
                                                 "fail: stop with an error naming the file and line.")


class VocabConfig(Section):
    min_count: int = Field(5, ge=1, description="Words seen fewer times are dropped from sentences.")
    max_vocab: int | None = Field(None, ge=1, description="Keep at most this many most frequent words "
                                  "(ties broken by the word), None = no cap.")
    update: bool = Field(False, description="Append mode (gensim build_vocab(update=True) + train): the input is "
                         "NEW text for the latest committed run of this dataset and method. Old words keep their "
                         "rows and add their new counts; new words (min_count in the new text) get rows after "
                         "them; training runs on the new text only, from the previous run's vectors. Needs "
                         "train.table=full and train.workers=1 (the run that saves its output vectors).")


class WordEvalConfig(Section):
    benchmarks: str | None = Field(None, description="Folder with wordsim353.tsv, simlex999.txt, "
                                   "questions-words.txt (gensim's test-data formats); None = $EMBEDLAKE_WORD_"
                                   "BENCHMARKS or ../shared/corpora/benchmarks beside the repo when present, "
                                   "else evaluation is skipped.")
    case_insensitive: bool = Field(True, description="Match benchmark words case-insensitively (the most frequent "
                                   "case variant stands for a word, as gensim does).")
    restrict_vocab: int = Field(300_000, ge=1, description="Only the most frequent words take part (gensim's "
                                "restrict_vocab).")
    analogies: bool = Field(True, description="Run the analogy set (3CosAdd).")


def _corpus_train_defaults() -> "TrainConfig":
    """word2vec / gensim defaults for text: 100 d, window 5, 5 epochs, subsampling 1e-3, and
    word2vec's per-pair negatives (on Brown they close the SimLex gap to gensim that the graph
    default's shared window negatives leave; docs/skipgram.md, issue 20)."""
    return TrainConfig(dim=100, window=5, epochs=5, sample=1e-3, negatives_per="pair")


class CorpusPipelineConfig(Section):
    method: Literal["skipgram"] = Field("skipgram", description="Embedding method (lake method name).")
    input: CorpusInputConfig = Field(default_factory=CorpusInputConfig, description="Input corpus.")
    text: TextConfig = Field(default_factory=TextConfig, description="Tokenisation.")
    vocab: VocabConfig = Field(default_factory=VocabConfig, description="Vocabulary.")
    partitions: int = Field(1, ge=1, le=4096, description="Output Parquet partitions of the vocabulary rows.")
    train: TrainConfig = Field(default_factory=_corpus_train_defaults, description="Skip-gram training.")
    eval: WordEvalConfig = Field(default_factory=WordEvalConfig, description="Word-similarity / analogy evaluation.")
    compress: CompressConfig = Field(default_factory=CompressConfig, description="Learned-table size (train.table: "
                                     "compose_ratio, compose_levels, compose_sketch_dim, hash_buckets, seed).")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray.")
    lake: LakeConfig = Field(default_factory=LakeConfig, description="Lake.")

    @field_validator("train", mode="before")
    @classmethod
    def _train_text_defaults(cls, v: Any) -> Any:
        """A partial `train` section (file or -p) starts from the text defaults, not the graph ones."""
        if isinstance(v, dict):
            merged = {**_corpus_train_defaults().model_dump(), **v}
            if "negatives_per" not in v and not pair_negatives_kernel(merged["engine"], merged["partitions"],
                                                                      merged["workers"], merged["table"]):
                merged["negatives_per"] = "window"     # the default follows the kernel the user picked
            return merged
        return v

    @model_validator(mode="after")
    def _learned_table_rules(self) -> "CorpusPipelineConfig":
        """embed-corpus -p train.table=...: refuse at load what the vocabulary path cannot honour."""
        t = self.train.table
        if self.vocab.update and (t != "full" or self.train.workers > 1):
            raise ValueError("vocab.update=true continues a full word table trained on one worker: set "
                             "train.table=full and train.workers=1")
        if t == "full":
            return self
        if not _one_numba_worker(self.train):
            raise ValueError(f"train.table={t} trains on one worker with the numba compositional kernel: set "
                             f"train.engine=numba, train.workers=1, train.partitions=0 (or use train.table=full)")
        if self.compress.codecs:
            raise ValueError(f"compress.codecs={self.compress.codecs}: embed-corpus builds no compressed copies of "
                             f"a full table; train.table={t} trains the learned table itself (leave compress.codecs "
                             f"empty)")
        return self


def _parse_value(text: str) -> Any:
    """`-p a.b=VALUE`: VALUE is YAML (so 128, 0.5, true, [1, 2], null all work)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def _format_validation(err: ValidationError, source: str) -> str:
    """One line per error, each naming its dotted field. A cross-field rule (a model validator: no
    location of its own) names its fields in its message, which is printed as it is."""
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}" if loc and not msg.startswith(f"{loc}.") else f"  {msg}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                base: dict | None = None, model: type[BaseModel] = PipelineConfig) -> Any:
    """Defaults < `base` dict < YAML file < `section.key=value` overrides; validated once."""
    data: dict = json.loads(json.dumps(base)) if base else {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        _deep_merge(data, loaded)
        source = str(p)
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected section.key=value")
        k, v = ov.split("=", 1)
        _set_dotted(data, k.strip(), _parse_value(v))
        if not source.endswith("+ overrides"):
            source = f"{source} + overrides"
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, source)) from None


def _deep_merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


def describe(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field: the CLI's --help-config table."""
    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe(ann, f"{prefix}{name}."))
        else:
            default = f.default_factory() if f.default_factory is not None else f.default
            rows.append((f"{prefix}{name}", json.dumps(default), f.description or ""))
    return rows
