"""Evaluation reports: a markdown table and a plot from runs' metrics dicts.

Pure functions, used in three places: the evaluate task (lake files + Prefect artifacts), the
`embedlake report` command (any committed runs), and bench/bench_eval.py. The plot comes two
ways with the same content: ``quality_svg`` writes a small SVG by hand (what the evaluate stage
stores: no matplotlib import, so the report costs milliseconds wherever it runs, issue 22), and
``quality_plot`` draws a PNG with matplotlib's Agg canvas through the object API (no pyplot, no
global backend state) for the `embedlake report --png` command and the benches.

A *run* is a dict {dataset, method, run_id, metrics} with metrics as the embed_graph flow stores
them in the manifest (node_classification, link_prediction, reconstruction, stability). A
*compressed row* is a dict {dataset, method, codec, bytes_per_vector, recall_at_10, ...} as
``compressed_rows`` builds from the compress flow's manifests (method ``<method>.<codec>``).
"""
from __future__ import annotations

import base64
import html
import io
import math

# ---------------------------------------------------------------------------------------------
# collecting runs from the lake
# ---------------------------------------------------------------------------------------------


def run_dict(man) -> dict:
    """A committed manifest (Manifest or dict) -> the run dict the renderers take."""
    d = man if isinstance(man, dict) else man.__dict__
    extra = d.get("extra") or {}
    return {"dataset": d["dataset"], "method": d["method"], "run_id": d["run_id"], "metrics": d.get("metrics") or {},
            "dim": extra.get("dim"), "committed_at": d.get("committed_at", "")}


def is_table_manifest(man) -> bool:
    d = man if isinstance(man, dict) else man.__dict__
    return (d.get("extra") or {}).get("kind") == "tables"


def compressed_rows(manifests) -> list[dict]:
    """Quality-vs-bytes rows from compressed-table manifests (extra.kind == "tables")."""
    rows = []
    for man in manifests:
        d = man if isinstance(man, dict) else man.__dict__
        extra, m = d.get("extra") or {}, d.get("metrics") or {}
        if extra.get("kind") != "tables":
            continue
        src = extra.get("source") or {}
        nc = m.get("node_classification") or {}
        rows.append({"dataset": d["dataset"], "method": src.get("method", d["method"].split(".")[0]),
                     "source_run": src.get("run_id"), "run_id": d["run_id"], "codec": extra.get("codec"),
                     "dim": extra.get("dim"), "bytes_per_vector": extra.get("bytes_per_vector",
                                                                            m.get("bytes_per_vector")),
                     "ratio": extra.get("ratio", m.get("ratio")), "recall_at_10": m.get("recall_at_10"),
                     "recall_at_10_rerank": m.get("recall_at_10_rerank"),
                     "micro_f1": nc.get("micro_f1"), "micro_f1_change": m.get("micro_f1_change")})
    return rows


def collect(lake, dataset: str | None = None, method: str | None = None, runs: list[str] | None = None,
            exclude: tuple[str, str] | None = None) -> tuple[list[dict], list[dict]]:
    """(run dicts, compressed rows) of committed runs: every dataset / method when not named,
    the latest run of each method unless ``runs`` names them; compressed tables of the selected
    methods (their latest table per codec). ``exclude`` = (method, run_id) leaves one run out."""
    from embedlake.lake import Lake
    lake = Lake(lake)
    out_runs: list[dict] = []
    tables: list = []
    for ds in ([dataset] if dataset else lake.datasets()):
        for m in ([method] if method else lake.methods(ds)):
            mans = lake.manifests(ds, m)
            if method and "." not in m:
                tables += [ms[-1] for t in lake.methods(ds) if t.startswith(m + ".")
                           for ms in [lake.manifests(ds, t)] if ms and is_table_manifest(ms[-1])]
            if not mans:
                continue
            if is_table_manifest(mans[-1]):
                if not method:
                    tables.append(mans[-1])
                continue
            if not runs:                     # walk-only runs (method <m>-walks) have no table to evaluate
                mans = [x for x in mans if x.files.get("embeddings")] or mans
            chosen = [x for x in mans if x.run_id in runs] if runs else [mans[-1]]
            if runs and len(chosen) < len(runs):
                from embedlake.errors import LakeError
                missing = sorted(set(runs) - {x.run_id for x in chosen})
                raise LakeError(f"run(s) {', '.join(missing)} of {ds}/{m} are not committed in {lake.uri}")
            out_runs += [run_dict(x) for x in chosen if (exclude is None or (x.method, x.run_id) != tuple(exclude))
                         and (runs or x.files.get("embeddings"))]
    return out_runs, compressed_rows(tables)


