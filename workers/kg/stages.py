"""Knowledge-graph stage bodies that run inside Ray workers: read the triples, train (with epoch
checkpoints), evaluate, write the entity and relation tables. Plain functions (no Prefect, no Ray);
tasks/kg.py wraps them in `ray.remote` and passes ObjectRefs between them."""
from __future__ import annotations

import hashlib
import time
from contextlib import nullcontext

import numpy as np

from embedlake import storage
from embedlake.lake import Lake, embeddings_table
from embedlake.workers.kg.evaluate import evaluate
from embedlake.workers.kg.kernels import TrainSettings, TrainState, new_state
from embedlake.workers.kg.models import KGModel, check_model, init_tables
from embedlake.workers.kg.train import train
from embedlake.workers.kg.triples import TripleSet, load_triples
from embedlake.workers.run.checkpoints import StageHandle
from embedlake.workers.run.faults import fault_point

TRAIN_FIELDS = ("epochs", "batch", "negatives", "negative_sampling", "degree_exponent", "loss", "margin",
                "optimizer", "lr", "regularizer", "reg_weight", "seed")
TABLE_SUBS = ("entities", "relations")        # the two tables a run publishes (table_method names their Delta tables)


def table_method(method: str, which: str) -> str:
    """The lake method name of one KG table: the entity table is the run's own table
    (embeddings/<dataset>/<method>, its commit holds the run record); the relation table is a
    Delta table of its own beside it (embeddings/<dataset>/<method>.relations), since one Delta
    table has one schema."""
    return method if which == "entities" else f"{method}.relations"


def model_of(kg) -> KGModel:
    """The scoring model a kg config section names (ValueError naming the field when it cannot be built)."""
    try:
        check_model(kg.model, kg.dim, kg.norm)
    except ValueError as e:
        raise ValueError(f"kg.model / kg.dim: {e}") from None
    return KGModel(kg.model, kg.dim, kg.norm, kg.gamma)


def settings_of(kg) -> TrainSettings:
    return TrainSettings(**{k: getattr(kg, k) for k in TRAIN_FIELDS})


def load_stage(lake: Lake | str, kg) -> tuple[TripleSet, dict]:
    """Read and encode the triples (s3:// with the lake's storage settings). Returns the triples and
    their figures (counts, content digest) for the driver."""
    t0 = time.perf_counter()
    with storage.using(Lake(lake).env):
        ts = load_triples(kg.train, kg.valid, kg.test, delimiter=kg.delimiter, has_header=kg.has_header,
                          unseen=kg.unseen, valid_share=kg.valid_share, test_share=kg.test_share, seed=kg.seed)
    return ts, {**ts.info, "digest": triples_digest(ts), "read_s": round(time.perf_counter() - t0, 3)}


def triples_digest(ts: TripleSet) -> str:
    """Content hash of the encoded input (ids and the three parts): what a training checkpoint is of."""
    h = hashlib.sha256()
    for names in (ts.entities, ts.relations):
        h.update("\0".join(map(str, names)).encode("utf-8", "surrogatepass"))
    for part in (ts.train, ts.valid, ts.test):
        h.update(np.ascontiguousarray(part, np.int64).tobytes())
    return h.hexdigest()[:24]


def blas_threads(threads: int):
    """Limit BLAS threads of the worker to the CPUs its task holds (threadpoolctl when installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:        # pragma: no cover - threadpoolctl ships with scikit-learn
        return nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def resumed_state(model: KGModel, ts: TripleSet, kg, handle: StageHandle | None) -> TrainState:
    """Fresh tables, or the tables and Adagrad state of the last epoch a killed attempt checkpointed."""
    if handle is not None and handle.resume_state is not None:
        st = TrainState(*(handle.load(n) for n in ("ent", "rel", "ent_acc", "rel_acc")))
        st.epoch = handle.resume_step("epoch")
        st.history = list(handle.resume_state.get("info", {}).get("history", []))
        return st
    ent, rel = init_tables(model, ts.num_entities, ts.num_relations, kg.seed, kg.init_scale)
    return new_state(ent, rel, kg.optimizer)


def train_stage(ts: TripleSet, kg, handle: StageHandle | None = None) -> tuple[tuple[np.ndarray, np.ndarray], dict]:
    """Train on ts.train; with a handle, checkpoint the tables after every epoch (a re-run continues
    after the last one). Returns ((entity table, relation table), info)."""
    model, s = model_of(kg), settings_of(kg)
    st = resumed_state(model, ts, kg, handle)
    start, t0 = st.epoch, time.perf_counter()

    def on_epoch(state: TrainState, info: dict) -> None:
        if handle is not None:
            handle.advance("epoch", state.epoch, {"ent": state.ent, "rel": state.rel, "ent_acc": state.ent_acc,
                                                  "rel_acc": state.rel_acc}, final=state.epoch == s.epochs,
                           info={"history": state.history})
        fault_point(f"after:train_epoch:{state.epoch}")

    with blas_threads(kg.threads):
        if kg.engine == "torch":
            from embedlake.workers.kg.torch_engine import train_torch
            train_torch(model, st, ts.train, s, ts.degrees(), on_epoch, kg.device, kg.threads)
        else:
            train(model, st, ts.train, s, ts.degrees(), on_epoch)
    seconds = time.perf_counter() - t0
    trained = (s.epochs - start) * ts.train.shape[0]
    info = {"model": model.name, "dim": model.dim, "engine": kg.engine, "epochs": s.epochs, "resumed_at_epoch": start,
            "train_s": round(seconds, 3), "triples_per_s": round(trained / max(seconds, 1e-9), 1),
            "final_loss": st.history[-1]["loss"] if st.history else None, "history": st.history}
    return (st.ent, st.rel), info


def evaluate_stage(ts: TripleSet, kg, trained: tuple, compress=None) -> dict:
    """Filtered MRR / Hits@1,3,10 on the test triples (and on valid when there are any); with
    compress.codecs, the test MRR / Hits@10 of each codec's entity table too (`codecs`)."""
    model = model_of(kg)
    ent, rel = trained[0], trained[1]
    known = ts.all_known()
    with blas_threads(kg.threads):
        test = evaluate(model, ent, rel, ts.test, known, kg.eval_batch)
        valid = evaluate(model, ent, rel, ts.valid, known, kg.eval_batch) if ts.valid.shape[0] else None
    out = {k: v for k, v in test.items() if k not in ("tail", "head")}
    out["tail_mrr"], out["head_mrr"] = test["tail"]["mrr"], test["head"]["mrr"]
    if valid is not None:
        out["valid_mrr"], out["valid_hits@10"] = valid["mrr"], valid["hits@10"]
    out["eval_s"] = out.pop("seconds")
    if compress is not None and compress.codecs:
        out["codecs"] = codec_metrics(ts, kg, compress.codecs, compress, trained)
    return out


