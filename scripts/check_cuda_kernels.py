#!/usr/bin/env python3
"""Compiles kooka's CUDA kernel bodies (src/model/cuda/*.cu) with NVRTC, as MLX 0.32's
`fast::cuda_kernel` wraps them (a `__global__` function of the inputs, their `_shape` /
`_strides` / `_ndim` when the body uses them, and the outputs) with the constants at the end of
the header, where kooka declares them, for every type and a spread of constants; and qmv once
more as kooka hands it to MLX: a stub that includes the body from a file
(src/model/cuda/kernel.rs). Needs no GPU: NVRTC only compiles. MLX's own device header
(`mlx/backend/cuda/device/utils.cuh`, built into libmlx) is replaced by a stand-in that
declares what the bodies use (`Shape`, `Strides`, the half types, and by signature the
functors the folded qmv variants call); `--mlx` compiles against MLX's real headers instead.

usage: check_cuda_kernels.py [--nvrtc DIR] [--mlx DIR] [--registers] [--only NAME]   (DIR: scripts/setup.sh --tests puts NVRTC in
third_party/nvrtc: lib/libnvrtc.so.12 and include/ with CUDA's runtime and CCCL headers)
"""
import argparse
import ctypes
import itertools
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = os.path.join(ROOT, "src", "model", "cuda")
TYPES = {"bfloat16": "__nv_bfloat16", "float16": "__half", "float32": "float"}

