"""One at a time, static or continuous batching: which serves 1, 4 and 16 clients more tokens/s, and answers sooner?

One fixed, seeded workload (long-tailed prompt and output lengths; see ``_common.py``) is served by three
schedulers, in-process (no HTTP), to 1, 4 and 16 closed-loop clients — each client sends its next request the
moment its previous answer is complete:

* **one at a time**: a FIFO queue and ``stream_generate`` (a contiguous KV cache for one sequence);
* **static batching**: what is waiting (up to 16) is left-padded, prefilled together and decoded until its
  *longest* request is done; arrivals wait for the next batch (written in ``_common.py``: the library has no
  static batcher, and a padded batch with per-row positions is a few lines on top of ``KVCache``);
* **continuous batching**: ``mmlab.infer.engine.Engine`` (paged KV cache, admission at every step, up to 16
  sequences decoded together).

Per run: aggregate decode throughput (generated tokens / wall time from the first request to the last token),
time to first token (TTFT) and latency (arrival to last token), p50 and p95 over the requests. Schedulers and
client counts are interleaved in every repeat, so a slow moment of the machine hits all of them; each number is
the median over the repeats. Every scheduler must produce, token for token, the greedy output of each request
generated alone: the script checks it (a finding, and an error after the results are saved if it fails).
"""

import statistics

import torch
from _common import (
    BLOCK_SIZE,
    MAX_BATCH,
    SCHEDULERS,
    describe_model,
    first_mismatch,
    mixed_workload,
    reference_outputs,
    save_and_check,
    serve,
    serving_model,
)

from mmlab.device import cpu_label
from mmlab.lab import Experiment
from mmlab.lab.plots import figure

CLIENTS = (1, 4, 16)
METRICS = ("tokens_per_s", "ttft_p50_s", "ttft_p95_s", "latency_p50_s", "latency_p95_s", "wall_s")


