"""Static checks that keep the code layout honest (issue 15 standards).

Read-only and fast: every check parses the sources with `ast` and imports none of the project's code, so
it runs in about a second and cannot be fooled by what a module does at import time. Each check collects
every violation in the repository and reports them all in one failure, so one run shows the whole list.

The repository checked is the folder this file's parent lives in (the checkout root). To check another
checkout, run `python tests/test_layout.py [ROOT]`: it prints every violation and exits 1 if there are any.

Checks:
  - no import cycles among embedlake's modules, imports made inside functions included (they run late,
    but a cycle through them still ties the modules together and breaks as soon as one moves to the top);
  - workers/ never imports prefect or ray (workers are pure compute: tasks/ is what makes them Ray work);
  - no private name (`_x`) imported from another module outside tests/ (a private name is free to change
    without notice; importing it makes it a hidden API);
  - no function over 60 lines outside numba kernels (decorators excluded);
  - no module under workers/ that only re-exports names from elsewhere (a shim: one concept, two homes).
"""
from __future__ import annotations

import ast
import sys
import tomllib
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
NUMBA_KERNEL_DECORATORS = frozenset({"njit", "jit", "vectorize", "guvectorize"})
FORBIDDEN_IN_WORKERS = frozenset({"prefect", "ray"})
WORKERS_DIR = "workers"
# Folders that hold code but no package: checked for private imports like the packages are.
EXTRA_CODE_DIRS = ("bench",)
DYNAMIC_IMPORT_FUNCTIONS = frozenset({"import_module", "__import__"})


@dataclass(frozen=True)
class Module:
    """One embedlake module: its dotted name, its file, and whether it is a package (__init__.py)."""
    name: str
    path: Path
    is_package: bool


@dataclass(frozen=True)
class ImportEdge:
    """`src` imports `dst` at `lineno` of src's file (at module level or inside a function)."""
    src: str
    dst: str
    lineno: int


@lru_cache(maxsize=None)
def parse(path: Path) -> ast.Module:
    """The syntax tree of one file (cached: every check reads the same files)."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def package_dirs(root: Path) -> dict[str, Path]:
    """pyproject's [tool.setuptools] package-dir: dotted package -> folder (embedlake.flows -> flows/)."""
    cfg = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    return {pkg: root / folder for pkg, folder in cfg["tool"]["setuptools"]["package-dir"].items()}


