# lit configuration for q35's FileCheck tests.
#
# Run: lit tests/lit            (or `cargo test -p q35c --test lit`, which
#      runs all but sim/, and `cargo test -p q35-sim --test lit`, which runs
#      sim/: `cargo test --workspace` runs every test once)
# Tools: %q35c is $Q35C, else <target dir>/debug/q35c (CARGO_TARGET_DIR
# honoured); %q35sim is $Q35SIM, else <target dir>/debug/q35sim (a missing
# one is a warning here and a failure in every test that runs it); FileCheck,
# not, split-file and mlir-opt come from $LLVM_BIN, else /usr/lib/llvm-22/bin.
# %irdl is dialects/q35.irdl.mlir, %lpu_irdl dialects/lpu.irdl.mlir, %examples examples/, %targets targets/.
# The SmolLM2 GGUF (feature `smollm2`) is $Q35_SMOLLM2_GGUF, else
# .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf; tests that need it FAIL when
# it is missing unless Q35_SKIP_MODEL_TESTS=1, which marks them UNSUPPORTED.

import os

import lit.formats

config.name = "q35"
config.test_format = lit.formats.ShTest(execute_external=True)
config.suffixes = [".mlir", ".test", ".lpuasm"]
config.excludes = ["Inputs"]
config.test_source_root = os.path.dirname(__file__)

repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
config.test_exec_root = os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target")), "lit"
)

llvm_bin = os.environ.get("LLVM_BIN", "/usr/lib/llvm-22/bin")
target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
q35c = os.environ.get("Q35C", os.path.join(target_dir, "debug", "q35c"))
q35sim = os.environ.get("Q35SIM", os.path.join(target_dir, "debug", "q35sim"))
for name, path, package, var in [
    ("q35c", q35c, "q35c", "Q35C"),
    ("q35sim", q35sim, "q35-sim", "Q35SIM"),
]:
    if not os.path.isfile(path):
        lit_config.warning(
            f"{name} not found at {path}: run `cargo build -p {package}` or set {var}"
        )
for tool in ["FileCheck", "not", "split-file", "mlir-opt", "count"]:
    if not os.path.isfile(os.path.join(llvm_bin, tool)):
        lit_config.fatal(f"{tool} not found in {llvm_bin}: install LLVM 22 or set LLVM_BIN")

config.environment["PATH"] = os.pathsep.join([llvm_bin, os.environ.get("PATH", "")])
# The quantized-model cache follows the caller's settings (runtime/host/src/quant_cache.rs).
for var in ["HOME", "TMPDIR", "XDG_CACHE_HOME", "Q35_QUANT_CACHE", "Q35_QUANT_CACHE_MAX_MB"]:
    if var in os.environ:
        config.environment[var] = os.environ[var]

smollm2 = os.environ.get(
    "Q35_SMOLLM2_GGUF",
    os.path.join(repo, ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
)
if os.environ.get("Q35_SKIP_MODEL_TESTS") != "1":
    # Present or not: a missing model must fail the tests that need it.
    config.available_features.add("smollm2")

config.substitutions.append(("%q35sim", q35sim))
config.substitutions.append(("%q35c", q35c))
config.substitutions.append(("%mlir-opt", os.path.join(llvm_bin, "mlir-opt")))
config.substitutions.append(("%lpu_irdl", os.path.join(repo, "dialects", "lpu.irdl.mlir")))
config.substitutions.append(("%irdl", os.path.join(repo, "dialects", "q35.irdl.mlir")))
config.substitutions.append(("%examples", os.path.join(repo, "examples")))
config.substitutions.append(("%targets", os.path.join(repo, "targets")))
config.substitutions.append(("%smollm2_gguf", smollm2))
