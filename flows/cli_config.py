"""Command-line options of the run commands -> one typed PipelineConfig.

Its own module so that the feature modules (compress, ops) and cli.py share it without importing
each other: cli.py imports the flows, the flows must not import cli.py back.
"""
from __future__ import annotations

import argparse
import json

from embedlake.config import PipelineConfig, load_config

CONFIG_HELP = ("Config overrides as section.key=value (YAML values), repeatable, e.g. -p train.dim=64 "
               "-p walk.walks_per_node=5. `embedlake config` lists every key with its default and help.")
DEBUG_HELP = "On an error, print the full traceback (and Prefect's log lines unshortened)."


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options every run command shares: --lake, --config, -p, --ray-address, --json, --debug."""
    p.add_argument("--lake", default=None, help="Lake root: local folder or s3://bucket/prefix (default: ./lake).")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML config file (sections as in "
                   "`embedlake config`). Default: none (built-in defaults).")
    p.add_argument("-p", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=CONFIG_HELP)
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray).")
    p.add_argument("--json", action="store_true", help="Print the run summary as JSON instead of a table.")
    # SUPPRESS: without the flag here, the value of `embedlake --debug CMD` is kept
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """Defaults < --config < -p overrides < the command's own flags (--edges, --lake, ...)."""
    ov = list(args.overrides)
    if getattr(args, "lake", None):
        ov.append(f"lake.uri={args.lake}")
    for flag, key in (("edges", "input.edges"), ("labels", "input.labels"), ("method", "method"),
                      ("dataset", "lake.dataset"), ("run_id", "lake.run_id"), ("ray_address", "ray.address")):
        v = getattr(args, flag, None)
        if v is not None:
            ov.append(f"{key}={json.dumps(v)}")
    return load_config(args.config, ov)