# name -> (source file, header, inputs, outputs, constant sets). Input / output names as in the
# Rust wrapper; the qmv variants with folded neighbours are the same body under #defines.
QMV_INPUTS = [("x", "T"), ("w", "uint32_t"), ("scales", "S"), ("biases", "S")]
ROPE_OUTPUTS = [("yq", "T"), ("yk", "T"), ("yv", "T")]  # q, k and v heads apart
FOLDED = '#include "mlx/backend/cuda/device/unary_ops.cuh"\n#include "mlx/backend/cuda/device/binary_ops.cuh"\n'
KERNELS = {
    "decode_attention_partial": (
        "decode_attention_partial", "",
        [("q", "T"), ("k", "T"), ("v", "T"), ("starts", "int32_t")],
        [("o_part", "float"), ("m_part", "float"), ("l_part", "float")],
        [{"D": d, "G": g, "SCALE_BITS": 0x3E000000} for d, g in itertools.product((64, 128, 256), (1, 4, 8))]
        + [{"D": d, "G": 2048 // d, "SCALE_BITS": 0x3E000000} for d in (32, 64, 128)],  # the largest groups
    ),
    "decode_attention_partial_all_keys": (
        "decode_attention_partial", "#define NO_STARTS 1\n",
        [("q", "T"), ("k", "T"), ("v", "T")],
        [("o_part", "float"), ("m_part", "float"), ("l_part", "float")],
        [{"D": d, "G": g, "SCALE_BITS": 0x3E000000} for d, g in ((64, 3), (128, 4), (128, 8))],
    ),
    "qmv": (
        "qmv", "",
        QMV_INPUTS,
        [("y", "T")],
        [{"TM": tm, "BITS": bits, "GROUP": 64, "RPW": 2, "WARPS": 8, "UNROLL": 2, "TRICK": trick,
          "KN": 4096, "STAGE": 0} for tm, bits, trick in itertools.product((1, 8), (4, 8), (0, 1))]
        + [{"TM": 2, "BITS": 4, "GROUP": g, "RPW": rpw, "WARPS": 4, "UNROLL": u, "TRICK": 1,
            "KN": 1024, "STAGE": 0} for g, rpw, u in ((32, 1, 1), (128, 4, 4))],
    ),
    # x staged (4-bit, the trick, 16-bit x only)
    "qmv_staged": (
        "qmv", "",
        QMV_INPUTS,
        [("y", "T")],
        [{"TM": tm, "BITS": 4, "GROUP": g, "RPW": rpw, "WARPS": 8, "UNROLL": u, "TRICK": 1,
          "KN": kn, "STAGE": 1} for tm, g, rpw, u, kn in ((1, 64, 1, 2, 4096), (2, 32, 2, 4, 4096), (1, 128, 1, 2, 9216),
                                      (1, 64, 1, 2, 14336))],
    ),
    # on the tensor cores (4-bit, 16-bit x): every group size, rows of x, K split
    "qmv_mma": (
        "qmv", "",
        QMV_INPUTS,
        [("y", "T")],
        [{"TM": tm, "BITS": 4, "GROUP": g, "RPW": 1, "WARPS": w, "UNROLL": u, "TRICK": 1,
          "KN": kn, "STAGE": 0, "MMA": 1, "KSPLIT": ks, "PF": pf, "PIPE": pipe}
         for tm, g, w, u, kn, ks, pf, pipe in ((1, 64, 8, 2, 4096, 1, 0, 0), (2, 64, 4, 1, 4096, 2, 0, 0),
                                               (4, 128, 8, 4, 14336, 4, 0, 0), (8, 128, 8, 2, 1024, 1, 0, 0),
                                               (2, 32, 8, 2, 4096, 8, 0, 0), (1, 32, 4, 1, 14336, 1, 0, 0),
                                               (1, 64, 8, 2, 4096, 2, 4, 0), (2, 32, 8, 1, 14336, 8, 2, 0),
                                               (1, 64, 8, 2, 4096, 2, 0, 3), (2, 32, 8, 1, 14336, 8, 0, 4),
                                               (1, 64, 8, 1, 4096, 1, 2, 6))],
    ),
    "qmv_mma_folds": (
        "qmv", FOLDED + "#define QMV_NORM 1\n#define QMV_GLU 1\n#define QMV_RES 1\n",
        QMV_INPUTS + [("norm", "T"), ("res", "T")],
        [("y", "T")],
        [{"TM": tm, "BITS": 4, "GROUP": 64, "RPW": 1, "WARPS": 8, "UNROLL": 2, "TRICK": 1,
          "KN": 4096, "EPS_BITS": 0x3727C5AC, "STAGE": 0, "MMA": 1, "KSPLIT": ks, "PF": pf,
          "PIPE": pipe} for tm, ks, pf, pipe in ((1, 1, 0, 0), (2, 2, 0, 0), (1, 2, 3, 0), (2, 2, 0, 3))],
    ),
    "qmv_mma_rope": (
        "qmv", FOLDED + "#define QMV_NORM 1\n#define QMV_ROPE 1\n",
        QMV_INPUTS + [("norm", "T"), ("pos", "int32_t")],
        ROPE_OUTPUTS,
        [{"TM": 1, "BITS": 4, "GROUP": 64, "RPW": 1, "WARPS": 8, "UNROLL": 2, "TRICK": 1,
          "KN": 4096, "EPS_BITS": 0x3727C5AC, "STAGE": 0, "MMA": 1, "KSPLIT": 2, "HD": 128, "RH": 40,
          "TRAD": 0, "SCALE_BITS": 0x3F800000, "BASE_BITS": 0x4197A112, "QH": 32, "PF": pf, "PIPE": pipe}
         for pf, pipe in ((0, 0), (2, 0), (0, 3))],
    ),
    # k and v written into the layer's cache in place: q alone comes out
    "qmv_rope_kv": (
        "qmv", FOLDED + "#define QMV_NORM 1\n#define QMV_ROPE 1\n#define QMV_KV_CACHE 1\n",
        QMV_INPUTS + [("norm", "T"), ("pos", "int32_t"), ("kc", "T"), ("vc", "T")],
        [("yq", "T")],
        [{"TM": 1, "BITS": 4, "GROUP": 64, "RPW": 1, "WARPS": 8, "UNROLL": 2, "TRICK": 1,
          "KN": 4096, "EPS_BITS": 0x3727C5AC, "STAGE": 0, "MMA": mma, "KSPLIT": ks, "HD": 128, "RH": 40,
          "TRAD": 0, "SCALE_BITS": 0x3F800000, "BASE_BITS": 0x4197A112, "QH": 32, "PF": 0, "PIPE": pipe}
         for mma, ks, pipe in ((0, 1, 0), (1, 2, 0), (1, 8, 3))],
    ),
    "qmv_probe": (
        "qmv", "#define QMV_PROBE 1\n",
        QMV_INPUTS,
        [("y", "T")],
        [{"TM": 1, "BITS": 4, "GROUP": 64, "RPW": 1, "WARPS": 8, "UNROLL": 4, "TRICK": 1,
          "KN": 4096, "STAGE": 0},
         {"TM": 1, "BITS": 4, "GROUP": 64, "RPW": 1, "WARPS": 8, "UNROLL": 2, "TRICK": 1,
          "KN": 4096, "STAGE": 0, "MMA": 1, "KSPLIT": 2},
         {"TM": 1, "BITS": 4, "GROUP": 64, "RPW": 1, "WARPS": 8, "UNROLL": 2, "TRICK": 1,
          "KN": 4096, "STAGE": 0, "MMA": 1, "KSPLIT": 2, "PIPE": 3}],
    ),
    "qmv_norm_glu": (
        "qmv", FOLDED + "#define QMV_NORM 1\n#define QMV_GLU 1\n",
        QMV_INPUTS + [("norm", "T")],
        [("y", "T")],
        [{"TM": tm, "BITS": bits, "GROUP": 64, "RPW": rpw, "WARPS": 8, "UNROLL": 4, "TRICK": 1,
          "KN": 4096, "EPS_BITS": 0x3727C5AC, "STAGE": 0} for tm, bits, rpw in ((1, 4, 1), (2, 8, 2))],
    ),
    "qmv_norm_glu_staged": (
        "qmv", FOLDED + "#define QMV_NORM 1\n#define QMV_GLU 1\n",
        QMV_INPUTS + [("norm", "T")],
        [("y", "T")],
        [{"TM": 1, "BITS": 4, "GROUP": 64, "RPW": rpw, "WARPS": 8, "UNROLL": 2, "TRICK": 1,
          "KN": 4096, "EPS_BITS": 0x3727C5AC, "STAGE": 1} for rpw in (1, 2)],
    ),
    "qmv_norm_rope": (
        "qmv", FOLDED + "#define QMV_NORM 1\n#define QMV_ROPE 1\n",
        QMV_INPUTS + [("norm", "T"), ("pos", "int32_t")],
        ROPE_OUTPUTS,
        [{"TM": tm, "BITS": 4, "GROUP": 64, "RPW": 1, "WARPS": 8, "UNROLL": 2, "TRICK": 1,
          "KN": 4096, "EPS_BITS": 0x3727C5AC, "STAGE": 0, "HD": hd, "RH": 40, "TRAD": trad,
          "SCALE_BITS": 0x3F800000, "BASE_BITS": 0x4197A112, "QH": 32} for tm, hd, trad in ((1, 128, 0), (2, 64, 1))]
        + [{"TM": 1, "BITS": 4, "GROUP": 64, "RPW": 1, "WARPS": 8, "UNROLL": 2, "TRICK": 1, "KN": 4096,
            "EPS_BITS": 0x3727C5AC, "STAGE": 1, "HD": 128, "RH": 40, "TRAD": 0, "SCALE_BITS": 0x3F800000,
            "BASE_BITS": 0x4197A112, "QH": 32}],
    ),
    "qmv_rope_freqs": (
        "qmv", FOLDED + "#define QMV_ROPE 1\n#define QMV_ROPE_FREQS 1\n",
        QMV_INPUTS + [("pos", "int32_t"), ("freqs", "float")],
        ROPE_OUTPUTS,
        [{"TM": 1, "BITS": bits, "GROUP": 64, "RPW": rpw, "WARPS": 8, "UNROLL": 2, "TRICK": 1,
          "KN": 4096, "STAGE": 0, "HD": 128, "RH": 40, "TRAD": 0, "SCALE_BITS": 0x3F800000, "QH": 32}
         for bits, rpw in ((4, 1), (8, 2))],
    ),
    "qmv_norm": (
        "qmv", FOLDED + "#define QMV_NORM 1\n",
        QMV_INPUTS + [("norm", "T")],
        [("y", "T")],
        [{"TM": 1, "BITS": 4, "GROUP": 128, "RPW": 1, "WARPS": 8, "UNROLL": 4, "TRICK": 1,
          "KN": 576, "EPS_BITS": 0x3727C5AC, "STAGE": 0}],
    ),
    "qmv_res": (
        "qmv", FOLDED + "#define QMV_RES 1\n",
        QMV_INPUTS + [("res", "T")],
        [("y", "T")],
        [{"TM": tm, "BITS": 4, "GROUP": 64, "RPW": 1, "WARPS": 8, "UNROLL": 4, "TRICK": 1,
          "KN": 4096, "STAGE": stage} for tm, stage in ((1, 0), (4, 0), (1, 1))],
    ),
    "decode_attention_combine": (
        "decode_attention_combine", "",
        [("o_part", "float"), ("m_part", "float"), ("l_part", "float")],
        [("out", "T")],
        [{"D": d} for d in (64, 128, 256)],
    ),
}

STAND_IN = """#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda/std/array>
namespace mlx::core::cu {
#define MAX_NDIM 10
using Shape = cuda::std::array<int32_t, MAX_NDIM>;
using Strides = cuda::std::array<int64_t, MAX_NDIM>;
}
"""

# MLX's functors the folded qmv variants call, by signature only (MLX's own headers do the maths).
UNARY_STAND_IN = """#pragma once
#include "mlx/backend/cuda/device/utils.cuh"
namespace mlx::core::cu {
struct Sigmoid { template <typename T> __device__ T operator()(T x) { return x; } };
}
"""
BINARY_STAND_IN = """#pragma once
#include "mlx/backend/cuda/device/utils.cuh"
namespace mlx::core::cu {
struct Add { template <typename T> __device__ T operator()(T x, T y) { return x + y; } };
struct Multiply { template <typename T> __device__ T operator()(T x, T y) { return x * y; } };
}
"""


def wrap(name, header, inputs, outputs, constants, body, t):
    """The source MLX 0.32 compiles for `body` (mlx/backend/cuda/custom_kernel.cpp) as kooka calls
    it (src/model/cuda/kernel.rs): the constants declared at the end of the header, not as MLX's
    template arguments."""
    consts = f"using T = {t};\n"
    if "S" in [ty for _, ty in inputs]:
        consts += f"using S = {t};\n"
    consts += "".join(f"constexpr int {k} = {v};\n" for k, v in constants.items())
    s = ('#include "mlx/backend/cuda/device/utils.cuh"\n\n#include <cooperative_groups.h>\n\n'
         + header + consts + "namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n")
    s += f"__global__ void custom_kernel_{name}(\n"
    for n, ty in inputs:
        ty = t if ty in ("T", "S") else ty
        s += f"    const {ty}* {n},\n"
        if n + "_shape" in body:
            s += f"    const __grid_constant__ Shape {n}_shape,\n"
        if n + "_strides" in body:
            s += f"    const __grid_constant__ Strides {n}_strides,\n"
        if n + "_ndim" in body:
            s += f"    const __grid_constant__ int {n}_ndim,\n"
    s += ",\n".join(f"    {t if ty == 'T' else ty}* {n}" for n, ty in outputs) + ") {\n"
    return s + "\n" + body + "\n}\n\n} // namespace mlx::core::cu\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nvrtc", default=os.path.join(ROOT, "third_party", "nvrtc"))
    p.add_argument("--mlx", help="a folder with MLX's own mlx/backend/cuda/device/*.cuh (from MLX's "
                   "source at the pinned version) to compile against instead of the stand-ins")
    p.add_argument("--registers", action="store_true", help="compile for sm_90 and print ptxas' "
                   "register and spill counts")
    p.add_argument("--only", help="only the kernels whose name starts with this")
    args = p.parse_args()
    nvrtc = ctypes.CDLL(os.path.join(args.nvrtc, "lib", "libnvrtc.so.12"))
    stand_in = tempfile.mkdtemp()
    os.makedirs(os.path.join(stand_in, "mlx/backend/cuda/device"))
    for header, text in (("utils.cuh", STAND_IN), ("unary_ops.cuh", UNARY_STAND_IN),
                         ("binary_ops.cuh", BINARY_STAND_IN)):
        with open(os.path.join(stand_in, "mlx/backend/cuda/device", header), "w") as f:
            f.write(text)
    opts = [b"--device-as-default-execution-space", b"--gpu-architecture=compute_90", b"-std=c++17",
            f"--include-path={args.mlx or stand_in}".encode(),
            f"--include-path={os.path.join(args.nvrtc, 'include')}".encode()]
    if args.registers:  # machine code for sm_90, with ptxas' register and spill counts
        opts[1] = b"--gpu-architecture=sm_90"
        opts.append(b"--ptxas-options=-v")
    jobs = []  # (name, header, inputs, outputs, constants, body, dtype)
    for name, (source, header, inputs, outputs, constant_sets) in KERNELS.items():
        if args.only and not name.startswith(args.only):
            continue
        if source == "qmv":  # the scalar path unless a set says MMA
            constant_sets = [{"MMA": 0, "KSPLIT": 1, "PF": 0, "PIPE": 0, **c} for c in constant_sets]
        with open(os.path.join(SOURCES, source + ".cu")) as f:
            body = f.read()
        for dtype, constants in itertools.product(TYPES, constant_sets):
            # x staged, or the tensor cores: 16-bit x only
            if not ((constants.get("STAGE") or constants.get("MMA")) and dtype == "float32"):
                jobs.append((name, header, inputs, outputs, constants, body, dtype))
        if name == "qmv":
            # As src/model/cuda/kernel.rs hands MLX a body: a stub that includes it from a file.
            included = os.path.join(stand_in, "qmv-body.cu")
            with open(included, "w") as f:
                f.write(body)
            used = [n + s for n, _ in inputs for s in ("_shape", "_strides", "_ndim") if n + s in body]
            stub = f"// {' '.join(used)}\n#include \"{included}\"\n"
            jobs.append(("qmv_included", header, inputs, outputs, constant_sets[0], stub, "bfloat16"))
    failed = 0
    for name, header, inputs, outputs, constants, body, dtype in jobs:
        src = wrap(name, header, inputs, outputs, constants, body, TYPES[dtype])
        prog = ctypes.c_void_p()
        assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f"{name}.cu".encode(),
                                        0, None, None) == 0
        status = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
        what = f"{name} {dtype} {constants}"
        if status != 0:
            failed += 1
            print(f"FAILED {what}\n{log.value.decode()}")
        elif args.registers:
            used = [l for l in log.value.decode().splitlines() if "registers" in l or "spill" in l]
            print(f"ok {what}: {' '.join(x.split('info    : ')[-1].strip() for x in used)}")
        elif b"warning" in log.value:
            failed += 1
            print(f"WARNINGS {what}\n{log.value.decode()}")
        else:
            print(f"ok {what}")
    print(f"{failed} failed" if failed else "all kernels compile")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
