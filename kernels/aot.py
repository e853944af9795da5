"""Ahead-of-time compilation of Triton kernels for an NVIDIA target, without a GPU (docs/design.md §5.3).

Used by the tests to prove every configuration the dispatcher can pick compiles for sm_90 (and sm_80), and to read
its registers, spills and instructions.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Dict

import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction


# Shared memory one block may use (bytes), per architecture: the launch fails above it.
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


@dataclass
class CompiledKernel:
    """What a compile produced: PTX text and the cubin's resource usage. ``stack_bytes`` is the per-thread stack
    frame: Triton kernels have no local arrays or calls, so a stack frame holds spilled registers."""

    ptx: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    stack_bytes: int = 0

    @property
    def spills(self) -> int:
        """Bytes of spilled state per thread (the stack frame, or ptxas's spill counts where larger)."""
        return max(self.stack_bytes, self.spill_stores + self.spill_loads)

    def has_atomics(self) -> bool:
        return re.search(r"\b(atom|red)\.", self.ptx) is not None

    def has_tensor_core_mma(self) -> bool:
        return re.search(r"\b(mma|wgmma)\.", self.ptx) is not None


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> Dict[str, int]:
    """Registers, spill stores/loads and shared memory of a cubin, from cuobjdump --dump-resource-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", handle.name], capture_output=True, text=True,
                              check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    if "REG" not in fields:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{text}")
    spill_stores = sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", text))
    spill_loads = sum(int(v) for v in re.findall(r"(\d+) bytes spill loads", text))
    return {"registers": int(fields["REG"]), "shared": int(fields.get("SHARED", 0)),
            "local": int(fields.get("LOCAL", 0)), "stack": int(fields.get("STACK", 0)),
            "spill_stores": spill_stores, "spill_loads": spill_loads}


def compile_kernel(kernel, signature: Dict[str, str], constexprs: Dict[str, object], arch: int = 90,
                   num_warps: int = 4) -> CompiledKernel:
    """Compile ``kernel`` (a @triton.jit function, interpreted or not) for sm_``arch``.

    Args:
        signature:  argument name -> Triton type ("*fp32", "i32", "fp32", ...); constexpr arguments may be omitted.
        constexprs: constexpr argument name -> value.
    """
    fn = JITFunction(kernel.fn) if not isinstance(kernel, JITFunction) else kernel
    full_signature = {name: signature.get(name, "constexpr") for name in fn.arg_names}
    target, options = GPUTarget("cuda", arch, 32), {"num_warps": num_warps}
    try:  # Triton >= 3.3 keys constexprs by name
        compiled = triton.compile(triton.compiler.ASTSource(fn=fn, signature=full_signature, constexprs=constexprs),
                                  target=target, options=options)
    except Exception as by_name:  # older releases key them by (argument index,)
        by_index = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
        try:
            compiled = triton.compile(triton.compiler.ASTSource(fn=fn, signature=full_signature,
                                                                constexprs=by_index), target=target, options=options)
        except Exception:
            raise by_name from None
    usage = resource_usage(compiled.asm["cubin"])
    # Triton's kernels take their shared memory dynamically: the launch needs metadata.shared bytes
    shared = max(usage["shared"], int(getattr(compiled.metadata, "shared", 0) or 0))
    return CompiledKernel(ptx=compiled.asm["ptx"], registers=usage["registers"],
                          spill_stores=usage["spill_stores"] + usage["local"], spill_loads=usage["spill_loads"],
                          shared_bytes=shared, stack_bytes=usage["stack"])


def _compile_entry(entry):
    """Compile configuration ``index`` of ``module``.aot_configurations() (run in a worker process)."""
    import importlib

    module, production_only, index, arch = entry
    name, kernel, signature, constexprs, num_warps, expect_mma = \
        list(importlib.import_module(module).aot_configurations(production_only))[index]
    try:
        compiled = compile_kernel(kernel, signature, constexprs, arch=arch, num_warps=num_warps)
    except Exception as error:  # reported, and the caller fails on it
        return {"name": name, "arch": arch, "error": f"{type(error).__name__}: {error}"}
    return {"name": name, "arch": arch, "registers": compiled.registers, "spills": compiled.spills,
            "shared_bytes": compiled.shared_bytes, "shared_limit": SHARED_MEMORY_LIMIT.get(arch),
            "atomics": compiled.has_atomics(),
            "mma": compiled.has_tensor_core_mma(), "expect_mma": expect_mma}


def main(argv=None) -> int:
    """``python -m egno_fast.kernels.aot MODULE [--arch 90] [--production-arch 80] [--jobs 2]``: compile every
    configuration of MODULE.aot_configurations() for each --arch, its production ones for each --production-arch,
    and print one JSON line per compile (run with TRITON_INTERPRET unset)."""
    import argparse
    import importlib
    import json
    from concurrent.futures import ProcessPoolExecutor

    parser = argparse.ArgumentParser()
    parser.add_argument("module")
    parser.add_argument("--arch", type=int, nargs="*", default=[90])
    parser.add_argument("--production-arch", type=int, nargs="*", default=[])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter replaces the compiler in this process")
    module = importlib.import_module(args.module)
    entries = [(args.module, production, index, arch)
               for archs, production in ((args.arch, False), (args.production_arch, True)) for arch in archs
               for index in range(len(list(module.aot_configurations(production))))]
    with ProcessPoolExecutor(args.jobs) as pool:
        for result in pool.map(_compile_entry, entries):
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
