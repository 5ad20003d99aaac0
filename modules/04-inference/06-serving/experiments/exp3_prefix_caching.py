"""With a shared system prompt, how much prefill and time to first token does prefix caching save, at equal outputs?

Requests that share a system prompt (followed by a question of their own) are served by the engine
(``mmlab.infer.engine.Engine``, continuous batching, blocks of 16) to 4 closed-loop clients, with prefix caching
on and off, side by side in every repeat. With it on, each full block of a prompt is identified by a hash chained
over every token up to its end; a new prompt whose first blocks hash the same reuses those blocks (reference
counted, never written again) and prefills only the rest. Measured: the block hit rate (blocks found / blocks
looked up, ``Engine.stats``), the prompt tokens actually computed, the prompt tokens served from the cache per
request, time to first token (p50 / p95) and latency, medians over the repeats. The main system prompt is
deliberately not a multiple of the block size: its last, partly shared block cannot be reused. A sweep over the
system prompt's length shows how the saving grows with it. Every request's output must equal the request
generated alone, with or without the cache.
"""

import statistics
from itertools import pairwise

import torch
from _common import (
    BLOCK_SIZE,
    describe_model,
    first_mismatch,
    reference_outputs,
    save_and_check,
    serve_continuous,
    serving_model,
    shared_prefix_workload,
)

from mmlab.device import cpu_label
from mmlab.lab import Experiment
from mmlab.lab.plots import figure

CLIENTS = 4
METRICS = ("ttft_p50_s", "ttft_p95_s", "latency_p50_s", "latency_p95_s", "wall_s", "tokens_per_s")


def measure(model, jobs, repeats: int, reference) -> tuple[dict, dict, dict]:
    """Serve ``jobs`` with the cache on and off, interleaved: medians of the timings, the counters, mismatches."""
    times = {on: {m: [] for m in METRICS} for on in (True, False)}
    counters, mismatches = {}, {}
    for _ in range(repeats):
        for on in (True, False):
            run = serve_continuous(model, jobs, CLIENTS, prefix_cache=on)
            for m, v in run.summary().items():
                if m in METRICS:
                    times[on][m].append(v)
            counters[on] = {k: run.extra[k] for k in ("prefix_hit_rate", "prefill_tokens", "steps", "decode_tokens")}
            counters[on]["cached_prompt_tokens"] = run.extra["cached_prompt_tokens"]
            if (bad := first_mismatch(run.outputs(), reference)) is not None:
                mismatches["on" if on else "off"] = bad
    med = {on: {m: statistics.median(v) for m, v in d.items()} for on, d in times.items()}
    return med, counters, mismatches


