"""Multi-head latent attention (MLA) against MHA, GQA and MQA at equal parameters: KV-cache bytes per token
against val loss.

Five versions of the 4-layer, 128-wide model with 4 query heads of 32 on TinyShakespeare:
  MHA                4 key/value heads                       cache: 2 x 4 x 32 = 256 numbers / token / layer
  GQA                2 key/value heads                       128
  MQA                1 key/value head                        64
  MLA, rank 64       a 64-number latent + a 16-number RoPE key   80
  MLA, rank 32       a 32-number latent + a 16-number RoPE key   48
Fewer KV heads or a small latent also means fewer attention parameters; each variant's FFN is widened (or
narrowed) so that every model has the MHA model's parameter count within 0.1%: the comparison is at equal
parameters, not equal attention. Same data order, learning rate and steps; ``seeds`` runs of each.
"""

import statistics

import torch

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure
from mmlab.model.summary import kv_cache_bytes_per_token, param_breakdown

VARIANTS = {
    "MHA (4 KV heads)": {"n_kv_heads": None},
    "GQA (2 KV heads)": {"n_kv_heads": 2},
    "MQA (1 KV head)": {"n_kv_heads": 1},
    "MLA (latent 64 + RoPE key 16)": {"attention": "mla", "mla_kv_rank": 64, "mla_rope_dim": 16},
    "MLA (latent 32 + RoPE key 16)": {"attention": "mla", "mla_kv_rank": 32, "mla_rope_dim": 16},
}
SHORT = dict(zip(VARIANTS, ["MHA", "GQA", "MQA", "MLA_64", "MLA_32"], strict=True))
TOLERANCE = 0.001  # every model's parameter count within 0.1% of MHA's


