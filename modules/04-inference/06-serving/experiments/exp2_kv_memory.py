"""How much KV memory does serving really use, paged blocks against preallocated slots, and how many sequences fit?

Everything here is counted, not timed (the numbers are the same on any machine). Three parts:

1. **Used against preallocated.** exp1's workload at 16 clients, served by static batching (a contiguous cache
   of ``max_seq_len`` positions per row, as gpt-fast's static cache and a server with fixed slots hold) and by
   the engine (``mmlab.infer.engine.Engine``: blocks of 16 positions handed out as a sequence grows). After every
   forward pass: the tokens whose keys and values are really stored, the bytes each cache holds, and for the
   engine the blocks it has reserved at admission but not yet written.
2. **Block size.** The same traffic through the engine with blocks of 1 to 256 positions: a sequence's last
   block is partly empty (internal fragmentation), so bigger blocks waste more; smaller ones mean longer block
   tables (more indices to gather per step).
3. **A fixed budget.** A pool with the bytes of a few contiguous ``max_seq_len`` slots (4 in the full run), and
   every request of the workload waiting at once: how many sequences does the engine run together, against the
   number of slots? The engine admits a request only when it can reserve every block the request may need (prompt +
   ``max_new_tokens``), so the reservation, not the bytes written, is what limits it.

Each engine run's outputs are checked against the requests generated alone (greedy): the block size changes
where keys live, never what the model computes.
"""

import numpy as np
from _common import (
    BLOCK_SIZE,
    MAX_BATCH,
    describe_model,
    first_mismatch,
    mixed_workload,
    reference_outputs,
    save_and_check,
    serve_continuous,
    serve_static,
    serving_model,
)

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.model.summary import kv_cache_bytes_per_token

MiB = 2 ** 20


