"""Cache prefetch hints for numba kernels (llvm.prefetch), shared by the walk, FastRP and skip-gram kernels.

Why: those kernels chase random rows of arrays much larger than the caches (a walker's CSR row, a
neighbour's FastRP row, a context's embedding row). Where the next address is known a few items
ahead, asking for it early lets the load overlap the current item's work. A prefetch never faults
and changes no value, so outputs stay bit-identical.
"""
from __future__ import annotations

from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba.core import cgutils, types
from numba.extending import intrinsic

LLVM_PREFETCH = "llvm.prefetch.p0" if llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"
CACHE_LINE_BYTES = 64


def _prefetch_call(builder, ptr):
    """Emit llvm.prefetch(ptr, read, keep in all cache levels, data)."""
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                        LLVM_PREFETCH)
    builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])


@intrinsic
def prefetch(typingctx, arr, idx):
    """Bring the cache line of arr[idx] (a 1-d array) in for reading."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        _prefetch_call(builder, cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_row(typingctx, table, row):
    """Bring row `row` of a C-contiguous 2-d table in for reading: one prefetch per cache line."""
    if not (isinstance(table, types.Array) and table.ndim == 2 and table.layout == "C"
            and isinstance(row, types.Integer)):
        return None
    sig = types.void(table, row)

    def codegen(context, builder, signature, args):
        tabty, rowty = signature.args
        ary = context.make_array(tabty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        r = context.cast(builder, args[1], rowty, types.intp)
        first = builder.bitcast(cgutils.get_item_pointer(context, builder, tabty, ary, [r, zero], wraparound=False),
                                ir.IntType(8).as_pointer())
        row_bytes = builder.mul(builder.extract_value(ary.shape, 1),
                                context.get_constant(types.intp, tabty.dtype.bitwidth // 8))
        step = context.get_constant(types.intp, CACHE_LINE_BYTES)
        with cgutils.for_range_slice(builder, zero, row_bytes, step) as (off, _):
            _prefetch_call(builder, builder.gep(first, [off]))
        return context.get_dummy_value()

    return sig, codegen
