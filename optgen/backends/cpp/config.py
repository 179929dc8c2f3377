"""Tuning, naming and compiler constants of the C++ (CPU) backend."""

from __future__ import annotations

# Elements per block: the unit of work one thread takes (partial reductions are per block).
# 16384 float32 elements = 64 KiB per array: a block of a multi-array update stays in L2
# between its loads and stores, and a 124M-parameter model makes ~7600 blocks, plenty to
# balance two to a few dozen threads.
BLOCK_SIZE = 1 << 14

# C++ types of the tensors' dtypes (bf16/fp16 are converted by hand-written helpers).
CTYPES = {
    "torch.float64": "double",
    "torch.float32": "float",
    "torch.bfloat16": "bf16_t",
    "torch.float16": "fp16_t",
}

# Compiler flags. No -ffast-math: NaN, inf and correctly rounded sqrt/division must behave as
# in torch. -ffp-contract=off: no fused multiply-add contraction, so a kernel computes the
# same bits on every ISA level (the cache may be shared by machines of different CPUs).
# -fno-math-errno / -fno-trapping-math only drop errno and FP-exception side effects, which
# lets sqrt and conditional selects vectorise without changing any value.
BASE_FLAGS = (
    "-O3",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-fopenmp",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffp-contract=off",
    "-fvisibility=hidden",
)

# x86-64 micro-architecture levels (psABI), best first: the /proc/cpuinfo flags each needs.
# Never -march=native: a cache folder on a shared home directory may serve several machines;
# the level is part of every cache key, and each level is a portable baseline.
X86_LEVELS = (
    ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"}),
    ("x86-64-v2", {"sse4_1", "sse4_2", "ssse3", "popcnt", "cx16"}),
)

# Format generated C++ at this width (the catalog's generated/cpp/ files are read by people).
LINE_LENGTH = 100

# Identifiers the generated C++ defines for itself; a spec value with one of these names
# cannot be compiled here (the checker reports it).
# Identifiers the generated C++ defines at file scope or in the host function; locals of the
# passes start with an underscore, which no spec name does. A spec value with one of these
# names (or a C++ keyword) cannot be compiled here: a located CompileError says so.
KERNEL_LOCALS = frozenset(
    {"real", "bf16_t", "fp16_t", "to_real", "from_real", "max_nan", "min_nan", "sign_of", "Context", "std",
     "INFINITY", "NAN"}
)  # fmt: skip
CPP_KEYWORDS = frozenset(
    [
        "alignas",
        "alignof",
        "asm",
        "auto",
        "bool",
        "case",
        "catch",
        "char",
        "char8_t",
        "char16_t",
        "char32_t",
        "class",
        "concept",
        "const",
        "consteval",
        "constexpr",
        "constinit",
        "const_cast",
        "continue",
        "co_await",
        "co_return",
        "co_yield",
        "decltype",
        "default",
        "delete",
        "do",
        "double",
        "dynamic_cast",
        "enum",
        "explicit",
        "export",
        "extern",
        "float",
        "friend",
        "goto",
        "inline",
        "int",
        "long",
        "mutable",
        "namespace",
        "new",
        "noexcept",
        "nullptr",
        "operator",
        "private",
        "protected",
        "public",
        "register",
        "reinterpret_cast",
        "requires",
        "short",
        "signed",
        "sizeof",
        "static",
        "static_assert",
        "static_cast",
        "struct",
        "switch",
        "template",
        "this",
        "thread_local",
        "throw",
        "typedef",
        "typeid",
        "typename",
        "union",
        "unsigned",
        "using",
        "virtual",
        "void",
        "volatile",
        "wchar_t",
        "xor",
        "bitand",
        "bitor",
        "compl",
        "not_eq",
        "or_eq",
        "xor_eq",
        "and_eq",
        "main",
    ]
)
