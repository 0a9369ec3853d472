#!/usr/bin/env python3
"""Record llama.cpp reference outputs for q35-reference's tests.

Runs SmolLM2-135M-Instruct (Q4_1 GGUF) through llama.cpp (via llama-cpp-python
from PyPI, which builds llama.cpp from source) and writes a JSON fixture with:

* greedy continuations (temperature 0, i.e. argmax at every step) for a set of
  prompts: the prompt's token IDs as llama.cpp tokenizes them, the generated
  token IDs, and the top-1/top-2 logit margin at every step (to tell real
  divergences from near-ties);
* the top logits at the last prompt position of each prompt;
* perplexity exactly as llama-perplexity computes it: the whole text is
  tokenized once (BOS only if the model adds one), split into
  floor(n_tokens / ctx) non-overlapping windows of ctx tokens, each window is
  evaluated from an empty KV cache, and the logits of positions
  [ctx/2, ctx-1) score the tokens that follow them (ctx - 1 - ctx/2 tokens per
  window). The per-window negative log-likelihood sums and token counts are
  recorded, with the text's token IDs.

With --f32-weights the same is recorded on an F32 copy of the GGUF (every
tensor dequantized by the `gguf` package) with an F32 KV cache and flash
attention off. llama.cpp then multiplies f32 by f32 (it quantizes activations
only for quantized weights), so its arithmetic is the f32 reference's up to
summation order: this fixture checks the forward pass's semantics tightly,
while the Q4_1 fixture is the end-to-end comparison with llama.cpp as users
run it (Q8_1 activations, f16 KV cache).

The outputs are committed as fixtures; CI does not run llama.cpp. Re-run with:

    python3 scripts/reference/record_llamacpp.py
    python3 scripts/reference/record_llamacpp.py --f32-weights
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURES = ROOT / "runtime/reference/tests/fixtures"
DEFAULT_OUT = FIXTURES / "llamacpp_smollm2.json"
DEFAULT_OUT_F32 = FIXTURES / "llamacpp_smollm2_f32.json"
DEFAULT_TEXT = ROOT / "tests/data/eval_en.txt"

# Plain-text prompts (tokenized without special-token parsing, no BOS, as
# llama.cpp does for this model).
PROMPTS = [
    "Once upon a time, there was a little robot who",
    "The capital of France is",
    "def fibonacci(n):\n",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In 1969, the Apollo 11 mission",
    "The best way to learn a new language is",
    "Photosynthesis is the process by which",
    "1, 2, 3, 4, 5, 6,",
    "Monday, Tuesday, Wednesday,",
    "import numpy as np\nimport",
    "The United States of America declared independence in",
]

# Chat-mode prompts: rendered with the GGUF's own chat template (jinja2) and
# tokenized with special-token parsing.
CHAT_PROMPTS = [
    [("user", "What is the capital of France?")],
    [("user", "Write a haiku about the sea.")],
]

N_GENERATE = 32
TOP_LOGITS = 16
PPL_SETTINGS = [(128, None), (256, None), (512, None)]


def log_softmax_row(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    m = row.max()
    return row - m - math.log(np.exp(row - m).sum())


def greedy(llm, prompt_tokens: list[int], n: int, eos: int) -> dict:
    llm.reset()
    llm.eval(prompt_tokens)
    last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    order = np.argsort(-last, kind="stable")[:TOP_LOGITS]
    top = [{"id": int(i), "logit": float(last[i])} for i in order]
    out, margins = [], []
    for _ in range(n):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        o = np.argsort(-logits, kind="stable")[:2]
        tok = int(o[0])
        margins.append(float(logits[o[0]] - logits[o[1]]))
        out.append(tok)
        if tok == eos:
            break
        llm.eval([tok])
    return {"generated": out, "margins": margins, "last_prompt_top_logits": top}


def perplexity(llm, tokens: list[int], ctx: int, add_bos: bool, bos: int, max_windows):
    n_windows = len(tokens) // ctx
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    first = ctx // 2
    windows = []
    total_nll, total_count = 0.0, 0
    for w in range(n_windows):
        start = w * ctx
        chunk = list(tokens[start : start + ctx])
        if add_bos:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        scores = np.array(llm.scores[:ctx], dtype=np.float32)
        nll, count = 0.0, 0
        for j in range(first, ctx - 1):
            lp = log_softmax_row(scores[j])
            nll -= lp[tokens[start + j + 1]]
            count += 1
        windows.append({"start": start, "nll_sum": nll, "count": count})
        total_nll += nll
        total_count += count
    return {
        "ctx": ctx,
        "windows": n_windows,
        "first": first,
        "per_window": windows,
        "nll_sum": total_nll,
        "count": total_count,
        "ppl": math.exp(total_nll / total_count),
    }


def write_f32_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Writes `src` with every tensor dequantized to F32 (same metadata)."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            writer.add_key_value(key, 0, gguf.GGUFValueType.UINT32)  # ALL_F32
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        writer.add_tensor(t.name, data.reshape([int(d) for d in reversed(t.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.environ.get("Q35_SMOLLM2_GGUF", str(DEFAULT_MODEL)))
    ap.add_argument("--text", default=str(DEFAULT_TEXT))
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--f32-weights", action="store_true", help="run llama.cpp on an F32 copy, F32 KV cache")
    args = ap.parse_args()
    out_path = pathlib.Path(args.out or (DEFAULT_OUT_F32 if args.f32_weights else DEFAULT_OUT))

    import jinja2
    import llama_cpp
    from llama_cpp import Llama

    model_path = pathlib.Path(args.model)
    run_path = model_path
    settings = {}
    tmpdir = None
    if args.f32_weights:
        import tempfile

        tmpdir = tempfile.TemporaryDirectory()
        run_path = pathlib.Path(tmpdir.name) / "model-f32.gguf"
        write_f32_copy(model_path, run_path)
        settings = {"type_k": 0, "type_v": 0, "flash_attn": False}  # GGML_TYPE_F32
    llm = Llama(
        model_path=str(run_path),
        n_ctx=1024,
        n_batch=512,
        n_threads=args.threads,
        logits_all=True,
        verbose=False,
        seed=0,
        **settings,
    )
    meta = llm.metadata
    bos = int(meta["tokenizer.ggml.bos_token_id"])
    eos = int(meta["tokenizer.ggml.eos_token_id"])
    add_bos = meta.get("tokenizer.ggml.add_bos_token", "false").lower() == "true"
    template = meta["tokenizer.chat_template"]

    prompts = []
    for text in PROMPTS:
        toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        rec = {"mode": "text", "prompt": text, "prompt_tokens": toks}
        rec.update(greedy(llm, toks, N_GENERATE, eos))
        rec["text"] = llm.detokenize(rec["generated"]).decode("utf-8", errors="replace")
        prompts.append(rec)
        print(f"{text!r}: {len(rec['generated'])} tokens, min margin {min(rec['margins']):.3f}", file=sys.stderr)

    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)
    tmpl = env.from_string(template)
    for msgs in CHAT_PROMPTS:
        rendered = tmpl.render(
            messages=[{"role": r, "content": c} for r, c in msgs],
            add_generation_prompt=True,
            bos_token=llm.detokenize([bos], special=True).decode(),
            eos_token=llm.detokenize([eos], special=True).decode(),
        )
        toks = llm.tokenize(rendered.encode("utf-8"), add_bos=True, special=True)
        rec = {"mode": "chat", "messages": [list(m) for m in msgs], "prompt": rendered, "prompt_tokens": toks}
        rec.update(greedy(llm, toks, N_GENERATE, eos))
        rec["text"] = llm.detokenize(rec["generated"]).decode("utf-8", errors="replace")
        prompts.append(rec)
        print(f"chat {msgs!r}: {len(rec['generated'])} tokens, min margin {min(rec['margins']):.3f}", file=sys.stderr)

    text_path = pathlib.Path(args.text)
    text_bytes = text_path.read_bytes()
    text = text_bytes.decode("utf-8")
    text_tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    ppl = []
    for ctx, max_windows in PPL_SETTINGS:
        r = perplexity(llm, text_tokens, ctx, add_bos, bos, max_windows)
        print(f"ppl ctx={ctx} windows={r['windows']} count={r['count']}: {r['ppl']:.4f}", file=sys.stderr)
        ppl.append(r)

    fixture = {
        "generator": "scripts/reference/record_llamacpp.py",
        "llama_cpp_python_version": llama_cpp.__version__,
        "model_file": model_path.name,
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "n_threads": args.threads,
        "weights": "f32 copy (dequantized by the gguf package), f32 KV cache, no flash attention"
        if args.f32_weights
        else "as stored (Q4_1 / Q8_0), llama.cpp defaults (f16 KV cache)",
        "bos": bos,
        "eos": eos,
        "add_bos": add_bos,
        "greedy": prompts,
        "perplexity": {
            "text_file": str(text_path.relative_to(ROOT)) if text_path.is_relative_to(ROOT) else str(text_path),
            "text_sha256": hashlib.sha256(text_bytes).hexdigest(),
            "tokens": text_tokens,
            "runs": ppl,
        },
    }
    out = out_path
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(fixture, indent=1) + "\n")
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
