"""Pure compute and lake I/O (no Prefect, no Ray). Importing the package first files numba's
compiled kernels by the kernel sources' content, not by their path (`kernel_cache`)."""
from embedlake.workers import kernel_cache

kernel_cache.install()
