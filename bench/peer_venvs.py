"""Where the benchmark peers live: the venvs that ``../shared/bench/setup-peers.sh DIR [--kge]`` builds.

One way for every benchmark script: ``--peers DIR`` if given, else ``$EMBEDLAKE_PEERS``, else
``../peers-venv`` beside the checkout. ``DIR`` holds PecanPy, gensim, Faiss and scikit-learn;
``DIR-grape`` GRAPE (ensmallen); ``DIR-kge`` PyKEEN. A missing venv stops the script with one line
that says how to build it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCH = ROOT.parent / "shared" / "bench"
ENV = "EMBEDLAKE_PEERS"
SUFFIX = {"peers": "", "grape": "-grape", "kge": "-kge"}


def add_peers_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--peers", default=None, metavar="DIR",
                    help=f"the peers venv built by setup-peers.sh (default: ${ENV}, else ../peers-venv)")


def peers_dir(option: str | None = None) -> Path:
    """The peers venv folder: the --peers option, else $EMBEDLAKE_PEERS, else ../peers-venv."""
    return Path(option or os.environ.get(ENV) or ROOT.parent / "peers-venv")


def peer_python(kind: str = "peers", option: str | None = None, required: bool = True) -> Path | None:
    """The Python of one peer venv (peers | grape | kge). Missing and required: one line, exit 2;
    missing and not required: None (the benchmark leaves that peer out)."""
    base = peers_dir(option)
    exe = Path(f"{base}{SUFFIX[kind]}") / "bin" / "python"
    if exe.exists():
        return exe
    if not required:
        return None
    flag = " --kge" if kind == "kge" else ""
    sys.exit(f"error: peer venv {exe.parent.parent} is missing: build it with "
             f"`bash {SHARED_BENCH / 'setup-peers.sh'} {base}{flag}` (or point --peers / ${ENV} at it)")


def peer_script(name: str) -> Path:
    """A peer runner script of ../shared/bench (peers.py, grape_peer.py, kge_peer.py)."""
    return SHARED_BENCH / name


def run_grape(dataset_dir: Path, option: str | None = None, skip: str = "", timeout: int = 3600) -> dict:
    """GRAPE (../shared/bench/grape_peer.py in the grape venv) on one shared dataset: walk
    throughput for DeepWalk and node2vec (10 x 80, p=0.25 q=4) and, unless skip has "train", its
    SkipGram end to end. {"error": ...} when the peer fails (the benchmark still prints ours)."""
    import json
    import subprocess
    exe = peer_python("grape", option)
    cmd = [str(exe), str(peer_script("grape_peer.py")), str(dataset_dir)] + (["--skip", skip] if skip else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["(no output)"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])
