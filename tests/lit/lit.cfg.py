# lit configuration for q35's FileCheck tests.
#
# Run: lit tests/lit            (or `cargo test -p q35c --test lit`)
# Tools: %q35c is $Q35C, else <target dir>/debug/q35c (CARGO_TARGET_DIR
# honoured); FileCheck, not, split-file and mlir-opt come from $LLVM_BIN, else
# /usr/lib/llvm-22/bin. %irdl is dialects/q35.irdl.mlir, %examples examples/,
# %targets targets/.
# The SmolLM2 GGUF (feature `smollm2`) is $Q35_SMOLLM2_GGUF, else
# .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf; tests that need it FAIL when
# it is missing unless Q35_SKIP_MODEL_TESTS=1, which marks them UNSUPPORTED.

import os

import lit.formats

config.name = "q35"
config.test_format = lit.formats.ShTest(execute_external=True)
config.suffixes = [".mlir", ".test"]
config.excludes = ["Inputs"]
config.test_source_root = os.path.dirname(__file__)

repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
config.test_exec_root = os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target")), "lit"
)

llvm_bin = os.environ.get("LLVM_BIN", "/usr/lib/llvm-22/bin")
target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
q35c = os.environ.get("Q35C", os.path.join(target_dir, "debug", "q35c"))
if not os.path.isfile(q35c):
    lit_config.fatal(f"q35c not found at {q35c}: run `cargo build -p q35c` or set Q35C")
for tool in ["FileCheck", "not", "split-file", "mlir-opt", "count"]:
    if not os.path.isfile(os.path.join(llvm_bin, tool)):
        lit_config.fatal(f"{tool} not found in {llvm_bin}: install LLVM 22 or set LLVM_BIN")

config.environment["PATH"] = os.pathsep.join([llvm_bin, os.environ.get("PATH", "")])
for var in ["HOME", "TMPDIR"]:
    if var in os.environ:
        config.environment[var] = os.environ[var]

smollm2 = os.environ.get(
    "Q35_SMOLLM2_GGUF",
    os.path.join(repo, ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
)
if os.environ.get("Q35_SKIP_MODEL_TESTS") != "1":
    # Present or not: a missing model must fail the tests that need it.
    config.available_features.add("smollm2")

config.substitutions.append(("%q35c", q35c))
config.substitutions.append(("%mlir-opt", os.path.join(llvm_bin, "mlir-opt")))
config.substitutions.append(("%irdl", os.path.join(repo, "dialects", "q35.irdl.mlir")))
config.substitutions.append(("%examples", os.path.join(repo, "examples")))
config.substitutions.append(("%targets", os.path.join(repo, "targets")))
config.substitutions.append(("%smollm2_gguf", smollm2))