def main(exp: Experiment) -> None:
    repeats = exp.pick(full=5, quick=1, smoke=1)
    clients = exp.pick(full=CLIENTS, quick=CLIENTS, smoke=(1, 4))
    model = serving_model(exp)
    jobs, lengths = mixed_workload(exp, model.cfg.vocab_size)
    n_requests = len(jobs)
    exp.set_config(model=describe_model(model), requests=n_requests, workload=lengths, clients=list(clients),
                   repeats=repeats, schedulers=list(SCHEDULERS), max_batch=MAX_BATCH, block_size=BLOCK_SIZE,
                   decoding="greedy, fixed max_new_tokens, no stop token", threads=torch.get_num_threads(),
                   prompt_lengths=[len(j.prompt) for j in jobs], output_lengths=[j.max_new for j in jobs],
                   cpu=cpu_label())

    reference = reference_outputs(model, jobs)  # also the warm-up: first calls allocate and pick kernels
    for scheduler in SCHEDULERS:
        serve(scheduler, model, jobs[:2], 2)
    samples = {s: {c: {m: [] for m in METRICS} for c in clients} for s in SCHEDULERS}
    mismatches: dict[str, dict] = {}
    counters: dict[str, dict[str, dict]] = {s: {} for s in SCHEDULERS}
    for r in range(repeats):
        for c in clients:
            for scheduler in SCHEDULERS:
                run = serve(scheduler, model, jobs, c)
                for m, v in run.summary().items():
                    if m in METRICS:
                        samples[scheduler][c][m].append(v)
                if (bad := first_mismatch(run.outputs(), reference)) is not None:
                    mismatches[f"{scheduler}, {c} clients, repeat {r + 1}"] = bad
                counters[scheduler][str(c)] = {k: v for k, v in run.extra.items()
                                               if k not in ("trace", "cached_prompt_tokens")}
        exp.log(f"repeat {r + 1}/{repeats} done")
    med = {s: {c: {m: statistics.median(v) for m, v in d.items()} for c, d in by_c.items()}
           for s, by_c in samples.items()}
    exp.metric("median", med)
    exp.metric("samples", samples)
    exp.metric("counters", counters)
    exp.metric("output_mismatches", mismatches)
    total_tokens = sum(j.max_new for j in jobs)
    exp.metric("generated_tokens", total_tokens)

    rows = []
    for c in clients:
        for s in SCHEDULERS:
            m = med[s][c]
            rows.append([c, s, m["tokens_per_s"], m["tokens_per_s"] / med["one at a time"][c]["tokens_per_s"],
                         1000 * m["ttft_p50_s"], 1000 * m["ttft_p95_s"], m["latency_p50_s"], m["latency_p95_s"]])
    exp.table("serving", ["clients", "scheduler", "tokens/s", "x one at a time", "TTFT p50 (ms)", "TTFT p95 (ms)",
                          "latency p50 (s)", "latency p95 (s)"], rows,
              caption=f"{n_requests} requests ({total_tokens} generated tokens, greedy), closed-loop clients; "
                      f"median of {repeats} interleaved repeat(s); tokens/s = generated tokens / wall time from the "
                      f"first request to the last token; latency = arrival to last token. At most {MAX_BATCH} "
                      f"sequences per batch; KV blocks of {BLOCK_SIZE}. {cpu_label()}, in-process (no HTTP).")
    top = max(clients)
    st = counters["static batching"][str(top)]
    ct = counters["continuous batching"][str(top)]
    exp.table("work", ["scheduler", "decode passes", "mean rows per decode pass", "decode rows computed",
                       "of them for finished rows", "prompt tokens prefilled", "padding tokens prefilled"],
              [["static batching", st["decode_passes"], st["decode_rows"] / st["decode_passes"], st["decode_rows"],
                st["wasted_rows"], st["prompt_tokens"], st["padding_tokens"]],
               ["continuous batching", ct["steps"], ct["decode_tokens"] / ct["steps"], ct["decode_tokens"], 0,
                ct["prefill_tokens"], 0]],
              caption=f"the work of the two batching schedulers for the same {n_requests} requests at {top} clients "
                      "(counted, not timed). A static batch decodes every row until its longest request is done "
                      "and prefills its prompts padded to the longest; the engine decodes only running sequences "
                      "and prefills each prompt on its own, unpadded.")

    # ---- findings (timing ones compare medians measured side by side) ----
    tps = {s: {c: med[s][c]["tokens_per_s"] for c in clients} for s in SCHEDULERS}
    one, static, cont = (tps[s] for s in SCHEDULERS)
    exp.finding(f"At {top} clients continuous batching serves more tokens/s than one request at a time",
                cont[top] > one[top], continuous=cont[top], one_at_a_time=one[top], ratio=cont[top] / one[top])
    exp.finding(f"At {top} clients continuous batching serves more tokens/s than static batching",
                cont[top] > static[top], continuous=cont[top], static=static[top], ratio=cont[top] / static[top])
    exp.finding(f"At {top} clients static batching serves more tokens/s than one request at a time",
                static[top] > one[top], static=static[top], one_at_a_time=one[top], ratio=static[top] / one[top])
    exp.finding("With one client there is nothing to batch: continuous batching's tokens/s is within 25% of one "
                "request at a time", abs(cont[1] / one[1] - 1) < 0.25, ratio=cont[1] / one[1])
    exp.finding(f"One request at a time gains nothing from more clients: its tokens/s at {top} clients is within "
                "15% of its tokens/s at 1", abs(one[top] / one[1] - 1) < 0.15, ratio=one[top] / one[1])
    exp.finding(f"Continuous batching's tokens/s at {top} clients is more than twice its tokens/s at 1",
                cont[top] > 2 * cont[1], ratio=cont[top] / cont[1])
    ttft = {s: med[s][top]["ttft_p95_s"] for s in SCHEDULERS}
    exp.finding(f"At {top} clients continuous batching has the lowest p95 time to first token (a request joins at "
                "the next step instead of waiting for a batch or a queue)", ttft["continuous batching"] == min(
                    ttft.values()), **{s.replace(" ", "_") + "_s": v for s, v in ttft.items()})
    q1, qn = med["one at a time"][1]["ttft_p50_s"], med["one at a time"][top]["ttft_p50_s"]
    exp.finding(f"One request at a time makes clients queue: its p50 time to first token at {top} clients is more "
                "than 4x that at 1 client", qn > 4 * q1, **{"1_client_s": q1, f"{top}_clients_s": qn}, ratio=qn / q1)
    lat = {s: med[s][top]["latency_p50_s"] for s in SCHEDULERS}
    exp.finding(f"At {top} clients continuous batching has a lower p50 latency than static batching",
                lat["continuous batching"] < lat["static batching"],
                **{s.replace(" ", "_") + "_s": v for s, v in lat.items()})
    wasted = st["wasted_rows"] / st["decode_rows"]
    exp.finding(f"Static batching spends part of its decode work on rows that have already finished (at {top} "
                "clients; counted, not timed)", wasted > 0, wasted_share=wasted,
                padding_share_of_prefill=st["padding_tokens"] / (st["prompt_tokens"] + st["padding_tokens"]))
    exp.finding("Every scheduler, at every client count, produced exactly the greedy tokens of each request "
                "generated alone", not mismatches, mismatching_runs=len(mismatches),
                first=next(iter(mismatches), None))

    # ---- plots ----
    fig, axes = figure(3, width=5.0, height=3.8)
    panels = (("tokens_per_s", 1, "aggregate decode tokens / s", "throughput"),
              ("ttft_p95_s", 1000, "time to first token (ms)", "time to first token"),
              ("latency_p95_s", 1, "per-request latency (s)", "latency"))
    for ax, (metric, scale, ylabel, title) in zip(axes[0], panels, strict=True):
        for k, s in enumerate(SCHEDULERS):
            ax.plot(list(clients), [scale * med[s][c][metric] for c in clients], "o-", color=f"C{k}", label=s)
            if metric != "tokens_per_s":  # p50 dashed, under the p95
                p50 = metric.replace("p95", "p50")
                ax.plot(list(clients), [scale * med[s][c][p50] for c in clients], ":", color=f"C{k}", alpha=0.7)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(clients), [str(c) for c in clients])
        ax.set(xlabel="concurrent clients", ylabel=ylabel,
               title=title if metric == "tokens_per_s" else f"{title} (solid: p95, dotted: p50)")
        if metric != "tokens_per_s":
            ax.set_yscale("log")
    axes[0][0].legend()
    save_and_check(exp, fig, mismatches, "greedy outputs differ between schedulers")


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
