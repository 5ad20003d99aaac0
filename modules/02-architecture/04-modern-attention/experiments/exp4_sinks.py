"""Attention sinks: do our models pile attention on the first tokens, what happens when a sliding window moves
past them, and do gpt-oss's learned sinks change that?

StreamingLLM (Xiao et al., 2023) found that trained LLMs send a large share of every query's attention to the
first few tokens, whatever they say, as a place to put attention that should go "nowhere"; a cache that
evicts those tokens (a sliding window over a model trained with full attention) then breaks. gpt-oss instead
gives every head a learned sink logit: a key with no value that can take that share (``attn_sinks``).

Four versions of the 4-layer, 128-wide model, trained on 128-character windows of TinyShakespeare with the
same seed, data order and steps: full attention or a 32-character sliding window, each without and with
learned sinks. On held-out text we measure (1) the share of attention the first 4 characters receive from
queries at positions 33-128, against the share a uniform spread would give them, and the sink's share;
(2) the loss at every position of 512-character windows (4x the trained length), read as trained and, for
the full-attention models, through a 32-character window at inference (StreamingLLM's "window attention":
the same weights, the first tokens evicted once the window passes them).
"""

import torch
from _common import loss_per_position, reread, span_means, val_windows

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure

TRAIN_LEN, WINDOW, READ_LEN, FIRST = 128, 32, 512, 4
VARIANTS = {
    "full attention": {},
    "full attention + sinks": {"attn_sinks": True},
    f"window {WINDOW}": {"sliding_window": WINDOW},
    f"window {WINDOW} + sinks": {"sliding_window": WINDOW, "attn_sinks": True},
}
SPANS = {"1-32": (0, 32), "33-128": (32, 128), "129-256": (128, 256), "257-512": (256, 512)}
INSIDE, FAR = "33-128", "257-512"


