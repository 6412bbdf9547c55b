"""Element-wise passes split across threads (workbench/runtime/layers/_threads.py): the split
kernels agree with torch on 1 and 2 threads, the thread count follows numpy's BLAS setting,
and errors and numpy's error state cross the thread boundary."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from workbench.runtime.layers import _threads
from support import assert_close, exact_rank_builder, predict_builder


def test_ranges_cover_every_index_once_in_order():
    for total in (1, 2, 7, 100):
        for parts in (1, 2, 3, 8, 200):
            covered = [i for a, b in _threads.ranges(total, parts) for i in range(a, b)]
            assert covered == list(range(total))
            sizes = [b - a for a, b in _threads.ranges(total, parts)]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_thread_count_follows_the_blas_setting():
    with threadpool_limits(limits=1, user_api="blas"):
        assert _threads.blas_threads() == 1
    with threadpool_limits(limits=2, user_api="blas"):
        assert _threads.blas_threads() == 2


def test_work_runs_on_other_threads_and_errors_come_back():
    seen = set()

    def work(start, stop):
        import threading
        seen.add(threading.current_thread().name)
        if start > 0:
            raise ValueError(f"slice {start}:{stop}")

    with threadpool_limits(limits=2, user_api="blas"), pytest.raises(ValueError, match="slice"):
        _threads.run_split(work, 4, _threads.MIN_PARALLEL_ELEMENTS)
    assert len(seen) == 2


def test_the_callers_error_state_applies_in_every_thread():
    x = np.full(1 << 17, 100.0, np.float32)
    with threadpool_limits(limits=2, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="ignore"):
            y = _threads.elementwise(np.exp, x)               # overflows in both halves, silently
        assert np.isinf(y).all()
        with np.errstate(over="raise"), pytest.raises(FloatingPointError):
            _threads.elementwise(np.exp, x)


@pytest.mark.parametrize("threads", [1, 2])
def test_split_kernels_match_torch(threads):
    """GELU, softmax over the last axis, clip and depthwise convolution on blobs large enough to
    be split, through a model built with coremltools."""
    r = np.random.default_rng(4)
    x = r.standard_normal((4, 64, 32, 32)).astype(np.float32) * 3
    w = r.standard_normal((64, 1, 3, 3)).astype(np.float32)
    b = exact_rank_builder({"x": x.shape}, outputs=("gelu", "softmax", "clip", "dw"))
    b.add_gelu("gelu", "x", "gelu", mode="EXACT")
    b.add_softmax_nd("softmax", "x", "softmax", axis=-1)
    b.add_clip("clip", "x", "clip", min_value=-1.0, max_value=6.0)
    b.add_convolution("dw", kernel_channels=1, output_channels=64, height=3, width=3, stride_height=1,
                      stride_width=1, border_mode="same", groups=64, W=w.transpose(2, 3, 1, 0), b=None,
                      has_bias=False, input_name="x", output_name="dw")
    with threadpool_limits(limits=threads, user_api="blas"):
        out = predict_builder(b, {"x": x})
    xt = torch.from_numpy(x)
    assert_close(out["gelu"], F.gelu(xt), atol=1e-5)
    assert_close(out["softmax"], torch.softmax(xt, -1))
    assert_close(out["clip"], xt.clamp(-1, 6))
    assert_close(out["dw"], F.conv2d(xt, torch.from_numpy(w), padding=1, groups=64), atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_split_normalizations_match_torch(threads):
    """mvn across C, H, W and layerNormalization over the last axis, rows split across threads."""
    r = np.random.default_rng(5)
    x = (r.standard_normal((8, 16, 32, 32)) * 4 + 1).astype(np.float32)
    gamma, beta = r.standard_normal(32).astype(np.float32), r.standard_normal(32).astype(np.float32)
    b = exact_rank_builder({"x": x.shape}, outputs=("mvn", "ln"))
    b.add_mvn("mvn", "x", "mvn", across_channels=True, normalize_variance=True, epsilon=1e-5)
    b.add_layer_normalization("ln", "x", "ln", normalized_shape=[32], gamma=gamma, beta=beta, eps=1e-5)
    with threadpool_limits(limits=threads, user_api="blas"):
        out = predict_builder(b, {"x": x})
    xt = torch.from_numpy(x)
    assert_close(out["mvn"], F.layer_norm(xt, (16, 32, 32), eps=1e-5), rtol=1e-4, atol=1e-5)
    assert_close(out["ln"], F.layer_norm(xt, (32,), torch.from_numpy(gamma), torch.from_numpy(beta), eps=1e-5),
                 rtol=1e-4, atol=1e-5)