def codec_metrics(ts: TripleSet, kg, codecs: list[str], compress, tables: tuple) -> dict:
    """MRR and Hits@10 of the test triples with the entity table replaced by its round trip through
    each codec (fp16, int8, int4, binary, pq, opq, lowrank; pq/opq keep row norms: scores use them).
    The relation table stays float32. {codec: {mrr, hits@10, bytes_per_vector}}."""
    from embedlake.workers.compress import codecs as cz
    model, ent = model_of(kg), tables[0]
    out = {}
    for name in codecs:
        params = {**cz.codec_params(name, compress), "normalize": False}
        sample = ent[np.random.default_rng(compress.seed).permutation(ent.shape[0])[:compress.train_sample or None]]
        state = cz.fit(name, sample, params)
        approx = cz.decode(name, cz.encode(name, ent, state, params), state, params, ent.shape[1])
        with blas_threads(kg.threads):
            m = evaluate(model, np.ascontiguousarray(approx, np.float32), tables[1], ts.test, ts.all_known(),
                         kg.eval_batch)
        out[name] = {"mrr": m["mrr"], "hits@10": m["hits@10"],
                     "bytes_per_vector": cz.bytes_per_vector(name, params, ent.shape[1])}
    return out


def write_table_stage(lake: Lake | str, dataset: str, method: str, run_id: str, ts: TripleSet, trained: tuple,
                      which: str) -> dict:
    """One of the two tables as Parquet: `entities` (entity, vector) or `relations` (relation, vector)."""
    lake = Lake(lake)
    ids, table = (ts.entities, trained[0]) if which == "entities" else (ts.relations, trained[1])
    rows = embeddings_table(np.asarray(ids, dtype=str), table, id_name="entity" if which == "entities" else "relation")
    rel = Lake.part_path("embeddings", dataset, table_method(method, which), run_id, 0)
    with storage.using(lake.env):
        return lake.write_parquet(rel, rows).to_dict()


# ---- compressed entity tables (flows/compress.py on a kg-<model> run) ------------------------------
def load_entity_table(lake: Lake | str, dataset: str, method: str, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(entity ids, float32 entity table) of a committed KG run: what `embedlake compress` encodes."""
    from embedlake.reader import read_table
    table, _ = read_table(lake, dataset, method, run_id, kind="entities")
    vec = table.column("vector").combine_chunks()
    ent = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, vec.type.list_size).astype(np.float32, copy=False)
    return table.column("entity").to_numpy(zero_copy_only=False), ent


def compressed_table_metrics(lake: Lake | str, manifest_fields: dict, source_config: dict, dataset: str,
                             method: str, run_id: str) -> dict:
    """Filtered test MRR / Hits of a written compressed entity table, read back from the lake and
    decoded, scored with the source run's float32 relation table on the source run's triples
    (re-read from its kg.train / valid / test). {"kg_mrr", "kg_hits@1", "kg_hits@3", "kg_hits@10"}."""
    from embedlake.config import KGConfig
    from embedlake.lake import Manifest
    from embedlake.reader import read_table
    from embedlake.workers.compress.store import table_from_manifest
    lake = Lake(lake)
    kg = KGConfig.model_validate(source_config["kg"])
    ts, _ = load_stage(lake, kg)
    table = table_from_manifest(lake, Manifest(**manifest_fields))
    rel_rows, _ = read_table(lake, dataset, method, run_id, kind="relations")
    rel_vec = rel_rows.column("vector").combine_chunks()
    rel = rel_vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, rel_vec.type.list_size).astype(np.float32)
    rel = rel[row_order(rel_rows.column("relation").to_numpy(zero_copy_only=False), ts.relations, "relation")]
    ent = table.decode()[row_order(np.asarray(table.ids), ts.entities, "entity")]
    with blas_threads(kg.threads):
        m = evaluate(model_of(kg), np.ascontiguousarray(ent, np.float32), rel, ts.test, ts.all_known(),
                     kg.eval_batch)
    return {f"kg_{k}": m[k] for k in ("mrr", "hits@1", "hits@3", "hits@10")}


def row_order(table_ids: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """Positions in a table (rows named by table_ids) of each of `ids`; a missing id is an error."""
    pos = {str(v): i for i, v in enumerate(table_ids.tolist())}
    missing = [str(v) for v in ids.tolist() if str(v) not in pos]
    if missing:
        raise ValueError(f"the compressed table has no row for {what} {missing[0]!r} of the source run's triples")
    return np.array([pos[str(v)] for v in ids.tolist()], np.int64)