# ---------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------

def _f(v, nd=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return f"{v:.{nd}f}"


def _pct(key: str) -> str:
    try:
        return f"{float(key):.0%}"
    except ValueError:
        return key


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _label_cols(r: dict) -> list[str]:
    return [r["dataset"], r["method"], f"`{r['run_id']}`"]


def _keys(runs, task, metric) -> list[str]:
    keys: list[str] = []
    for r in runs:
        for k in ((r["metrics"].get(task) or {}).get(metric) or {}):
            if k not in keys:
                keys.append(k)
    return keys


def node_classification_md(runs: list[dict]) -> str | None:
    rs = [r for r in runs if (r["metrics"].get("node_classification") or {}).get("micro_f1")]
    if not rs:
        return None
    ratios = _keys(rs, "node_classification", "micro_f1")
    header = ["dataset", "method", "run"] + [f"Micro-F1 {_pct(k)}" for k in ratios] + \
             [f"Macro-F1 {_pct(k)}" for k in ratios]
    rows = []
    for r in rs:
        nc = r["metrics"]["node_classification"]
        cells = []
        for what in ("micro_f1", "macro_f1"):
            for k in ratios:
                ci = (nc.get(what + "_ci95") or {}).get(k)
                v, s = nc[what].get(k), ci if ci is not None else (nc.get(what + "_std") or {}).get(k)
                cells.append(_f(v) + (f" ± {s:.3f}" if v is not None and s is not None else ""))
        rows.append(_label_cols(r) + cells)
    reps = sorted({int(r["metrics"]["node_classification"].get("repeats", 0)) for r in rs})
    sampled = [f"{r['dataset']}: {int(nc['num_nodes']):,} of {int(nc['labelled_nodes']):,}" for r in rs
               if (nc := r["metrics"]["node_classification"]).get("sampled")]
    note = (f"\n\nScored on a seeded sample of the labelled nodes (eval.classify_max_nodes): {'; '.join(sampled)}."
            if sampled else "")
    if any(r["metrics"]["node_classification"].get("micro_f1_ci95") for r in rs):
        note += ("\n\neval.mode=sampled: ± is the 95 % interval of a bootstrap over each split's test nodes "
                 "(eval.mode=exact scores every repeat; ± is then the std over the repeats).")
    return (f"**Node classification** (one-vs-rest logistic regression; mean ± std over "
            f"{'/'.join(map(str, reps))} seeded splits; column = labelled share)\n\n" + _table(header, rows) + note)


def best_operator(lp: dict) -> str | None:
    auc = lp.get("roc_auc") or {}
    return max(auc, key=lambda k: auc[k]) if auc else None


def link_prediction_md(runs: list[dict]) -> str | None:
    rs = [r for r in runs if (r["metrics"].get("link_prediction") or {}).get("roc_auc")]
    if not rs:
        return None
    ops = _keys(rs, "link_prediction", "roc_auc")
    hits = sorted({k for r in rs for k in r["metrics"]["link_prediction"] if k.startswith("hits@")},
                  key=lambda k: int(k.split("@")[1]))
    header = ["dataset", "method", "run"] + [f"AUC {op}" for op in ops] + ["best", "MRR"] + \
             [h.replace("hits", "Hits") for h in hits]
    rows = []
    for r in rs:
        lp = r["metrics"]["link_prediction"]
        b = best_operator(lp)
        rows.append(_label_cols(r) + [_f(lp["roc_auc"].get(op)) for op in ops] + [b, _f(lp["mrr"].get(b))] +
                    [_f(lp[h].get(b)) for h in hits])
    share = {r["metrics"]["link_prediction"].get("test_share") for r in rs} - {None}
    npos = {r["metrics"]["link_prediction"].get("num_pos") for r in rs} - {None}
    what = f"{'/'.join(f'{s:.0%}' for s in sorted(share))} of the edges held out before embedding" if share \
        else "held-out edges"
    return (f"**Link prediction** (ROC-AUC; {what}, {'/'.join(map(str, sorted(npos)))} positives vs as many "
            f"sampled non-edges; MRR and Hits@K of the best operator, ranked against all non-edges)\n\n"
            + _table(header, rows))


def reconstruction_md(runs: list[dict]) -> str | None:
    rs = [r for r in runs if (r["metrics"].get("reconstruction") or {}).get("map")]
    if not rs:
        return None
    hops = _keys(rs, "reconstruction", "map")
    header = ["dataset", "method", "run"] + [f"mAP {h}-hop" for h in hops] + ["queries"]
    rows = []
    for r in rs:
        rc = r["metrics"]["reconstruction"]
        base = rc.get("random_baseline") or {}
        rows.append(_label_cols(r) + [_f(rc["map"].get(h)) + (f" ({base[h]:.3f})" if h in base else "")
                                      for h in hops] + [str(rc.get("queries", "–"))])
    sampled = [f"{r['dataset']}: {int(rc['queries']):,} of {int(rc['eligible']):,}" for r in rs
               if (rc := r["metrics"]["reconstruction"]).get("eligible") and rc.get("queries", 0) < rc["eligible"]]
    note = (f"\n\nSampled query nodes (eval.mode=sampled; mAP ± 95 % interval in metrics ci95): "
            f"{'; '.join(sampled)}." if sampled else "")
    return ("**Graph reconstruction** (mAP of the nodes within h hops, ranked by cosine; a random ranking's "
            "mAP in brackets)\n\n" + _table(header, rows) + note)


def stability_md(runs: list[dict]) -> str | None:
    rs = [r for r in runs if r["metrics"].get("stability")]
    if not rs:
        return None
    header = ["dataset", "method", "run", "aligned to", "shared nodes", "top-10 overlap", "distance before",
              "distance after"]
    rows = []
    for r in rs:
        s = r["metrics"]["stability"]
        ov = next((v for k, v in s.items() if k.startswith("neighbourhood_overlap")), None)
        to = f"`{s.get('reference_run', '?')}` ({s.get('reference_kind', '')})"
        if s.get("skipped"):
            to += f": not aligned, {s['skipped']}"
        rows.append(_label_cols(r) + [to, str(s.get("shared_nodes", "–")), _f(ov), _f(s.get("distance_before")),
                                      _f(s.get("distance_after"))])
    return ("**Stability vs the previous run** (orthogonal Procrustes on the shared nodes; distance = "
            "|X - X_ref|_F / |X_ref|_F; overlap = mean Jaccard of top-10 cosine neighbours)\n\n"
            + _table(header, rows))


def compressed_md(rows: list[dict]) -> str | None:
    if not rows:
        return None
    ks = []
    for r in rows:
        for k in (r.get("micro_f1_change") or {}):
            if k not in ks:
                ks.append(k)
    header = ["dataset", "method", "codec", "bytes/vector", "ratio", "recall@10", "recall@10 re-scored"] + \
             [f"Micro-F1 change {_pct(k)}" for k in ks]
    body = []
    for r in sorted(rows, key=lambda r: (r["dataset"], r["method"], -(r.get("bytes_per_vector") or 0))):
        ch = r.get("micro_f1_change") or {}
        body.append([r["dataset"], r["method"], str(r.get("codec")), str(r.get("bytes_per_vector", "–")),
                     _f(r.get("ratio"), 1), _f(r.get("recall_at_10")), _f(r.get("recall_at_10_rerank"))] +
                    [(f"{ch[k]:+.4f}" if ch.get(k) is not None else "–") for k in ks])
    return "**Compressed tables** (recall@10 of exact cosine neighbours searched in the table)\n\n" + \
        _table(header, body)


def report_markdown(runs: list[dict], compressed: list[dict] | None = None, title: str | None = None) -> str:
    """Every section that has figures, one table each; runs are rows."""
    parts = [f"### {title}"] if title else []
    for sec in (node_classification_md(runs), link_prediction_md(runs), reconstruction_md(runs),
                stability_md(runs), compressed_md(compressed or [])):
        if sec:
            parts.append(sec)
    if len(parts) == (1 if title else 0):
        parts.append("_no evaluation figures in these runs_")
    return "\n\n".join(parts) + "\n"


def with_png(markdown: str, png: bytes, alt: str = "quality") -> str:
    """The markdown with the plot embedded as a data: URI (what a Prefect markdown artifact shows
    without the browser having to reach the lake)."""
    return markdown + f"\n![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})\n"


def with_svg(markdown: str, svg: str, alt: str = "quality") -> str:
    """The markdown with the SVG plot embedded as a data: URI (base64, so no character of the SVG
    can break the markdown link)."""
    return markdown + f"\n![{alt}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})\n"


# ---------------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------------

def quality_figures(run: dict) -> dict[str, float]:
    """Headline figures of one run, in a fixed order: Micro/Macro-F1 per ratio, best LP AUC, 1-hop mAP."""
    m, out = run["metrics"], {}
    nc = m.get("node_classification") or {}
    for k, v in (nc.get("micro_f1") or {}).items():
        out[f"Micro-F1 {_pct(k)}"] = v
    for k, v in (nc.get("macro_f1") or {}).items():
        out[f"Macro-F1 {_pct(k)}"] = v
    lp = m.get("link_prediction") or {}
    b = best_operator(lp)
    if b:
        out["LP AUC"] = lp["roc_auc"][b]
    rc = (m.get("reconstruction") or {}).get("map") or {}
    for h in sorted(rc, key=lambda h: int(h)):
        out[f"mAP {h}-hop"] = rc[h]
    st = m.get("stability") or {}
    ov = next((v for k, v in st.items() if k.startswith("neighbourhood_overlap")), None)
    if ov is not None:
        out["top-10 overlap"] = ov
    return out


def _run_labels(runs: list[dict]) -> list[str]:
    base = [f"{r['method']}" if len({x['dataset'] for x in runs}) == 1 else f"{r['dataset']}/{r['method']}"
            for r in runs]
    return [b if base.count(b) == 1 else f"{b} {r['run_id'][-6:]}" for b, r in zip(base, runs)]


def plotted_rows(compressed: list[dict] | None) -> list[dict]:
    """The compressed rows a plot shows: learned tables (hash, compose, ...) are separate training
    runs, not reconstructions of the source table, so their recall@10 against it is ~0 by
    construction (the markdown table has their F1). The codecs module (numba, scipy) is imported
    only when there are rows: a run's report without compressed tables stays import-free."""
    if not compressed:
        return []
    from embedlake.workers.compress.codecs import GRAPH_TRAINED
    return [r for r in compressed if r.get("bytes_per_vector") and r.get("recall_at_10") is not None
            and r.get("codec") not in GRAPH_TRAINED]


def quality_plot(runs: list[dict], compressed: list[dict] | None = None, title: str = "quality",
                 dpi: int = 100) -> bytes:
    """PNG bytes: grouped bars of each run's headline figures (quality per method) and, when
    ``compressed`` rows are given, recall@10 against bytes per vector (log scale) per codec."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    compressed = plotted_rows(compressed)
    ncols = 1 + bool(compressed)
    fig = Figure(figsize=(7.5 * ncols, 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    _quality_bars(fig.add_subplot(1, ncols, 1), runs, title)
    if compressed:
        _recall_vs_bytes(fig.add_subplot(1, 2, 2), compressed)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _quality_bars(ax, runs: list[dict], title: str) -> None:
    """Left panel: one group of bars per figure name, one bar per run (runs without figures left
    out), the legend above the bars since every figure lies in [0, 1]."""
    runs = [r for r in runs if quality_figures(r)]
    figs = [quality_figures(r) for r in runs]
    names: list[str] = []
    for f in figs:
        names += [k for k in f if k not in names]
    if names:
        width = 0.8 / max(len(runs), 1)
        for i, (lab, f) in enumerate(zip(_run_labels(runs), figs)):
            xs = [j + (i - (len(runs) - 1) / 2) * width for j, k in enumerate(names) if k in f]
            ax.bar(xs, [f[k] for k in names if k in f], width=width, label=lab)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ncol = min(len(runs), 3)                     # legend above the bars (figures are in [0, 1])
        ax.set_ylim(0, 1.05 + 0.07 * -(-len(runs) // ncol))
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.legend(fontsize=7, ncol=ncol, loc="upper center")
    else:
        ax.text(0.5, 0.5, "no figures", ha="center", va="center")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _recall_vs_bytes(bx, compressed: list[dict]) -> None:
    """Right panel: recall@10 against bytes per vector (log 2 scale), one line per method with each
    codec annotated, re-scored recall as squares and the float32 table as a star at recall 1."""
    for meth in sorted({r["method"] for r in compressed}):
        rs = sorted((r for r in compressed if r["method"] == meth), key=lambda r: r["bytes_per_vector"])
        xs = [r["bytes_per_vector"] for r in rs]
        bx.plot(xs, [r["recall_at_10"] for r in rs], "o-", label=f"{meth} recall@10")
        rr = [(r["bytes_per_vector"], r["recall_at_10_rerank"]) for r in rs if r.get("recall_at_10_rerank")]
        if rr:
            bx.plot(*zip(*rr), "s", label=f"{meth} re-scored")
        for r in rs:
            bx.annotate(str(r["codec"]), (r["bytes_per_vector"], r["recall_at_10"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
        dims = {r.get("dim") for r in rs} - {None}
        if dims:
            full = 4 * max(dims)
            bx.plot([full], [1.0], "k*", label=f"float32 ({full} B)" if meth == sorted(
                {r["method"] for r in compressed})[0] else None)
    bx.set_xscale("log", base=2)
    bx.set_xlabel("bytes per vector")
    bx.set_ylabel("recall@10 vs the full table")
    bx.set_ylim(0, 1.05)
    bx.set_title("quality vs bytes per vector", fontsize=10)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)


# ---------------------------------------------------------------------------------------------
# the same plot as a hand-written SVG (no plotting library)
# ---------------------------------------------------------------------------------------------

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")                # matplotlib's default cycle, so both plots agree
PANEL_W, PANEL_H = 600, 360                     # one panel, in SVG user units (px)
LEFT, RIGHT, TOP, BOTTOM = 50, 585, 30, 250     # plot area inside a panel; x labels below BOTTOM


def _text(x: float, y: float, s: str, size: int = 10, anchor: str = "middle", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
            f'{html.escape(str(s))}</text>')


def _y_axis(ymax: float, ticks: list[float], label: str | None = None) -> list[str]:
    """Grid lines and tick labels of a [0, ymax] axis; returns the SVG elements."""
    out = []
    for t in ticks:
        y = BOTTOM - t / ymax * (BOTTOM - TOP)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(_text(LEFT - 4, y + 3, f"{t:.1f}", 9, "end"))
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{BOTTOM - TOP}" fill="none" '
               f'stroke="#333"/>')
    if label:
        out.append(_text(12, (TOP + BOTTOM) / 2, label, 10, extra=f' transform="rotate(-90 12 {(TOP + BOTTOM) / 2})"'))
    return out


def _legend(entries: list[tuple[str, str]], y: float) -> list[str]:
    """One row of colour swatches and labels from LEFT (wrapping at RIGHT), at height ``y``."""
    out, x = [], LEFT + 6
    for colour, label in entries:
        w = 16 + 6 * len(label)
        if x + w > RIGHT and x > LEFT + 6:
            x, y = LEFT + 6, y + 12
        out += [f'<rect x="{x}" y="{y - 8}" width="9" height="9" fill="{colour}"/>', _text(x + 12, y, label, 8, "start")]
        x += w
    return out


def bars_svg(runs: list[dict], title: str) -> str:
    """Left panel: one group of bars per figure name, one bar per run (runs without figures left
    out); figures lie in [0, 1], the legend sits above the bars."""
    runs = [r for r in runs if quality_figures(r)]
    figs = [quality_figures(r) for r in runs]
    names: list[str] = []
    for f in figs:
        names += [k for k in f if k not in names]
    out = [_text(PANEL_W / 2, 18, title, 12)]
    if not names:
        return "".join(out + _y_axis(1.0, []) + [_text((LEFT + RIGHT) / 2, (TOP + BOTTOM) / 2, "no figures")])
    ymax = 1.05 + 0.07 * -(-len(runs) // 3)
    out += _y_axis(ymax, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    slot = (RIGHT - LEFT) / len(names)
    width = 0.8 * slot / len(runs)
    for i, f in enumerate(figs):
        colour = COLOURS[i % len(COLOURS)]
        for j, k in enumerate(names):
            if k in f and f[k] is not None:
                h = max(float(f[k]), 0.0) / ymax * (BOTTOM - TOP)
                x = LEFT + (j + 0.1) * slot + i * width
                out.append(f'<rect x="{x:.1f}" y="{BOTTOM - h:.1f}" width="{width:.1f}" height="{h:.1f}" '
                           f'fill="{colour}"><title>{html.escape(k)}: {float(f[k]):.3f}</title></rect>')
    for j, k in enumerate(names):
        x = LEFT + (j + 0.5) * slot
        out.append(_text(x, BOTTOM + 12, k, 8, "end", f' transform="rotate(-35 {x:.1f} {BOTTOM + 12})"'))
    out += _legend([(COLOURS[i % len(COLOURS)], lab) for i, lab in enumerate(_run_labels(runs))], TOP + 12)
    return "".join(out)


def recall_svg(compressed: list[dict]) -> str:
    """Right panel: recall@10 against bytes per vector (log 2 scale), one line per method with each
    codec named, re-scored recall as squares and the float32 table as a star at recall 1."""
    methods = sorted({r["method"] for r in compressed})
    full = {m: 4 * max(d) for m in methods if (d := {r.get("dim") for r in compressed if r["method"] == m} - {None})}
    xs = [math.log2(r["bytes_per_vector"]) for r in compressed] + [math.log2(v) for v in full.values()]
    lo, hi = math.floor(min(xs)), math.ceil(max(xs)) + (min(xs) == max(xs))
    def px(b: float) -> float:
        return LEFT + 10 + (math.log2(b) - lo) / (hi - lo) * (RIGHT - LEFT - 20)

    def py(v: float) -> float:
        return BOTTOM - v / 1.05 * (BOTTOM - TOP)
    out = [_text(PANEL_W / 2, 18, "quality vs bytes per vector", 12)] + _y_axis(1.05, [0, 0.2, 0.4, 0.6, 0.8, 1.0],
                                                                                    "recall@10 vs the full table")
    for e in range(lo, hi + 1):
        out.append(_text(px(2 ** e), BOTTOM + 12, f"{2 ** e:g}", 8))
    out.append(_text((LEFT + RIGHT) / 2, BOTTOM + 28, "bytes per vector (log 2 scale)", 10))
    legend = []
    for i, meth in enumerate(methods):
        colour = COLOURS[i % len(COLOURS)]
        rs = sorted((r for r in compressed if r["method"] == meth), key=lambda r: r["bytes_per_vector"])
        pts = [(px(r["bytes_per_vector"]), py(r["recall_at_10"])) for r in rs]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        for (x, y), r in zip(pts, rs):
            out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>', _text(x + 4, y - 4, r["codec"], 7, "start")]
            if r.get("recall_at_10_rerank"):
                out.append(f'<rect x="{x - 3:.1f}" y="{py(r["recall_at_10_rerank"]) - 3:.1f}" width="6" height="6" '
                           f'fill="none" stroke="{colour}"/>')
        if meth in full:
            out.append(_text(px(full[meth]), py(1.0) + 4, "\u2605", 12, extra=' fill="#000"'))
        legend.append((colour, f"{meth} recall@10 (squares: re-scored)"))
    out += _legend(legend + [("#000", "float32 table (star)")] * bool(full), TOP + 12)
    return "".join(out)


def quality_svg(runs: list[dict], compressed: list[dict] | None = None, title: str = "quality") -> str:
    """SVG text of the plot ``quality_plot`` draws (same panels and figures), written by hand: the
    evaluate stage stores it as quality.svg without importing a plotting library."""
    compressed = plotted_rows(compressed)
    panels = [bars_svg(runs, title)] + ([recall_svg(compressed)] if compressed else [])
    width = PANEL_W * len(panels)
    body = "".join(f'<g transform="translate({i * PANEL_W},0)">{p}</g>' for i, p in enumerate(panels))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H}" '
            f'viewBox="0 0 {width} {PANEL_H}" font-family="DejaVu Sans, Arial, sans-serif">'
            f'<rect width="{width}" height="{PANEL_H}" fill="#fff"/>{body}</svg>\n')
