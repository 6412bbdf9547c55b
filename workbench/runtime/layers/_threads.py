"""Element-wise work on as many cores as numpy's BLAS is set to use.

Why: matrix products already run on every core through BLAS, but numpy's element-wise passes
(depthwise convolution taps, clips, GELU, softmax) run on one. numpy releases the GIL inside its
loops, so splitting such a pass into disjoint slices on a few threads scales like BLAS does.
The thread count follows the BLAS setting (``threadpoolctl.threadpool_limits`` or
``OPENBLAS_NUM_THREADS``), read at each call, so one knob governs both.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# below this many elements a pass stays on one thread: handing work to another costs ~20-50 us
MIN_PARALLEL_ELEMENTS = 1 << 16

_lock = threading.Lock()
_pool = None
_blas = None          # threadpoolctl's controller of numpy's BLAS, found once


def blas_threads():
    """The number of threads numpy's BLAS uses now (1 when it cannot be told)."""
    global _blas
    if _blas is None:
        with _lock:
            if _blas is None:
                _blas = _find_blas()
    try:
        return max(1, int(_blas.get_num_threads())) if _blas is not False else 1
    except Exception:                                   # a BLAS without the query
        return 1


def _find_blas():
    try:
        from threadpoolctl import ThreadpoolController
        controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    except Exception:
        return False
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    for controller in controllers:               # numpy's own BLAS first (torch may load another)
        if (controller.filepath or "").startswith(numpy_dir) and "numpy" in controller.filepath:
            return controller
    return controllers[0] if controllers else False


def _executor(workers):
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="workbench")
        return _pool


def ranges(total, parts):
    """``parts`` contiguous (start, stop) ranges covering ``range(total)``, sizes differing by <= 1."""
    parts = max(1, min(parts, total))
    step, extra = divmod(total, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + step + (i < extra)
        out.append((start, stop))
        start = stop
    return out


def run_split(work, total, elements):
    """Call ``work(start, stop)`` over slices of ``range(total)``, on several threads when the
    pass touches at least MIN_PARALLEL_ELEMENTS ``elements``. Slices must write disjoint memory.
    The caller's numpy error state applies in every thread; the first exception is re-raised."""
    threads = min(blas_threads(), total) if elements >= MIN_PARALLEL_ELEMENTS else 1
    if threads <= 1:
        work(0, total)
        return
    errors = np.geterr()

    def in_thread(start, stop):
        with np.errstate(**errors):
            work(start, stop)

    first, *rest = ranges(total, threads)
    futures = [_executor(threads - 1).submit(in_thread, a, b) for a, b in rest]
    try:
        work(*first)
    finally:
        for f in futures:
            f.result()


def elementwise(function, x):
    """``function`` (1-D float32 -> same size) applied to ``x`` of any shape, slices across threads."""
    if x.size < MIN_PARALLEL_ELEMENTS or blas_threads() == 1:
        return function(x)
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.shape, np.float32)

    def work(start, stop):
        out[start:stop] = function(flat[start:stop])

    run_split(work, flat.size, flat.size)
    return out.reshape(x.shape)


def along_last_axis(function, x):
    """``function`` of a [rows, n] array working row by row (softmax, normalizations over the last
    axis), applied to ``x`` of any shape with rows split across threads."""
    if x.size < MIN_PARALLEL_ELEMENTS or x.ndim < 2 or blas_threads() == 1:
        return function(x)
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    out = np.empty(rows.shape, np.float32)

    def work(start, stop):
        out[start:stop] = function(rows[start:stop])

    run_split(work, rows.shape[0], x.size)
    return out.reshape(x.shape)
