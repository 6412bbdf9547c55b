"""A compiled matrix product for the few-rows products BLAS is slow at: ``c += a @ b``.

An LSTM step multiplies the state h [Batch, H] by the recurrence R^T [H, 4H]. With a batch of 8,
OpenBLAS takes 73 us for it on one thread (H = 256) where the arithmetic needs about a quarter of
that, and a call from a compiled loop costs a trip through numpy besides. This product is written
as LLVM IR (a numba intrinsic) and compiled into a C function, ``product``, that compiled loops
call through its address, so a whole sequence of steps is one compiled loop: 37 us per step, on
one thread.

The product keeps a tile of c in vector registers while it walks k: ``ROWS`` rows of a (each
element broadcast) by two vectors of b's columns, one fused multiply-add per pair (where the CPU
has FMA; a multiply and an add where it has not). ``b`` is read row-major (the caller lays its
weights out so at load); ``a`` may be strided either way, since its elements are broadcast one
at a time. Rows past the last full tile take one tile of their height; columns past the last
pair of vectors, one vector, then a scalar loop.

The vector width follows the CPU numba compiles for: 16 float32 lanes with AVX-512, 8 otherwise
(NUMBA_CPU_NAME naming another CPU gives 8; NUMBA_CPU_FEATURES decide when set). numba caches the
compiled code per CPU, so a cache made on another machine is not reused.
"""
import ctypes

import llvmlite.binding as llvm
import llvmlite.ir as ir
import numpy as np
from numba import cfunc, types
from numba.core import config
from numba.extending import intrinsic


def _compiles_for_avx512():
    """Whether numba compiles for a CPU with AVX-512: this one's features, unless NUMBA_CPU_NAME
    or NUMBA_CPU_FEATURES name others (portable caches), or LLVM cannot tell."""
    if config.CPU_FEATURES is not None:
        return "+avx512f" in config.CPU_FEATURES.split(",")
    if config.CPU_NAME not in (None, "host"):
        return False
    try:
        return bool(llvm.get_host_cpu_features().get("avx512f", False))
    except RuntimeError:                   # LLVM cannot read this CPU's features
        return False


_AVX512 = _compiles_for_avx512()
LANES = 16 if _AVX512 else 8
# a tile of ROWS x 2 vectors of accumulators, plus two of b and a broadcast, fits the register
# file: 32 vector registers with AVX-512 (8 x 2 + 3), 16 otherwise (4 x 2 + 3)
ROWS = 8 if _AVX512 else 4

_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_VEC = ir.VectorType(_F32, LANES)
_SPLAT = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
# a multiply and an add LLVM may fuse: one FMA instruction where the CPU has them, a multiply and
# an add where it has not (an llvm.fma call would become a libm call per lane there)
_CONTRACT = ("contract",)


def _const(value):
    return ir.Constant(_I64, value)


def _emit_loop(builder, start, stop, step, body, name):
    """for (i = start; i + step <= stop; i += step) body(i); returns the first i it did not run,
    where the next, narrower loop starts."""
    entry = builder.block
    head = builder.append_basic_block(f"{name}.head")
    loop = builder.append_basic_block(f"{name}.body")
    after = builder.append_basic_block(f"{name}.after")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(_I64, name=name)
    i.add_incoming(start, entry)
    builder.cbranch(builder.icmp_signed("<=", builder.add(i, _const(step)), stop), loop, after)
    builder.position_at_end(loop)
    body(i)
    i.add_incoming(builder.add(i, _const(step)), builder.block)
    builder.branch(head)
    builder.position_at_end(after)
    return i