@torch.no_grad()
def attention_shares(model, x: torch.Tensor) -> dict[str, float]:
    """Mean over layers, heads, sequences and queries at positions WINDOW..TRAIN_LEN-1 (0-based) of: the weight on
    the first FIRST keys, what a uniform spread over the visible keys would give them (0 once a window has
    passed them), the weight on the FIRST oldest keys a query sees (with full attention: the first keys again),
    and the sink's share (1 - the row's sum over real keys)."""
    att = torch.stack(reread(model, attn_impl="explicit")(x, need_weights=True).attentions)  # (L, B, H, T, T)
    q = torch.arange(WINDOW, x.shape[1])
    window = model.cfg.sliding_window
    visible = (q + 1) if window is None else torch.clamp(q + 1, max=window)
    oldest = q + 1 - visible  # first key each query sees
    rows = att[:, :, :, WINDOW:, :]  # queries WINDOW..T-1
    first = rows[..., :FIRST].sum(-1)
    old = torch.stack([rows[..., i, oldest[i]:oldest[i] + FIRST].sum(-1) for i in range(len(q))], dim=-1)
    uniform_first = torch.clamp(FIRST - oldest, 0, FIRST) / visible  # the first keys a query still sees, evenly
    return {
        "first_tokens": first.mean().item(),
        "first_tokens_uniform": uniform_first.float().mean().item(),
        "oldest_in_window": old.mean().item(),
        "oldest_uniform": (FIRST / visible).float().mean().item(),
        # without sinks a row sums to 1 up to rounding: report no share rather than a 1e-9
        "sink": (1 - rows.sum(-1)).mean().item() if model.cfg.attn_sinks else None,
        "sink_by_layer": (1 - rows.sum(-1)).mean(dim=(1, 2, 3)).tolist() if model.cfg.attn_sinks else None,
        "first_by_query": first.mean(dim=(0, 1, 2)).tolist(),
    }


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=80, smoke=2)
    lr, batch = 2e-3, 12
    n_read = exp.pick(full=32, quick=6, smoke=1)
    n_att = exp.pick(full=16, quick=4, smoke=1)
    exp.set_config(variants=VARIANTS, steps=steps, lr=lr, batch=f"{batch} x {TRAIN_LEN}", window=WINDOW,
                   first_tokens=FIRST, read_length=READ_LEN, read_windows=n_read, attention_windows=n_att,
                   seeds=[exp.seed], spans=SPANS, threads=torch.get_num_threads(),
                   model="shakespeare-char (4 layers x 128, 4 heads of 32, RoPE theta 1e4), trained at 128")
    x, y = val_windows(n_read, READ_LEN)
    xa, _ = val_windows(n_att, TRAIN_LEN)
    runs = {}
    for name, changes in VARIANTS.items():
        cfg = shakespeare_config(max_seq_len=TRAIN_LEN, **changes)
        r = train_lm(cfg, steps, lr, seed=exp.seed, batch_size=batch, eval_batches=exp.pick(20, 3, 1))
        model = r.pop("model").eval()
        run = {"final_val_loss": r["final_val_loss"], "params": model.num_params(),
               "attention": attention_shares(model, xa)}
        as_trained = loss_per_position(reread(model, max_seq_len=READ_LEN), x, y)
        run["loss_as_trained"] = as_trained.tolist()
        run["spans_as_trained"] = span_means(as_trained, SPANS)
        if cfg.sliding_window is None:  # StreamingLLM's window attention: same weights, first tokens evicted
            windowed = reread(model, max_seq_len=READ_LEN, sliding_window=WINDOW)
            run["loss_window_read"] = loss_per_position(windowed, x, y).tolist()
            run["spans_window_read"] = span_means(run["loss_window_read"], SPANS)
            run["attention_window_read"] = attention_shares(reread(model, sliding_window=WINDOW), xa)
        if cfg.attn_sinks:
            run["sink_logits"] = torch.stack([b.attn.sinks for b in model.blocks]).tolist()
        runs[name] = run
        a = run["attention"]
        sink = "none" if a["sink"] is None else f"{a['sink']:.4f}"
        exp.log(f"{name}: val {r['final_val_loss']:.4f}; first {FIRST} tokens {a['first_tokens']:.4f} (uniform "
                f"{a['first_tokens_uniform']:.4f}), sink {sink}; as trained "
                + ", ".join(f"{k}: {v:.3f}" for k, v in run["spans_as_trained"].items())
                + ("; window read " + ", ".join(f"{k}: {v:.3f}" for k, v in run["spans_window_read"].items())
                   if "spans_window_read" in run else ""))
    exp.metric("runs", runs)

    full, fsink, win, wsink = (runs[k] for k in VARIANTS)
    rows = []
    for name, r in runs.items():
        a = r["attention"]
        rows.append([name, r["params"], a["first_tokens"], a["first_tokens_uniform"], a["oldest_in_window"],
                     a["oldest_uniform"], a["sink"]])
    for name in list(VARIANTS)[:2]:
        a = runs[name]["attention_window_read"]
        rows.append([f"{name}, read through window {WINDOW}", runs[name]["params"], a["first_tokens"],
                     a["first_tokens_uniform"], a["oldest_in_window"], a["oldest_uniform"], a["sink"]])
    exp.table("attention", ["model", "params", f"share on the first {FIRST} tokens", "uniform share (first)",
                            f"share on the {FIRST} oldest visible tokens", "uniform share (oldest)", "sink's share"],
              rows,
              caption=f"Mean attention weight over layers, heads, {n_att} held-out windows of {TRAIN_LEN} and queries "
                      f"at positions {WINDOW + 1}-{TRAIN_LEN}. A uniform share is what spreading each query's "
                      "attention evenly over the keys it sees would put there. With full attention the oldest "
                      "visible tokens are the first tokens; without sinks there is no sink share (—).")
    rows = [[f"{name} (as trained)", *r["spans_as_trained"].values()] for name, r in runs.items()]
    rows += [[f"{name}, read through window {WINDOW}", *runs[name]["spans_window_read"].values()]
             for name in list(VARIANTS)[:2]]
    exp.table("by_position", ["reading", *(f"loss at {s}" for s in SPANS)], rows,
              caption=f"Mean next-character loss (nats) over {n_read} held-out windows of {READ_LEN} characters; "
                      f"trained on {TRAIN_LEN}. Positions past {TRAIN_LEN} are beyond the trained length.")

    exp.finding(f"In the full-attention model, the first {FIRST} tokens get more than twice a uniform share of "
                "the attention of later queries (a StreamingLLM-style sink)",
                full["attention"]["first_tokens"] > 2 * full["attention"]["first_tokens_uniform"],
                share=full["attention"]["first_tokens"], uniform=full["attention"]["first_tokens_uniform"])
    cost = {name: runs[name]["spans_window_read"][INSIDE] - runs[name]["spans_as_trained"][INSIDE]
            for name in list(VARIANTS)[:2]}
    exp.finding(f"Evicting the first tokens (reading the full-attention model through a {WINDOW}-token window) "
                f"raises its loss at positions {INSIDE} by more than 0.1 nats (StreamingLLM's collapse)",
                cost["full attention"] > 0.1, loss_increase=cost["full attention"])
    exp.finding("With learned sinks, that eviction costs less than without them",
                cost["full attention + sinks"] < cost["full attention"], with_sinks=cost["full attention + sinks"],
                without=cost["full attention"])
    exp.finding(f"The learned sinks take more than 5% of the attention at positions {WINDOW + 1}-{TRAIN_LEN}",
                min(fsink["attention"]["sink"], wsink["attention"]["sink"]) > 0.05,
                full_attention=fsink["attention"]["sink"], window=wsink["attention"]["sink"])
    exp.finding("The sink takes a larger share once the window has slid past the first tokens than while they "
                "are visible (same full-attention + sinks model)",
                fsink["attention_window_read"]["sink"] > fsink["attention"]["sink"],
                first_tokens_evicted=fsink["attention_window_read"]["sink"], visible=fsink["attention"]["sink"])
    far_full, far_read = full["spans_as_trained"][FAR], full["spans_window_read"][FAR]
    exp.finding(f"Past the trained length ({FAR}), the full-attention model read through a {WINDOW}-token window "
                "has a lower loss than read as trained, by more than 0.05 nats (full attention breaks past its "
                "length; the window never shows it a distance it was not trained on)", far_read < far_full - 0.05,
                as_trained=far_full, window_read=far_read)
    exp.finding(f"At {FAR}, the model trained with the window has a lower loss than the full-attention model given "
                "the window only at inference", win["spans_as_trained"][FAR] < far_read,
                trained_with_window=win["spans_as_trained"][FAR], window_at_inference=far_read)
    exp.finding("Learned sinks change the val loss by less than 0.02 nats (full attention and window alike)",
                abs(fsink["final_val_loss"] - full["final_val_loss"]) < 0.02
                and abs(wsink["final_val_loss"] - win["final_val_loss"]) < 0.02,
                full=full["final_val_loss"], full_sinks=fsink["final_val_loss"], window=win["final_val_loss"],
                window_sinks=wsink["final_val_loss"])

    fig, axes = figure(2, 1, width=5.6, height=3.9)
    ax = axes[0][0]
    k = 8
    lines = [(f"{n} (as trained)", r["loss_as_trained"], "-") for n, r in runs.items()]
    lines += [(f"{n}, window {WINDOW} at inference", runs[n]["loss_window_read"], "--") for n in list(VARIANTS)[:2]]
    colors = {0: "C0", 1: "C1", 2: "C2", 3: "C3", 4: "C0", 5: "C1"}
    for i, (label, curve, style) in enumerate(lines):
        c = torch.tensor(curve)
        smooth = torch.nn.functional.avg_pool1d(c[None, None], k, stride=k)[0, 0]
        ax.plot([k * j + k / 2 for j in range(len(smooth))], smooth.tolist(), color=colors[i], ls=style, label=label)
    ax.axvline(TRAIN_LEN, color="gray", ls=":", lw=1, label=f"trained length ({TRAIN_LEN})")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="position (log scale)", ylabel=f"loss (nats / char, mean of {k} positions)",
           title=f"reading {READ_LEN} characters")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    qpos = list(range(WINDOW + 1, TRAIN_LEN + 1))
    ax.plot(qpos, full["attention"]["first_by_query"], color="C0", label="full attention")
    ax.plot(qpos, fsink["attention"]["first_by_query"], color="C1", label="full attention + sinks")
    ax.plot(qpos, [FIRST / p for p in qpos], color="gray", ls=":", label="uniform over the visible keys")
    ax.set(xlabel="query position", ylabel=f"attention on the first {FIRST} tokens (mean weight sum)",
           title="is there a first-token sink?")
    ax.legend(fontsize=7)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