def main(exp: Experiment) -> None:
    model = serving_model(exp)
    jobs, settings = mixed_workload(exp, model.cfg.vocab_size)
    clients = exp.pick(full=16, quick=16, smoke=4)
    block_sizes = exp.pick(full=[1, 4, 16, 64, 256], quick=[1, 4, 16, 64, 256], smoke=[4, 16])
    slots = exp.pick(full=4, quick=2, smoke=1)  # part 3: the pool gets the bytes of this many contiguous caches
    per_token = kv_cache_bytes_per_token(model.cfg, 4)
    ctx = model.cfg.max_seq_len
    exp.set_config(model=describe_model(model), workload=settings, clients=clients, max_batch=MAX_BATCH,
                   block_sizes=block_sizes, budget_contiguous_slots=slots, kv_bytes_per_token=per_token,
                   prompt_lengths=[len(j.prompt) for j in jobs], output_lengths=[j.max_new for j in jobs])
    reference = reference_outputs(model, jobs)
    mismatches = {}

    # ---- 1. used against preallocated, at exp1's busiest load ----
    static = serve_static(model, jobs, clients, trace=True)
    paged = serve_continuous(model, jobs, clients, trace=True)
    for name, run in (("static batching", static), ("continuous batching", paged)):
        if (bad := first_mismatch(run.outputs(), reference)) is not None:
            mismatches[name] = bad
    block_bytes = paged.extra["kv_bytes_per_block"]
    st, pg = static.extra["trace"], paged.extra["trace"]
    slots_bytes = MAX_BATCH * ctx * per_token  # 16 contiguous caches of the whole context (the engine's own pool)
    series = {
        "static: preallocated (max_seq_len per row)": [s["cache_bytes"] / MiB for s in st],
        "static: padded rows up to the current step": [s["padded_tokens"] * per_token / MiB for s in st],
        "static: tokens really stored": [s["tokens_stored"] * per_token / MiB for s in st],
        "paged: blocks held + reserved": [(s["blocks_held"] + s["blocks_reserved"]) * block_bytes / MiB for s in pg],
        "paged: blocks held": [s["blocks_held"] * block_bytes / MiB for s in pg],
        "paged: tokens really stored": [s["tokens_stored"] * per_token / MiB for s in pg],
    }
    x = {"static": [s["generated"] for s in st], "paged": [s["generated"] for s in pg]}
    peak = {k: max(v) for k, v in series.items()}
    mean = {k: float(np.mean(v)) for k, v in series.items()}
    exp.metric("trace_static", st)
    exp.metric("trace_paged", pg)
    exp.metric("peak_mib", peak)
    exp.metric("mean_mib", mean)
    exp.metric("peak_blocks_held_exact", paged.extra["peak_blocks_held"])
    rows = [[k, peak[k], mean[k], peak[k] / (slots_bytes / MiB)] for k in series]
    exp.table("memory", ["KV memory", "peak (MiB)", "mean over forward passes (MiB)", "peak / 16 full slots"], rows,
              caption=f"exp1's {len(jobs)} requests at {clients} closed-loop clients; fp32 keys and values, "
                      f"{per_token:,} bytes per token; a full slot is {ctx} positions ({ctx * per_token / MiB:.0f} "
                      f"MiB), 16 slots = {slots_bytes / MiB:.0f} MiB, which is also the engine's default pool "
                      f"({paged.extra['blocks']} blocks of {BLOCK_SIZE}). 'Really stored' counts the prompt and "
                      "generated tokens whose keys and values are in the cache.")

    # ---- 2. block size ----
    sweep = {}
    for bs in block_sizes:
        run = paged if bs == BLOCK_SIZE else serve_continuous(model, jobs, clients, block_size=bs, trace=True)
        if (bad := first_mismatch(run.outputs(), reference)) is not None:
            mismatches[f"block size {bs}"] = bad
        tr = [s for s in run.extra["trace"] if s["blocks_held"]]
        held_slots = sum(s["blocks_held"] * bs for s in tr)
        stored = sum(s["tokens_stored"] for s in tr)
        running = sum(s["running"] for s in tr)
        sweep[bs] = {"peak_mib": max(s["blocks_held"] for s in tr) * bs * per_token / MiB,
                     "waste_share": 1 - stored / held_slots,
                     "empty_slots_per_sequence": (held_slots - stored) / running,
                     "blocks_per_sequence": sum(s["blocks_held"] for s in tr) / running,
                     "peak_reserved_mib": max(s["blocks_held"] + s["blocks_reserved"] for s in tr) * bs * per_token
                     / MiB}
    exp.metric("block_sizes", sweep)
    exp.table("block_size", ["block size", "peak held (MiB)", "share of held slots empty", "empty slots per sequence",
                             "blocks per sequence (table length)", "peak held + reserved (MiB)"],
              [[bs, v["peak_mib"], v["waste_share"], v["empty_slots_per_sequence"], v["blocks_per_sequence"],
                v["peak_reserved_mib"]] for bs, v in sweep.items()],
              caption="the same traffic through the engine with other block sizes; averages over forward passes "
                      "and running sequences. An empty slot is a position of a held block that holds no token yet "
                      "(a sequence's last block, partly filled).")

    # ---- 3. a fixed budget: how many sequences fit ----
    budget_blocks = slots * ctx // BLOCK_SIZE
    burst = serve_continuous(model, jobs, len(jobs), max_batch=len(jobs), n_blocks=budget_blocks, trace=True)
    if (bad := first_mismatch(burst.outputs(), reference)) is not None:
        mismatches["fixed budget"] = bad
    bt = burst.extra["trace"]
    pool_slots = budget_blocks * BLOCK_SIZE
    full = [s for s in bt if s["waiting"]] or bt  # the steps where requests waited for room
    budget = {"blocks": budget_blocks, "mib": budget_blocks * block_bytes / MiB,
              "max_running": burst.extra["max_batch_seen"], "mean_running": burst.extra["mean_batch"],
              "contiguous_slots": slots, "steps": burst.extra["steps"], "steps_with_waiting": len(full),
              "written_share_while_waiting": float(np.mean([s["tokens_stored"] / pool_slots for s in full])),
              "reserved_share_while_waiting": float(np.mean([s["blocks_reserved"] / budget_blocks for s in full]))}
    exp.metric("budget", budget)
    exp.table("budget", ["cache", "KV budget (MiB)", "sequences at once (max)", "sequences at once (mean)",
                         "pool positions written, while requests waited", "pool blocks reserved, not yet written"],
              [[f"contiguous, {slots} slots of {ctx}", budget["mib"], slots, slots, None, None],
               [f"paged, {budget_blocks} blocks of {BLOCK_SIZE}", budget["mib"], budget["max_running"],
                budget["mean_running"], budget["written_share_while_waiting"],
                budget["reserved_share_while_waiting"]]],
              caption=f"all {len(jobs)} requests waiting at once, up to {len(jobs)} sequences per batch, in the bytes "
                      f"of {slots} contiguous caches; the two shares are means over the engine steps at which "
                      "some request was still waiting for room. The contiguous row is what fixed slots allow by "
                      "construction, not a run.")
    exp.metric("output_mismatches", mismatches)

    # ---- findings (all counted) ----
    held, pre = peak["paged: blocks held"], peak["static: preallocated (max_seq_len per row)"]
    exp.finding("At the busiest moment the paged engine held less than half the KV memory that static batching's "
                "contiguous max_seq_len-per-row caches preallocated", held < pre / 2, paged_peak_mib=held,
                static_preallocated_peak_mib=pre, ratio=held / pre)
    padded = peak["static: padded rows up to the current step"]
    exp.finding("Even sized to its batch (padded rows up to the current step, not max_seq_len), static batching's "
                "cache peaked above the paged engine's blocks", padded > held, static_padded_peak_mib=padded,
                paged_peak_mib=held)
    static_waste = 1 - sum(s["tokens_stored"] for s in st) / sum(s["padded_tokens"] for s in st)
    w16 = sweep.get(BLOCK_SIZE, next(iter(sweep.values())))
    exp.finding(f"With blocks of {BLOCK_SIZE}, a smaller share of the paged engine's held slots is empty than of "
                "static batching's padded rows (padding, finished rows and unused positions)",
                w16["waste_share"] < static_waste, paged_empty_share=w16["waste_share"],
                static_empty_share=static_waste, empty_slots_per_sequence=w16["empty_slots_per_sequence"])
    small, large = min(sweep), max(sweep)
    exp.finding(f"Bigger blocks waste more: blocks of {large} leave a larger share of held slots empty than blocks "
                f"of {small}", sweep[large]["waste_share"] > sweep[small]["waste_share"],
                **{f"waste_{bs}": v["waste_share"] for bs, v in sweep.items()})
    exp.finding(f"In the bytes of {slots} contiguous slots the paged engine ran more than {slots} "
                "sequences at once", budget["max_running"] > slots, max_running=budget["max_running"],
                mean_running=budget["mean_running"])
    exp.finding("While requests waited for room in the fixed budget, a tenth or more of the pool was reserved for "
                "tokens not yet generated (admission by reservation: the limit is what requests may need, not what "
                "they have written)", budget["reserved_share_while_waiting"] >= 0.1,
                reserved_share=budget["reserved_share_while_waiting"],
                written_share=budget["written_share_while_waiting"])
    exp.finding("Every engine run (block sizes, budget) and static batching produced exactly the greedy tokens of "
                "each request generated alone", not mismatches, mismatching_runs=len(mismatches))

    # ---- plot ----
    fig, axes = figure(3, width=5.2, height=3.9)
    ax = axes[0][0]
    styles = {"static: preallocated (max_seq_len per row)": ("C1", "-"),
              "static: padded rows up to the current step": ("C1", "--"),
              "static: tokens really stored": ("C1", ":"),
              "paged: blocks held + reserved": ("C2", "--"), "paged: blocks held": ("C2", "-"),
              "paged: tokens really stored": ("C2", ":")}
    for k, v in series.items():
        color, ls = styles[k]
        ax.plot(x["static" if k.startswith("static") else "paged"], v, ls, color=color, label=k, lw=1.4)
    ax.axhline(slots_bytes / MiB, color="grey", lw=0.8, ls="-.", label=f"{MAX_BATCH} full slots")
    ax.set(xlabel="tokens generated so far (progress through the workload)", ylabel="KV cache (MiB)",
           title=f"KV memory over the run, {clients} clients")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    bss = list(sweep)
    ax.plot(bss, [100 * sweep[b]["waste_share"] for b in bss], "o-", color="C3")
    ax.set_xscale("log", base=2)
    ax.set_xticks(bss, [str(b) for b in bss])
    ax.set(xlabel="block size (positions)", ylabel="held KV slots that are empty (%)",
           title="internal fragmentation against block size")
    ax = axes[0][2]
    ax.plot(range(len(bt)), [s["running"] for s in bt], color="C2", label="paged: sequences running")
    ax.plot(range(len(bt)), [s["waiting"] for s in bt], color="C0", lw=0.8, ls=":", label="paged: requests waiting")
    ax.axhline(slots, color="C1", ls="--", label=f"contiguous: {slots} slots")
    ax.set(xlabel="engine step", ylabel="sequences (running, waiting)",
           title=f"one fixed budget ({budget['mib']:.0f} MiB of KV)")
    ax.legend()
    save_and_check(exp, fig, mismatches, "greedy outputs differ")


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
