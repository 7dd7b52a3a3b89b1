"""The arrays a numba kernel only reads, passed as read-only views: one compile of each kernel.

numba compiles (and caches) one version of a kernel per argument types, and a read-only array is
another type than a writable one. Ray hands a task read-only arrays (zero-copy from the object
store), as do memory maps and pyarrow, while in-process callers and tests pass writable ones, so a
kernel fed both compiled once for each mix of the two, and a cache warmed by in-process runs made
every fresh Ray worker compile again. In the test suite FastRP's row kernel had 13 such versions
(3-5 s of compile each), skip-gram's window kernel two (45 s each) and the composed tables' kernel
three (14-24 s each): about 225 CPU-s of compile, paid again by every fresh cache (a clean clone, a
new Ray node, a new version of the kernels). Every caller now feeds the kernels one kind: read-only
(tests/test_kernel_inputs.py)."""
from __future__ import annotations

import numpy as np


def read_only(*arrays) -> list[np.ndarray]:
    """Read-only views (no copies) of `arrays`, in order."""
    views = []
    for a in arrays:
        v = np.asarray(a).view()
        v.setflags(write=False)
        views.append(v)
    return views
