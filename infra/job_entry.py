"""Entry point of a run submitted with `embedlake submit` (a Ray job's driver).

    python infra/job_entry.py embed-graph --edges ... --lake s3://bucket/lake

The job's working dir is the uploaded project. The installed package maps `embedlake.flows` to
`flows/` and so on (package-dir in pyproject.toml), which a plain folder on sys.path does not do;
`use_working_dir` registers those packages from the working dir, so the driver and every Ray
worker of the job (through runtime_env `worker_process_setup_hook`) run the uploaded code, also
on a cluster where embedlake is not installed (its dependencies must be).
If EMBEDLAKE_S3_BLOCK is set, S3 credentials are loaded from that Prefect Secret block.
"""
from __future__ import annotations

import importlib.util
import os
import sys

SUBPACKAGES = ("flows", "tasks", "workers", "infra")


def use_working_dir(root: str | None = None) -> str:
    """Import `embedlake` and its mapped subpackages from `root` (default: the current folder)."""
    root = os.path.abspath(root or os.getcwd())
    if not os.path.isfile(os.path.join(root, "embedlake", "__init__.py")):
        return ""
    if root not in sys.path:
        sys.path.insert(0, root)
    loaded = sys.modules.get("embedlake")
    if loaded is not None and not os.path.abspath(getattr(loaded, "__file__", "")).startswith(root):
        return ""        # an installed embedlake was imported first: leave it alone
    import embedlake
    for sub in SUBPACKAGES:
        name = f"embedlake.{sub}"
        if name in sys.modules:
            continue
        init = os.path.join(root, sub, "__init__.py")
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[os.path.join(root, sub)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        setattr(embedlake, sub, mod)
    return root


def main(argv: list[str] | None = None) -> int:
    root = use_working_dir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import embedlake
    print(f"embedlake job: code from {os.path.dirname(os.path.dirname(os.path.abspath(embedlake.__file__)))}"
          f"{' (uploaded working dir)' if root else ''}", flush=True)
    from embedlake.flows.cli import main as cli_main
    from embedlake.flows.ops import apply_s3_block
    from embedlake.tasks.runtime import configure_env
    configure_env()
    apply_s3_block(None)
    return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
