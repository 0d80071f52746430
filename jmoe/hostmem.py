"""Host-memory setting for JAX on CPU: keep freed memory in the process instead of handing it back to the kernel.

Why: XLA:CPU allocates the output and temporary buffers of every call with ``malloc``. glibc serves blocks above
its mmap threshold (at most 32 MiB) and the thread arenas' heaps with fresh ``mmap`` pages and gives them back on
``free``, so every call of a jitted function whose intermediates are large page-faults its memory in again and
the kernel zeroes it: a routed expert layer's fwd+bwd spent a large share of its time in the kernel
(``tools.bench_routing --malloc retain|default`` measures both settings; docs/benchmarks.md has the numbers). PyTorch's eager
loop allocates smaller blocks and mostly escapes this, which is what had made it look faster than the same matmuls
under ``jit``.

:func:`retain_freed_memory` sets glibc's ``mallopt`` so that freed memory stays with the process: no mmap for
large blocks (``M_MMAP_MAX=0``), no trimming of the heap top (``M_TRIM_THRESHOLD``), and one arena
(``M_ARENA_MAX=1``, so that every thread's large blocks come from the one heap that is never shrunk). Later calls
reuse warm pages. The costs: resident memory stays at its peak until the process exits, and every thread
allocates under the one arena's lock. That lock makes small, many-threaded training steps much slower (the EUAR
default, ``python -m experiments.euar_mosi``: docs/platform.md), while the first two settings alone leave
the large layer's faults in place (its worker threads' arenas unmap their heaps). So it is opt-in: ``tools.bench_routing`` applies it by default,
the experiment app with ``--config.retain_host_memory=True`` (for large layers), a library import never. It is a
process-wide setting, so call it once, before the first JAX computation (threads that have already made their own
arena keep it). On a C library other than glibc it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1


def retain_freed_memory() -> str:
  """Make glibc keep freed memory in the process (see the module docstring); returns a one-line status."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return f"host memory: allocator setting skipped (needs glibc; this is {platform.system()} {platform.libc_ver()})"
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError) as e:  # pragma: no cover - glibc always has mallopt
    return f"host memory: allocator setting skipped ({e})"
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_ARENA_MAX, 1))
  failed = [param for param, value in settings if mallopt(param, value) != 1]
  if failed:
    return f"host memory: glibc refused mallopt parameters {failed}; freed memory may go back to the kernel"
  return "host memory: freed memory stays in the process (glibc mallopt: no mmap, no trim, one arena)"
