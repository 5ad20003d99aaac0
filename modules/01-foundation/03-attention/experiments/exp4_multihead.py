"""One head or many? The same 128-wide model with 1, 2, 4 or 8 heads — exactly the same parameters,
the same data and seed — trained on TinyShakespeare; then what the heads of a trained model look at.

Splitting d_model = 128 into h heads of 128 / h dimensions costs no parameters: the Q, K, V and output
projections keep their shapes. What changes is that h separate softmaxes can attend to h different
places. For the trained 4-head model we plot every head's attention on a line of the val text and
measure each head's mean attention distance (how far back it looks) and entropy (how spread out).
"""

import math

import torch

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, shakespeare_tokens, train_lm
from mmlab.lab.plots import figure

HEADS = [1, 2, 4, 8]
SHOW = 4  # the model whose heads we plot


def head_stats(weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """weights (N, H, T, T) for N windows -> per head, averaged over windows and over queries >= 8 (the
    first ones have little to choose from): mean distance back (tokens), entropy (nats), weight on the
    current + previous token, weight on token 0, and the largest mean weight that one key position
    (among those with at least 16 later queries) receives from the queries after it: a "sink" on some
    position, not necessarily the first."""
    T = weights.shape[-1]
    dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).clamp_min(0).float()
    w = weights[:, :, 8:]  # (N, H, Tq, T)
    d = dist[8:]
    later = (torch.arange(8, T)[:, None] > torch.arange(T)[None, :]).float()  # (Tq, T): query after key
    column = (w * later).sum(-2)[..., : T - 16] / later.sum(0)[: T - 16]  # mean weight from later queries
    return {
        "distance": (w * d).sum(-1).mean((0, -1)),
        "entropy": -(w * w.clamp_min(1e-12).log()).sum(-1).mean((0, -1)),
        "local": (w * (d <= 1)).sum(-1).mean((0, -1)),
        "first": w[..., 0].mean((0, -1)),
        "max_column": column.max(-1).values.mean(0),
    }


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=60, smoke=2)
    lr = 2e-3
    exp.set_config(heads=HEADS, steps=steps, lr=lr, model="shakespeare-char (4 layers x 128)", batch="12 x 64")
    runs, models = {}, {}
    for h in HEADS:
        cfg = shakespeare_config(n_heads=h)
        r = train_lm(cfg, steps, lr, seed=exp.seed, eval_batches=exp.pick(50, 5, 2))
        models[h] = r.pop("model").eval()
        runs[h] = {**r, "params": models[h].num_params(), "head_dim": cfg.head_dim}
        exp.log(f"{h} heads: val {r['final_val_loss']:.4f}")
    exp.metric("runs", runs)
    exp.table("final", ["heads", "head dim", "parameters", "final val loss"],
              [[h, runs[h]["head_dim"], runs[h]["params"], runs[h]["final_val_loss"]] for h in HEADS],
              caption=f"{steps} steps at lr {lr:g}, one seed.")
    v = {h: runs[h]["final_val_loss"] for h in HEADS}
    exp.finding("Every head count has exactly the same number of parameters",
                len({runs[h]["params"] for h in HEADS}) == 1, params=runs[HEADS[0]]["params"])
    best = min(HEADS, key=v.get)
    exp.finding("Several heads beat a single head at equal parameters (the best multi-head run is lower)",
                min(v[h] for h in HEADS[1:]) < v[1], one_head=v[1], best=best, best_loss=v[best])

    # what the heads of the trained model attend to
    tok, tokens = shakespeare_tokens()
    val = tokens[int(len(tokens) * 0.9):]
    n_windows = exp.pick(full=64, quick=16, smoke=2)
    windows = torch.as_tensor(val[: n_windows * 64].astype("int64")).view(n_windows, 64)
    chars = [tok.decode([i]) for i in windows[0].tolist()]
    with torch.no_grad():
        att = models[SHOW](windows, need_weights=True).attentions  # per layer (N, H, T, T)
    n_layers = len(att)
    stats = []
    keys = ("distance", "entropy", "local", "first", "max_column")
    for layer, w in enumerate(att):
        st = head_stats(w)
        stats += [[layer, head, *(st[k][head].item() for k in keys)] for head in range(w.shape[1])]
    exp.metric("head_stats", stats)
    exp.table("heads", ["layer", "head", "mean distance looked back (tokens)", "entropy (nats)",
                        "weight on this + previous token", "weight on the first token",
                        "largest weight drawn by one key"], stats,
              caption=f"The trained {SHOW}-head model on {n_windows} windows of 64 characters of the val text "
                      f"(queries 8-63, averaged). Uniform attention over 64 positions would have entropy up to "
                      f"ln 64 = {math.log(64):.2f}.")
    spread = []
    for layer in range(n_layers):
        d = [s[2] for s in stats if s[0] == layer]
        spread.append(max(d) / min(d))
    exp.finding("Heads of the same layer specialise: in every layer the farthest-looking head looks back over 1.5x "
                "as far as the nearest-looking one", min(spread) > 1.5, ratio_by_layer=spread)
    local = [s for s in stats if s[4] > 0.5]
    exp.finding("At least one head puts most of its weight (> 0.5) on the current and previous token", bool(local),
                heads=[(s[0], s[1], s[4]) for s in local])
    first = max(stats, key=lambda s: s[5])
    exp.finding("No head parks a large share (> 0.2) of its weight on the first position of the window",
                first[5] <= 0.2, head=(first[0], first[1]), weight=first[5])
    col = max(stats, key=lambda s: s[6])
    exp.finding("Some head draws a large share (> 0.2) of its later queries' weight onto a single key position "
                "(a sink on a content token rather than on the first position)", col[6] > 0.2,
                head=(col[0], col[1]), weight=col[6])

    fig, axes = figure(SHOW, n_layers, width=3.0, height=3.0)
    span = slice(0, 40)
    for layer in range(n_layers):
        for head in range(SHOW):
            ax = axes[layer][head]
            ax.imshow(att[layer][0, head, span, span].numpy(), cmap="viridis", vmin=0, vmax=1)  # window 0
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.grid(False)
            ticks = list(range(0, 40, 4))
            ax.set_xticks(ticks, [repr(chars[i])[1:-1] for i in ticks], fontsize=6)
            ax.set_yticks(ticks, [repr(chars[i])[1:-1] for i in ticks], fontsize=6)
            if layer == n_layers - 1:
                ax.set_xlabel("key (character attended to)")
            if head == 0:
                ax.set_ylabel("query character")
    fig.suptitle(f"attention of the trained {SHOW}-head model on {''.join(chars[:40])!r}")
    exp.savefig(fig, "heads")

    fig, axes = figure()
    ax = axes[0][0]
    ax.plot(HEADS, [v[h] for h in HEADS], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(HEADS, [str(h) for h in HEADS])
    ax.set(xlabel="number of heads (same parameters)", ylabel="final val loss (nats / char)",
           title="heads at equal parameters")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