class _Operands:
    """The product's pointers and sizes, as IR values, and the code that walks them."""

    def __init__(self, builder, a, a_row, a_col, b, ldb, c, ldc, k):
        self.builder = builder
        self.a, self.a_row, self.a_col, self.b, self.ldb, self.c, self.ldc, self.k = \
            a, a_row, a_col, b, ldb, c, ldc, k

    def _a(self, row, kk):
        bld = self.builder
        return bld.load(bld.gep(self.a, [bld.add(bld.mul(row, self.a_row), bld.mul(kk, self.a_col))]))

    def _vector_at(self, base, index):
        bld = self.builder
        return bld.bitcast(bld.gep(base, [index]), _VEC.as_pointer())

    def _walk_k(self, start, step, name):
        """for kk < k: values = step(kk, values), the values carried in registers (phi values of
        the loop); returns them after the last step."""
        bld = self.builder
        entry = bld.block
        head, loop, after = (bld.append_basic_block(f"{name}.{part}") for part in ("head", "body", "after"))
        bld.branch(head)
        bld.position_at_end(head)
        kk = bld.phi(_I64, name="k")
        kk.add_incoming(_const(0), entry)
        carried = [bld.phi(value.type) for value in start]
        for phi, value in zip(carried, start):
            phi.add_incoming(value, entry)
        bld.cbranch(bld.icmp_signed("<", kk, self.k), loop, after)
        bld.position_at_end(loop)
        for phi, value in zip(carried, step(kk, carried)):
            phi.add_incoming(value, bld.block)
        kk.add_incoming(bld.add(kk, _const(1)), bld.block)
        bld.branch(head)
        bld.position_at_end(after)
        return carried

    def _multiply_add(self, total, x, y):
        bld = self.builder
        return bld.fadd(total, bld.fmul(x, y, flags=_CONTRACT), flags=_CONTRACT)

    def tile(self, i0, j0, rows, vectors):
        """c[i0:i0+rows, j0:j0+vectors*LANES] += a[i0:i0+rows, :] @ b[:, same columns], its
        accumulators in registers."""
        bld = self.builder
        c_at = [self._vector_at(self.c, bld.add(bld.mul(bld.add(i0, _const(r)), self.ldc),
                                                bld.add(j0, _const(v * LANES))))
                for r in range(rows) for v in range(vectors)]          # row by row, as acc below

        def step(kk, acc):
            b_row = bld.add(bld.mul(kk, self.ldb), j0)
            b_vec = [bld.load(self._vector_at(self.b, bld.add(b_row, _const(v * LANES))), align=4)
                     for v in range(vectors)]
            new = []
            for r in range(rows):
                scalar = self._a(bld.add(i0, _const(r)), kk)
                splat = bld.shuffle_vector(bld.insert_element(ir.Constant(_VEC, ir.Undefined), scalar,
                                                              ir.Constant(ir.IntType(32), 0)),
                                           ir.Constant(_VEC, ir.Undefined), _SPLAT)
                new += [self._multiply_add(acc[r * vectors + v], splat, b_vec[v]) for v in range(vectors)]
            return new

        totals = self._walk_k([bld.load(p, align=4) for p in c_at], step, "tile")
        for total, at in zip(totals, c_at):
            bld.store(total, at, align=4)

    def rest(self, i0, m, j0, vectors):
        """The rows past the last full tile, m - i0 < ROWS of them, as one tile of that height:
        a tile per row would read b's columns once per row."""
        bld = self.builder
        after = bld.append_basic_block("rest.after")
        switch = bld.switch(bld.sub(m, i0), after)
        for rows in range(1, ROWS):
            case = bld.append_basic_block(f"rest.{rows}")
            switch.add_case(_const(rows), case)
            bld.position_at_end(case)
            self.tile(i0, j0, rows, vectors)
            bld.branch(after)
        bld.position_at_end(after)

    def scalar(self, i, j):
        """c[i, j] += a[i, :] @ b[:, j], one element (the columns past the last vector)."""
        bld = self.builder
        c_at = bld.gep(self.c, [bld.add(bld.mul(i, self.ldc), j)])

        def step(kk, total):
            b_value = bld.load(bld.gep(self.b, [bld.add(bld.mul(kk, self.ldb), j)]))
            return [self._multiply_add(total[0], self._a(i, kk), b_value)]

        bld.store(self._walk_k([bld.load(c_at)], step, "dot")[0], c_at)


@intrinsic
def _accumulate_product(typingctx, a, a_row, a_col, b, ldb, c, ldc, m, n, k):
    """The product's loops, emitted into the function that calls it (``product``)."""
    sig = types.void(a, a_row, a_col, b, ldb, c, ldc, m, n, k)

    def codegen(context, builder, signature, args):
        a, a_row, a_col, b, ldb, c, ldc, m, n, k = args
        ops = _Operands(builder, a, a_row, a_col, b, ldb, c, ldc, k)

        def columns(vectors):
            def at(j0):
                full = _emit_loop(builder, _const(0), m, ROWS, lambda i0: ops.tile(i0, j0, ROWS, vectors),
                                  "rows")
                ops.rest(full, m, j0, vectors)
            return at

        def one_column(j):
            _emit_loop(builder, _const(0), m, 1, lambda i: ops.scalar(i, j), "dot")

        j = _emit_loop(builder, _const(0), n, 2 * LANES, columns(2), "cols")
        j = _emit_loop(builder, j, n, LANES, columns(1), "col")
        _emit_loop(builder, j, n, 1, one_column, "tail")
        return context.get_dummy_value()

    return sig, codegen


_FLOATS = types.CPointer(types.float32)
SIGNATURE = types.void(_FLOATS, types.int64, types.int64, _FLOATS, types.int64, _FLOATS, types.int64,
                       types.int64, types.int64, types.int64)


@cfunc(SIGNATURE, cache=True)
def product(a, a_row, a_col, b, ldb, c, ldc, m, n, k):
    """c[i, j] += sum over kk < k of a[i * a_row + kk * a_col] * b[kk * ldb + j], for i < m and
    j < n (offsets in elements). A C function: compiled code calls it through its address
    (``ADDRESS``, see ``_fused.call_product``), so its code is cached with this file, and a
    change here is not missed by the cache of a function in another file that calls it."""
    _accumulate_product(a, a_row, a_col, b, ldb, c, ldc, m, n, k)


ADDRESS = product.address


def matmul_accumulate(a, b, c):
    """c += a @ b for C-contiguous float32 matrices a [M, K], b [K, N], c [M, N]."""
    arrays = (a, b, c)
    if not all(isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous
               for x in arrays) or not c.flags.writeable:
        raise ValueError("matmul_accumulate: operands must be C-contiguous float32 matrices, c writeable")
    (m, k), n = a.shape, b.shape[1]
    if b.shape[0] != k or c.shape != (m, n):
        raise ValueError(f"matmul_accumulate: shapes {a.shape} @ {b.shape} -> {c.shape} do not chain")
    if np.shares_memory(c, a) or np.shares_memory(c, b):
        raise ValueError("matmul_accumulate: c overlaps an operand (it is written while they are read)")
    if m and n:
        product.ctypes(_pointer(a), k, 1, _pointer(b), n, _pointer(c), n, m, n, k)


def _pointer(x):
    return x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
