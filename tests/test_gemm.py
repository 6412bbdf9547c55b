"""The compiled product ``c += a @ b`` (``_gemm``) against numpy's float64 product."""
import numpy as np
import pytest

from workbench.runtime.layers._gemm import LANES, ROWS, _pointer, matmul_accumulate, product

# every path: full tiles of ROWS rows, a last tile of each height below ROWS, two-vector and
# one-vector column blocks, scalar columns past the last vector, k = 1 and a k that is not a
# multiple of anything
SHAPES = [(1, 1, 1), (1, 7, 5), (3, 1, LANES), (ROWS, 256, 4 * 256), (ROWS + 1, 33, 2 * LANES + LANES + 3),
          (2 * ROWS + 3, 19, LANES - 1), (5, 64, 2 * LANES), (ROWS - 1, 8, 3 * LANES + 1), (128, 40, 96)] + \
         [(ROWS + rest, 17, 2 * LANES + 1) for rest in range(2, ROWS, 2)]


def _operands(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32),
            rng.standard_normal((m, n)).astype(np.float32))


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_accumulates_the_product(m, k, n):
    a, b, c = _operands(m, k, n)
    want = c.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
    matmul_accumulate(a, b, c)
    scale = np.abs(a).astype(np.float64) @ np.abs(b) + np.abs(want)
    assert np.all(np.abs(c - want) <= 1e-6 * k * scale + 1e-7)


def test_reads_a_strided_operand():
    """a given transposed, [K, M]: its elements are read with a row stride of 1."""
    a, b, c = _operands(ROWS + 2, 37, 2 * LANES + 5, seed=1)
    want = c.astype(np.float64) + a.astype(np.float64) @ b
    a_t = np.ascontiguousarray(a.T)
    (m, k), n = a.shape, b.shape[1]
    product.ctypes(_pointer(a_t), 1, m, _pointer(b), n, _pointer(c), n, m, n, k)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


def test_writes_only_its_own_columns():
    """A product into the middle of a wider array leaves the columns around it alone."""
    a, b, _ = _operands(ROWS + 3, 16, LANES + 3, seed=2)
    wide = np.full((ROWS + 3, LANES + 9), 7.0, np.float32)
    wide[:, 2:-4] = 0.0
    (m, k), n = a.shape, b.shape[1]
    middle = wide[:, 2:].ctypes.data_as(type(_pointer(wide)))
    product.ctypes(_pointer(a), k, 1, _pointer(b), n, middle, wide.shape[1], m, n, k)
    np.testing.assert_array_equal(wide[:, :2], 7.0)
    np.testing.assert_array_equal(wide[:, -4:], 7.0)
    np.testing.assert_allclose(wide[:, 2:-4], a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_infinities_and_nan_follow_ieee():
    a, b, c = _operands(ROWS + 1, 5, LANES + 2, seed=3)
    a[0, 1], a[3, 0], b[2, 4] = np.inf, np.nan, -np.inf
    with np.errstate(invalid="ignore"):
        want = c.astype(np.float64) + a.astype(np.float64) @ b
    matmul_accumulate(a, b, c)
    np.testing.assert_array_equal(np.isnan(c), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(c) * np.sign(c), np.isinf(want) * np.sign(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(c[finite], want[finite], rtol=1e-5, atol=1e-5)


def test_rejects_operands_that_do_not_chain():
    a, b, c = _operands(2, 3, 4)
    with pytest.raises(ValueError, match="do not chain"):
        matmul_accumulate(a, b[:2].copy(), c)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        matmul_accumulate(a, np.asfortranarray(b), c)


def test_rejects_an_output_that_overlaps_an_operand():
    """c is written while a and b are read: an overlap would read half-written values."""
    square = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        matmul_accumulate(square, np.eye(4, dtype=np.float32), square)


@pytest.fixture
def narrow_product(monkeypatch):
    """The product as a CPU without AVX-512 compiles it (8 lanes, tiles of 4 rows), compiled
    here from the same code: this machine's own kernel is the 16-lane one."""
    import llvmlite.ir as ir
    from numba import cfunc

    from workbench.runtime.layers import _gemm
    monkeypatch.setattr(_gemm, "LANES", 8)
    monkeypatch.setattr(_gemm, "ROWS", 4)
    monkeypatch.setattr(_gemm, "_VEC", ir.VectorType(ir.FloatType(), 8))
    monkeypatch.setattr(_gemm, "_SPLAT", ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8))
    compiled = cfunc(_gemm.SIGNATURE)(_gemm.product._pyfunc)
    assert "<8 x float>" in compiled.inspect_llvm() and "<16 x float>" not in compiled.inspect_llvm()
    return compiled


@pytest.mark.parametrize("m,k,n", [(1, 3, 1), (4, 16, 16), (5, 9, 8 + 3), (11, 33, 2 * 8 * 3 + 8 + 5), (8, 256, 1024)])
def test_the_narrow_product_accumulates_too(narrow_product, m, k, n):
    a, b, c = _operands(m, k, n, seed=4)
    want = c.astype(np.float64) + a.astype(np.float64) @ b
    narrow_product.ctypes(_pointer(a), k, 1, _pointer(b), n, _pointer(c), n, m, n, k)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-4)
