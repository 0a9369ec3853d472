#!/usr/bin/env python3
"""llama.cpp's speed on the same model and workload as scripts/bench.

Uses llama-cpp-python (PyPI; builds llama.cpp from source). Prefill is one
`eval` of the prompt tokens, decode is single-token `eval` steps with greedy
picks, as the reference's bench example does; the median over repeats, and
the process's CPU time per token (all threads; llama.cpp's threads spin while
they wait, so this counts their waiting too).

    python3 scripts/reference/bench_llamacpp.py MODEL.gguf [--threads 2]
        [--prefill 128] [--decode 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(
        model_path=args.model,
        n_ctx=max(512, args.prefill + args.decode + 8),
        n_batch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    vocab = llm.n_vocab()
    prompt = [(i * 7919 + 17) % vocab for i in range(args.prefill)]
    llm.reset()
    llm.eval(prompt[:8])  # warm-up
    prefill, decode = [], []
    # CPU seconds of the whole process (all threads), as the reference's bench reports.
    prefill_cpu = decode_cpu = 0.0
    repeats = max(1, args.repeat)
    for _ in range(repeats):
        llm.reset()
        c = time.process_time()
        t = time.perf_counter()
        llm.eval(prompt)
        prefill.append(args.prefill / (time.perf_counter() - t))
        c1 = time.process_time()
        prefill_cpu += c1 - c
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t = time.perf_counter()
        for _ in range(args.decode):
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        decode.append(args.decode / (time.perf_counter() - t))
        decode_cpu += time.process_time() - c1
    print(
        json.dumps(
            {
                "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
                "model": args.model,
                "threads": args.threads,
                "prefill_tokens": args.prefill,
                "prefill_tok_s": round(statistics.median(prefill), 2),
                "prefill_cpu_ms_per_token": round(prefill_cpu * 1000 / (args.prefill * repeats), 3),
                "decode_tokens": args.decode,
                "decode_tok_s": round(statistics.median(decode), 2),
                "decode_cpu_ms_per_token": round(decode_cpu * 1000 / (args.decode * repeats), 3),
                "repeats": args.repeat,
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