def source_files(folder: Path) -> list[Path]:
    """Every .py file under `folder`, bytecode caches left out, in a stable order."""
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def modules(root: Path) -> dict[str, Module]:
    """Every embedlake module by dotted name, mapped from its file through pyproject's package-dir."""
    found: dict[str, Module] = {}
    for pkg, folder in package_dirs(root).items():
        for path in source_files(folder):
            parts = path.relative_to(folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join((pkg,) + (parts[:-1] if is_package else parts))
            found.setdefault(name, Module(name, path, is_package))
    return found


def rel(root: Path, path: Path) -> str:
    """A path as the report prints it: relative to the checkout root."""
    return path.relative_to(root).as_posix()


def absolute_base(module: Module, node: ast.ImportFrom) -> str:
    """The absolute dotted name a `from X import ...` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def loop_string_values(tree: ast.Module, call: ast.Call, name: str) -> list[str]:
    """The strings a loop variable takes when it iterates a literal list, or a module-level constant list
    (`for name in SUBCOMMAND_MODULES: import_module(name)`). Empty when that cannot be read statically."""
    constants: dict[str, ast.expr] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            constants[stmt.targets[0].id] = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            constants[stmt.target.id] = stmt.value
    for loop in ast.walk(tree):
        if not (isinstance(loop, ast.For) and isinstance(loop.target, ast.Name) and loop.target.id == name):
            continue
        if not any(node is call for node in ast.walk(loop)):
            continue
        values = loop.iter
        if isinstance(values, ast.Name):
            values = constants.get(values.id)
        if isinstance(values, (ast.List, ast.Tuple, ast.Set)):
            return [e.value for e in values.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def dynamic_import_targets(tree: ast.Module) -> list[tuple[str, int]]:
    """Modules named to importlib.import_module / __import__ with a literal, or a loop over literals."""
    targets = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or not call.args:
            continue
        func = call.func
        fname = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if fname not in DYNAMIC_IMPORT_FUNCTIONS:
            continue
        arg = call.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            targets.append((arg.value, call.lineno))
        elif isinstance(arg, ast.Name):
            targets.extend((value, call.lineno) for value in loop_string_values(tree, call, arg.id))
    return targets


def imported_names(module: Module) -> list[tuple[str, int]]:
    """Every dotted name `module` imports, anywhere in its file (functions included), with its line.
    `from pkg import mod` yields pkg.mod (a module when one exists by that name; else pkg.mod is an
    attribute and the caller falls back to pkg)."""
    found = []
    tree = parse(module.path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = absolute_base(module, node)
            found.extend((f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno)
                         for alias in node.names)
    found.extend(dynamic_import_targets(tree))
    return found


def import_edges(root: Path) -> list[ImportEdge]:
    """The module graph: one edge per embedlake module an import statement loads. Importing a.b.c loads
    a, a.b and a.b.c, so each of them that is an embedlake module is an edge, except the importer's own
    packages (Python has already started those before the importer's first line runs)."""
    mods = modules(root)
    edges = []
    for module in mods.values():
        own_packages = {module.name.rsplit(".", k)[0] for k in range(module.name.count(".") + 1)}
        for dotted, lineno in imported_names(module):
            parts = dotted.split(".")
            loaded = {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
            edges.extend(ImportEdge(module.name, dst, lineno) for dst in sorted(loaded & mods.keys() - own_packages))
    return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of a directed graph (each a sorted list of nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def shortest_path(graph: dict[str, set[str]], start: str, goal: str, allowed: set[str]) -> list[str]:
    """A shortest path start -> goal inside `allowed` (breadth first; ties broken by name)."""
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        if v == goal:
            break
        for w in sorted(graph.get(v, ()) & allowed):
            if w not in came_from:
                came_from[w] = v
                queue.append(w)
    path, v = [], goal
    while v is not None:
        path.append(v)
        v = came_from[v]
    return path[::-1]


def import_cycles(root: Path) -> list[str]:
    """Each import cycle, once: for every import that lies on a cycle, the shortest cycle through it,
    printed with the file:line of each import so that the one to cut is easy to find."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    lines: dict[tuple[str, str], list[int]] = {}
    for e in import_edges(root):
        if e.src != e.dst:
            graph.setdefault(e.src, set()).add(e.dst)
            lines.setdefault((e.src, e.dst), []).append(e.lineno)
    cycles: dict[tuple[str, ...], str] = {}
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        members = set(component)
        for u in component:
            for v in sorted(graph[u] & members):
                ring = [u] + shortest_path(graph, v, u, members)[:-1]
                turn = ring.index(min(ring))
                key = tuple(ring[turn:] + ring[:turn])
                if key in cycles:
                    continue
                hops = [key[0]]
                for a, b in zip(key, key[1:] + key[:1]):
                    at = ",".join(str(n) for n in sorted(set(lines[(a, b)])))
                    hops.append(f"{b} ({rel(root, mods[a].path)}:{at})")
                cycles[key] = "import cycle: " + " -> ".join(hops)
    return sorted(cycles.values())


def workers_importing_prefect_or_ray(root: Path) -> list[str]:
    """Every import of prefect or ray (static or by importlib) in a file under workers/."""
    folder = root / WORKERS_DIR
    found = []
    for path in source_files(folder):
        tree = parse(path)
        names = [(alias.name, node.lineno) for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names]
        names += [(node.module, node.lineno) for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and not node.level and node.module]
        names += dynamic_import_targets(tree)
        found += [f"{rel(root, path)}:{lineno} imports {name} (workers/ is pure compute)"
                  for name, lineno in names if name.split(".")[0] in FORBIDDEN_IN_WORKERS]
    return found


def code_files(root: Path) -> list[Path]:
    """Every .py file of the packages (pyproject's package-dir) and of the bench folder; not tests/."""
    files = {p for folder in package_dirs(root).values() for p in source_files(folder)}
    files |= {p for extra in EXTRA_CODE_DIRS if (root / extra).is_dir() for p in source_files(root / extra)}
    return sorted(files)


def is_private(name: str) -> bool:
    """`_x` is private; dunder names (`__version__`) are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(root: Path) -> list[str]:
    """Every `from a.b import _x` outside tests/: the private name of another module used as its API."""
    found = []
    for path in code_files(root):
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                found += [f"{rel(root, path)}:{node.lineno} imports private {alias.name} from "
                          f"{'.' * node.level}{node.module or ''}" for alias in node.names if is_private(alias.name)]
    return found


def import_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted name it stands for (`import numba as nb`: nb -> numba;
    `from numba import njit`: njit -> numba.njit)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def dotted(expr: ast.expr) -> str:
    """`a.b.c` of a Name/Attribute chain (calls stripped: `@njit(cache=True)` -> njit); '' otherwise."""
    if isinstance(expr, ast.Call):
        return dotted(expr.func)
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        base = dotted(expr.value)
        return f"{base}.{expr.attr}" if base else ""
    return ""


def is_numba_kernel(func: ast.FunctionDef | ast.AsyncFunctionDef, aliases: dict[str, str]) -> bool:
    """Decorated with numba.njit / jit / vectorize / guvectorize (under any import alias)."""
    for decorator in func.decorator_list:
        name = dotted(decorator)
        if not name:
            continue
        head, _, tail = name.partition(".")
        full = aliases.get(head, head) + (f".{tail}" if tail else "")
        if full.split(".")[0] == "numba" and full.rsplit(".", 1)[-1] in NUMBA_KERNEL_DECORATORS:
            return True
    return False


def long_functions(root: Path) -> list[str]:
    """Every function (methods and nested ones included) longer than MAX_FUNCTION_LINES, counted from
    its `def` line to its last line, in the packages; numba kernels are exempt."""
    found = []
    for folder in package_dirs(root).values():
        for path in source_files(folder):
            tree = parse(path)
            aliases = import_aliases(tree)
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or is_numba_kernel(node, aliases):
                    continue
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{rel(root, path)}:{node.lineno} {node.name} is {length} lines "
                                 f"(max {MAX_FUNCTION_LINES})")
    return found


def is_reexport(stmt: ast.stmt) -> bool:
    """An import, `__all__ = ...`, or `name = other.name` (an alias of something defined elsewhere)."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if all(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
        return isinstance(stmt.value, (ast.Name, ast.Attribute))
    return False


def reexport_shims(root: Path) -> list[str]:
    """Every module under workers/ whose body (docstring and `from __future__` aside) is nothing but
    imports and aliases: it holds no code of its own, so the concept it names lives somewhere else."""
    folder = root / WORKERS_DIR
    found = []
    for path in source_files(folder):
        body = parse(path).body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        body = [s for s in body if not (isinstance(s, ast.ImportFrom) and s.module == "__future__")]
        if any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in body) and all(map(is_reexport, body)):
            found.append(f"{rel(root, path)} only re-exports (a shim): import from the module that defines it")
    return found


CHECKS = {
    "import cycles": import_cycles,
    "prefect/ray in workers/": workers_importing_prefect_or_ray,
    "private imports": private_imports,
    "long functions": long_functions,
    "re-export shims": reexport_shims,
}


def report(title: str, violations: list[str]) -> str:
    """One block per check: the count, then one violation a line."""
    return f"{len(violations)} {title}" + "".join(f"\n  {v}" for v in violations)


def test_no_import_cycles():
    cycles = import_cycles(ROOT)
    assert not cycles, report("import cycles", cycles)


def test_workers_never_import_prefect_or_ray():
    found = workers_importing_prefect_or_ray(ROOT)
    assert not found, report("prefect/ray imports in workers/", found)


def test_no_private_names_imported_across_modules():
    found = private_imports(ROOT)
    assert not found, report("private imports", found)


def test_no_function_over_60_lines_outside_numba_kernels():
    found = long_functions(ROOT)
    assert not found, report("long functions", found)


def test_no_reexport_shims_in_workers():
    found = reexport_shims(ROOT)
    assert not found, report("re-export shims", found)


def test_module_map_covers_every_package():
    """The checks above are only as good as the module map: every package pyproject ships must be found,
    with its modules, so an empty map cannot pass the checks vacuously."""
    mods = modules(ROOT)
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for pkg in cfg["tool"]["setuptools"]["packages"]:
        assert pkg in mods and mods[pkg].is_package, pkg
    assert "embedlake.flows.cli" in mods and mods["embedlake.flows.cli"].path == ROOT / "flows" / "cli.py"
    assert any(e.src == "embedlake.flows.cli" for e in import_edges(ROOT))


# --- the checks catch what they are meant to: a planted repository with one of each violation ---------

PLANTED = {
    "pyproject.toml": '[tool.setuptools]\npackage-dir = {"pk" = "pk", "pk.flows" = "flows", "pk.workers" = "workers"}\n',
    "pk/__init__.py": "",
    "pk/util.py": "def helper():\n    return 1\n",
    "flows/__init__.py": "",
    "flows/a.py": "from pk.flows import b\n",
    "flows/b.py": "def f():\n    from pk.flows.c import x\n    return x\n",
    "flows/c.py": "import importlib\nNAMES = ['pk.flows.a']\nx = 1\n"
                  "def load():\n    for n in NAMES:\n        importlib.import_module(n)\n",
    "flows/d.py": "from . import e\n",
    "flows/e.py": "from .d import y\ny = 2\n",
    "workers/__init__.py": "",
    "workers/w.py": ("import numba as nb\nfrom pk.util import _hidden, __doc__\n"
                     "def g():\n    import ray\n    return ray\n"
                     "@nb.njit(cache=True)\ndef kernel(x):\n" + "    x += 1\n" * 70 + "    return x\n"
                     "@staticmethod\ndef long(x):\n" + "    x += 1\n" * 59 + "    return x\n"
                     "def short(x):\n" + "    x += 1\n" * 58 + "    return x\n"),
    "workers/shim.py": '"""Moved."""\nfrom __future__ import annotations\nfrom pk.util import helper\n'
                       "alias = helper\n__all__ = ['helper', 'alias']\n",
    "workers/empty.py": '"""Only a docstring: not a shim."""\n',
}


def planted(tmp_path: Path) -> Path:
    for name, text in PLANTED.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_checks_find_planted_violations(tmp_path):
    root = planted(tmp_path)
    assert import_cycles(root) == [
        "import cycle: pk.flows.a -> pk.flows.b (flows/a.py:1) -> pk.flows.c (flows/b.py:2) -> pk.flows.a (flows/c.py:6)",
        "import cycle: pk.flows.d -> pk.flows.e (flows/d.py:1) -> pk.flows.d (flows/e.py:1)",
    ]
    assert workers_importing_prefect_or_ray(root) == ["workers/w.py:4 imports ray (workers/ is pure compute)"]
    assert private_imports(root) == ["workers/w.py:2 imports private _hidden from pk.util"]
    assert long_functions(root) == ["workers/w.py:80 long is 61 lines (max 60)"]
    assert reexport_shims(root) == ["workers/shim.py only re-exports (a shim): import from the module that defines it"]


if __name__ == "__main__":
    where = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    total = 0
    for title, check in CHECKS.items():
        violations = check(where)
        total += len(violations)
        print(report(title, violations))
    sys.exit(1 if total else 0)
