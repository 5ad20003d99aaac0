"""Streamed tokenization at scale: MB/s and peak RSS for 10 MB, 100 MB and 1 GB of generated text.

    python benchmarks/tokenize_scale.py [--sizes 10,100,1000] [--out benchmarks/results/tokenize_scale.json]

The text is TinyStories (the 2 MiB mirror file when MMLAB_DATA_MIRROR has it, else synthetic stories) with its
stories shuffled and repeated up to the size, written to a temp folder that is deleted afterwards. A byte-level
BPE of 6,400 tokens (MiniMind's size) is trained once on the 2 MiB sample; each size is then built into shards by
`build_shards` in a fresh child process, whose peak RSS (ru_maxrss) is reported. Goal (issue 19): flat memory,
<= 1.5 GB at 1 GB, and >= 10 MB/s on 2 cores. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
from pathlib import Path
from mmlab.data.shards import build_shards
from mmlab.tokenizer.base import load_tokenizer
src, tok, out = map(Path, sys.argv[1:4])
t0 = time.perf_counter()
built = build_shards([src], load_tokenizer(tok), out=out, val_fraction=0.01)
dt = time.perf_counter() - t0
m = built.manifest
print(json.dumps({"seconds": dt, "tokens": m["tokens"]["train"] + m["tokens"]["val"], "shards": len(m["shards"]),
                  "encoder": m["encoder"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def stories() -> list[str]:
    mirror = os.environ.get("MMLAB_DATA_MIRROR")
    path = Path(mirror) / "tinystories_train_head2MiB.txt" if mirror else None
    if path and path.is_file():
        from mmlab.data.corpus import split_documents

        return split_documents(path.read_text(), "<|endoftext|>")
    from mmlab.data.synthetic import story_corpus

    return story_corpus(n_chars=2_000_000, seed=0)


def write_corpus(path: Path, docs: list[str], mb: int, seed: int) -> int:
    rng, target, written = random.Random(seed), mb * 1_000_000, 0
    with open(path, "w") as f:
        while written < target:
            rng.shuffle(docs)
            block = "".join(d + "\n<|endoftext|>\n" for d in docs)
            f.write(block)
            written += len(block.encode())
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000", help="corpus sizes in MB, comma-separated")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    from mmlab.tokenizer.bpe import train_bpe

    docs = stories()
    tmp = Path(tempfile.mkdtemp(prefix="mmlab-tokscale-"))
    try:
        tok = train_bpe(docs, vocab_size=6400)
        tok.save(tmp / "tok")
        runs = []
        for mb in (int(s) for s in args.sizes.split(",")):
            src = tmp / f"corpus_{mb}mb.txt"
            size = write_corpus(src, list(docs), mb, seed=mb)
            child = subprocess.run([sys.executable, "-c", CHILD, str(src), str(tmp / "tok"), str(tmp / f"shards_{mb}")],
                                   capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"build of {mb} MB failed:\n{child.stderr[-2000:]}")
            r = json.loads(child.stdout.strip().splitlines()[-1])
            runs.append({"corpus_mb": round(size / 1e6, 1), "mb_per_s": round(size / 1e6 / r["seconds"], 2),
                         "peak_rss_mb": round(r["peak_rss_mb"], 1),
                         "worker_peak_rss_mb": round(r["worker_peak_rss_mb"], 1), "seconds": round(r["seconds"], 1),
                         "tokens": r["tokens"], "shards": r["shards"], "encoder": r["encoder"]})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
            src.unlink()
            shutil.rmtree(tmp / f"shards_{mb}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"benchmark": "tokenize_scale", "cpu": cpu_model(), "cores": os.cpu_count(),
              "tokenizer": "byte-level BPE, 6,400 tokens", "runs": runs,
              "goal": {"peak_rss_mb_at_1gb_max": 1500, "mb_per_s_min": 10},
              "note": "peak_rss_mb: the building process (ru_maxrss); worker_peak_rss_mb: the largest tokenizer "
                      "worker process; the benchmark's parent only writes the corpus. "
                      "time includes hashing the input and verifying the tokenizer match"}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