def main(exp: Experiment) -> None:
    n = exp.pick(full=32, quick=16, smoke=6)
    repeats = exp.pick(full=5, quick=1, smoke=1)
    system_len = exp.pick(full=250, quick=250, smoke=40)  # not a multiple of 16: the last shared block is partial
    sweep_lengths = exp.pick(full=[0, 64, 128, 256, 384], quick=[0, 128, 384], smoke=[0, 32])
    question, output = exp.pick(full=((8, 40), (8, 32)), quick=((8, 24), (4, 12)), smoke=((2, 6), (2, 4)))
    model = serving_model(exp)
    vocab = model.cfg.vocab_size
    jobs = shared_prefix_workload(n, exp.seed, vocab, system_len, question, output)
    exp.set_config(model=describe_model(model), requests=n, clients=CLIENTS, repeats=repeats, system_prompt=system_len,
                   question_tokens=list(question), output_tokens=list(output), block_size=BLOCK_SIZE,
                   sweep_system_lengths=sweep_lengths, threads=torch.get_num_threads(), cpu=cpu_label())

    reference = reference_outputs(model, jobs)
    serve_continuous(model, jobs[:2], 2)  # warm-up
    med, counters, mismatches = measure(model, jobs, repeats, reference)
    on, off = counters[True], counters[False]
    prompt_tokens = sum(len(j.prompt) for j in jobs)
    shared_blocks = system_len // BLOCK_SIZE
    cached = on["cached_prompt_tokens"]
    exp.metric("median", {"on": med[True], "off": med[False]})
    exp.metric("counters", {"on": on, "off": off})
    exp.table("prefix_cache", ["prefix cache", "block hit rate", "prompt tokens computed", "of all prompt tokens",
                               "TTFT p50 (ms)", "TTFT p95 (ms)", "latency p50 (s)", "latency p95 (s)", "wall (s)"],
              [[label, c["prefix_hit_rate"], c["prefill_tokens"], c["prefill_tokens"] / prompt_tokens,
                1000 * m["ttft_p50_s"], 1000 * m["ttft_p95_s"], m["latency_p50_s"], m["latency_p95_s"], m["wall_s"]]
               for label, c, m in (("on", on, med[True]), ("off", off, med[False]))],
              caption=f"{n} requests = the same {system_len}-token system prompt + a question of {question[0]}-"
                      f"{question[1]} tokens, {output[0]}-{output[1]} new tokens each (greedy), {CLIENTS} closed-loop "
                      f"clients, continuous batching, blocks of {BLOCK_SIZE}; median of {repeats} interleaved "
                      f"repeat(s). {cpu_label()}.")
    exp.table("per_request", ["request", "prompt tokens", "served from the cache", "computed"],
              [[i + 1, len(j.prompt), cached[i], len(j.prompt) - cached[i]] for i, j in enumerate(jobs[:6])],
              caption=f"the first requests with the cache on. The system prompt's {shared_blocks} full blocks "
                      f"({shared_blocks * BLOCK_SIZE} tokens) can be shared; its last {system_len % BLOCK_SIZE} tokens "
                      "share a block with the question, whose hash differs for every request.")

    # ---- the sweep over the system prompt's length ----
    sweep = {}
    for length in sweep_lengths:
        sjobs = shared_prefix_workload(n, exp.seed + 1, vocab, length, question, output)
        sref = reference_outputs(model, sjobs)
        smed, scount, smis = measure(model, sjobs, repeats, sref)
        mismatches.update({f"system {length}, cache {k}": v for k, v in smis.items()})
        sweep[length] = {"prefill_on": scount[True]["prefill_tokens"], "prefill_off": scount[False]["prefill_tokens"],
                         "hit_rate": scount[True]["prefix_hit_rate"], "ttft_p50_on_s": smed[True]["ttft_p50_s"],
                         "ttft_p50_off_s": smed[False]["ttft_p50_s"], "wall_on_s": smed[True]["wall_s"],
                         "wall_off_s": smed[False]["wall_s"]}
        exp.log(f"system prompt {length}: prefill {sweep[length]['prefill_on']} vs {sweep[length]['prefill_off']}")
    exp.metric("sweep", sweep)
    exp.metric("output_mismatches", mismatches)
    exp.table("sweep", ["system prompt (tokens)", "block hit rate", "prompt tokens computed, on", "off",
                        "saved", "TTFT p50 on (ms)", "TTFT p50 off (ms)", "wall on (s)", "wall off (s)"],
              [[k, v["hit_rate"], v["prefill_on"], v["prefill_off"], 1 - v["prefill_on"] / v["prefill_off"],
                1000 * v["ttft_p50_on_s"], 1000 * v["ttft_p50_off_s"], v["wall_on_s"], v["wall_off_s"]]
               for k, v in sweep.items()],
              caption=f"the same {n} requests' shape with system prompts of other lengths (another seed); saved = "
                      "the share of prompt tokens not computed thanks to the cache.")

    # ---- findings ----
    expected = (n - 1) * shared_blocks * BLOCK_SIZE  # every request after the first reuses the full shared blocks
    exp.finding("With prefix caching the engine computed fewer prompt tokens, by at least the shared system prompt's "
                "full blocks for every request after the first", off["prefill_tokens"] - on["prefill_tokens"] >=
                expected, saved=off["prefill_tokens"] - on["prefill_tokens"], full_shared_blocks_x_later_requests=
                expected)
    exp.finding(f"The system prompt's last, partial block ({system_len % BLOCK_SIZE} tokens) is recomputed: no request "
                f"got more than {shared_blocks * BLOCK_SIZE} of its {system_len} shared tokens from the cache",
                max(cached) == shared_blocks * BLOCK_SIZE, largest_cached=max(cached), first_request=cached[0])
    exp.finding("More than half of the blocks looked up were found in the cache", on["prefix_hit_rate"] > 0.5,
                hit_rate=on["prefix_hit_rate"])
    exp.finding("Prefix caching lowered the p50 time to first token",
                med[True]["ttft_p50_s"] < med[False]["ttft_p50_s"],
                on_ms=1000 * med[True]["ttft_p50_s"], off_ms=1000 * med[False]["ttft_p50_s"],
                ratio=med[True]["ttft_p50_s"] / med[False]["ttft_p50_s"])
    exp.finding("Prefix caching lowered the p95 time to first token",
                med[True]["ttft_p95_s"] < med[False]["ttft_p95_s"],
                on_ms=1000 * med[True]["ttft_p95_s"], off_ms=1000 * med[False]["ttft_p95_s"])
    saved = [1 - v["prefill_on"] / v["prefill_off"] for v in sweep.values()]
    exp.finding("The share of prompt tokens saved grows with the system prompt's length (counted)",
                all(b >= a for a, b in pairwise(saved)) and saved[-1] > saved[0],
                **{f"saved_{k}": s for k, s in zip(sweep, saved, strict=True)})
    exp.finding("With and without the prefix cache, every request's greedy output equals the request generated alone",
                not mismatches, mismatching_runs=len(mismatches), first=next(iter(mismatches), None))

    # ---- plots ----
    fig, axes = figure(2, width=5.6, height=3.9)
    ax = axes[0][0]
    lengths = list(sweep)
    ax.plot(lengths, [sweep[k]["prefill_off"] for k in lengths], "o-", color="C1", label="prefix cache off")
    ax.plot(lengths, [sweep[k]["prefill_on"] for k in lengths], "o-", color="C2", label="prefix cache on")
    ax.set(xlabel="shared system prompt (tokens)", ylabel=f"prompt tokens computed ({n} requests)",
           title="prefill work")
    ax.legend()
    ax = axes[0][1]
    ax.plot(lengths, [1000 * sweep[k]["ttft_p50_off_s"] for k in lengths], "o-", color="C1", label="off, p50")
    ax.plot(lengths, [1000 * sweep[k]["ttft_p50_on_s"] for k in lengths], "o-", color="C2", label="on, p50")
    ax.set(xlabel="shared system prompt (tokens)", ylabel="time to first token, p50 (ms)",
           title=f"time to first token, {CLIENTS} clients")
    ax.legend()
    save_and_check(exp, fig, mismatches, "greedy outputs differ with prefix caching")


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