def equal_params(changes: dict, target: int):
    """The variant's config with its FFN width chosen so the model has ``target`` parameters (as near as whole
    FFN units allow: 3 x hidden x layers parameters per unit of a SwiGLU FFN)."""
    cfg = shakespeare_config(**changes)
    total = sum(param_breakdown(cfg).values())
    per_unit = 3 * cfg.hidden_size * cfg.n_layers
    return cfg.replace(ffn_size=cfg.resolved_ffn_size + round((target - total) / per_unit))


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=100, smoke=2)
    seeds = exp.pick(full=[exp.seed, exp.seed + 1], quick=[exp.seed], smoke=[exp.seed])
    lr = 2e-3
    target = sum(param_breakdown(shakespeare_config()).values())
    exp.set_config(variants=VARIANTS, steps=steps, lr=lr, seeds=seeds, batch="12 x 64", target_params=target,
                   model="shakespeare-char (4 layers x 128, 4 query heads of 32, RoPE theta 1e4); FFN width varies",
                   threads=torch.get_num_threads())
    runs = {}
    for name, changes in VARIANTS.items():
        cfg = equal_params(changes, target)
        losses, curves = [], []
        for seed in seeds:
            r = train_lm(cfg, steps, lr, seed=seed, eval_batches=exp.pick(50, 5, 1))
            model = r.pop("model")
            losses.append(r["final_val_loss"])
            curves.append(r["val_curve"])
        counts = param_breakdown(cfg)
        runs[name] = {
            "params": model.num_params(),
            "attention_params": counts["attention"],
            "ffn_size": cfg.resolved_ffn_size,
            "kv_numbers_per_token_per_layer": kv_cache_bytes_per_token(cfg, 1) // cfg.n_layers,
            "kv_bytes_per_token_bf16": kv_cache_bytes_per_token(cfg, 2),
            "val_losses": losses,
            "val_loss": statistics.mean(losses),
            "val_loss_spread": max(losses) - min(losses),
            "val_curves": curves,
        }
        exp.log(f"{name}: {runs[name]['params']:,} params (ffn {cfg.resolved_ffn_size}), "
                f"{runs[name]['kv_bytes_per_token_bf16']:,} B/token, val {runs[name]['val_loss']:.4f} {losses}")
    exp.metric("runs", runs)
    spread = max(r["val_loss_spread"] for r in runs.values())
    exp.metric("largest_seed_spread", spread)
    exp.table("final", ["variant", "params", "attention params", "FFN width", "KV numbers / token / layer",
                        "KV bytes / token (bf16, 4 layers)", "val loss (mean over seeds)", "seed spread"],
              [[k, r["params"], r["attention_params"], r["ffn_size"], r["kv_numbers_per_token_per_layer"],
                r["kv_bytes_per_token_bf16"], r["val_loss"], r["val_loss_spread"]] for k, r in runs.items()],
              caption=f"{steps} steps at lr {lr:g}, seeds {seeds}; seed spread: max - min val loss over the seeds. "
                      "Equal parameters: the FFN absorbs what the attention variant saves or adds.")

    MHA, GQA, MQA, LATENT64, LATENT32 = VARIANTS
    mha, gqa, mqa, mla64, mla32 = (runs[k] for k in VARIANTS)
    exp.finding("Every model has MHA's parameter count within 0.1% (the FFN width makes up the difference)",
                all(abs(r["params"] / mha["params"] - 1) <= TOLERANCE for r in runs.values()),
                **{SHORT[k]: r["params"] for k, r in runs.items()})
    n = {k: r["kv_numbers_per_token_per_layer"] for k, r in runs.items()}
    exp.finding(f"MLA with a 64-number latent caches less per token than GQA with 2 KV heads ({n[LATENT64]} vs "
                f"{n[GQA]} numbers per layer)",
                mla64["kv_bytes_per_token_bf16"] < gqa["kv_bytes_per_token_bf16"],
                mla64=mla64["kv_bytes_per_token_bf16"], gqa=gqa["kv_bytes_per_token_bf16"])
    exp.finding("MLA (latent 64) ends with a lower val loss than GQA, which caches more",
                mla64["val_loss"] < gqa["val_loss"], mla64=mla64["val_loss"], gqa=gqa["val_loss"])
    exp.finding(f"MLA (latent 64) ends with a val loss within the seed spread of MHA's, or below it, at "
                f"{n[LATENT64] / n[MHA]:.0%} of MHA's cache", mla64["val_loss"] <= mha["val_loss"] + spread,
                mla64=mla64["val_loss"], mha=mha["val_loss"], seed_spread=spread)
    exp.finding(f"MLA (latent 32) ends with a lower val loss than MQA, which caches more ({n[MQA]} vs {n[LATENT32]} "
                "numbers per layer)",
                mla32["val_loss"] < mqa["val_loss"], mla32=mla32["val_loss"], mqa=mqa["val_loss"])
    exp.finding("Caching less costs loss among the plain KV-head variants: MHA <= GQA <= MQA",
                mha["val_loss"] <= gqa["val_loss"] <= mqa["val_loss"], mha=mha["val_loss"], gqa=gqa["val_loss"],
                mqa=mqa["val_loss"])
    gaps = [abs(a["val_loss"] - b["val_loss"]) for a in runs.values() for b in runs.values()]
    exp.finding(f"All five models end within 0.05 nats of each other: at this scale the cache can shrink "
                f"{n[MHA] / n[LATENT32]:.1f}x for little loss", max(gaps) < 0.05, largest_gap=max(gaps),
                seed_spread=spread)

    fig, axes = figure(2, 1, width=5.2, height=3.9)
    ax = axes[0][0]
    for i, (name, r) in enumerate(runs.items()):
        ax.errorbar([r["kv_bytes_per_token_bf16"]], [r["val_loss"]], yerr=[[r["val_loss"] - min(r["val_losses"])],
                    [max(r["val_losses"]) - r["val_loss"]]], fmt="o" if name.startswith("MLA") else "s",
                    color=f"C{i}", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="KV cache per token (bytes, bf16, 4 layers; log scale)", ylabel="val loss (nats / char)",
           title="equal parameters: cache vs quality")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for i, (name, r) in enumerate(runs.items()):
        c = r["val_curves"][0]
        ax.plot([s for s, _ in c], [v for _, v in c], "o-", markersize=3, color=f"C{i}", label=name)
    ax.set(xlabel="step", ylabel="val loss (nats / char)", title=f"training (seed {seeds[0]})")
    ax.legend(fontsize=7)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
