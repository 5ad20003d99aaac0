"""Expand, apply a non-linearity, compress: what does that buy, shown in two dimensions — and how big
is that part of the real model?

1. By hand: an FFN 2 -> 4 -> 2 with ReLU whose weights we write down computes (|x1|, |x2|) exactly
   (|x| = relu(x) + relu(-x)); no linear map can.
2. Trained: `mmlab.model.ffn.MLP` with a 2-d input and output and a hidden layer of width 1 ... 128
   fits y = (x1 x2, x1^2 - x2^2) on [-2, 2]^2; without the activation, any width is just a linear map.
3. In the model: the FFN's shape (C -> hidden -> C) and its share of the parameters in our presets.
"""

import torch
import torch.nn.functional as F

from mmlab.config import get_preset
from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.model.ffn import MLP
from mmlab.model.summary import param_breakdown


def target(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x[:, 0] * x[:, 1], x[:, 0] ** 2 - x[:, 1] ** 2], dim=1)


def fit(hidden: int, act: str, x, y, steps: int, seed: int) -> tuple[MLP, float]:
    torch.manual_seed(seed)
    ffn = MLP(2, hidden, act=act, bias=True)
    opt = torch.optim.Adam(ffn.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = F.mse_loss(ffn(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return ffn, loss.item()


def main(exp: Experiment) -> None:
    # 1. by hand
    ffn = MLP(2, 4, act="relu", bias=False)
    with torch.no_grad():
        ffn.up_proj.weight.copy_(torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]]))  # expand: +x1, -x1, +x2, -x2
        ffn.down_proj.weight.copy_(torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]]))  # compress: add the pairs
    pts = torch.tensor([[0.5, -1.5], [-2.0, 0.25], [1.0, 1.0]])
    with torch.no_grad():
        hidden = F.relu(ffn.up_proj(pts))
        out = ffn(pts)
    print("by hand: x -> expand (4 units) -> ReLU -> compress -> (|x1|, |x2|)")
    for p, h, o in zip(pts.tolist(), hidden.tolist(), out.tolist(), strict=True):
        print(f"  x = {p}  hidden after ReLU = {h}  output = {o}")
    exact = torch.allclose(out, pts.abs())
    g = torch.Generator().manual_seed(exp.seed)
    x = torch.rand(2000, 2, generator=g) * 4 - 2
    lstsq = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), x.abs()).solution
    best_linear_abs = F.mse_loss(torch.cat([x, torch.ones(len(x), 1)], 1) @ lstsq, x.abs()).item()
    exp.finding("The hand-written 2 -> 4 -> 2 ReLU FFN computes (|x1|, |x2|) exactly", exact, outputs=out.tolist())
    exp.finding(
        "The best linear map cannot (its mean squared error stays well above 0)",
        best_linear_abs > 0.05,
        best_linear_mse=best_linear_abs,
    )

    # 2. trained, width sweep
    widths = exp.pick(full=[1, 2, 4, 8, 32, 128], quick=[1, 2, 4, 8, 32, 128], smoke=[2, 8])
    steps = exp.pick(full=3000, quick=600, smoke=20)
    y = target(x)
    x_val = torch.rand(2000, 2, generator=g) * 4 - 2
    y_val = target(x_val)
    exp.set_config(
        target="(x1*x2, x1^2 - x2^2) on [-2, 2]^2", widths=widths, steps=steps, optimizer="Adam 1e-2, cosine"
    )
    res = {}
    models = {}
    for act in ("relu", "linear"):
        for h in widths:
            model, _ = fit(h, act, x, y, steps, exp.seed)
            with torch.no_grad():
                res[f"{act}/{h}"] = F.mse_loss(model(x_val), y_val).item()
            models[(act, h)] = model
        exp.log(f"{act}: " + ", ".join(f"h={h}: {res[f'{act}/{h}']:.4f}" for h in widths))
    var = y_val.var(0).mean().item()
    exp.metric("val_mse", res)
    exp.metric("target_variance", var)
    exp.table(
        "widths",
        ["hidden width", "val MSE, ReLU", "val MSE, no activation"],
        [[h, res[f"relu/{h}"], res[f"linear/{h}"]] for h in widths],
        caption=f"{steps} Adam steps on 2000 points; predicting the mean scores {var:.3f} (the target's variance).",
    )
    relu = [res[f"relu/{h}"] for h in widths]
    lin = [res[f"linear/{h}"] for h in widths]
    exp.finding(
        "With ReLU, a wider hidden layer fits better: the widest has under a tenth of the narrowest's error",
        relu[-1] < 0.1 * relu[0],
        narrowest=relu[0],
        widest=relu[-1],
    )
    exp.finding(
        "Without an activation, width buys nothing: every width ends within 5% of the same (linear) error",
        max(lin) < 1.05 * min(lin),
        errors=lin,
    )

    # 3. the FFN in our presets
    rows = []
    for name in ("shakespeare-char", "minimind-26m", "minimind-104m"):
        cfg = get_preset(name)
        counts = param_breakdown(cfg)
        non_emb = sum(v for k, v in counts.items() if k not in ("embedding", "position"))
        rows.append(
            [
                name,
                f"{cfg.hidden_size} -> {cfg.resolved_ffn_size} -> {cfg.hidden_size}",
                cfg.resolved_ffn_size / cfg.hidden_size,
                counts["ffn"],
                counts["ffn"] / non_emb,
            ]
        )
    exp.metric("presets", rows)
    exp.table(
        "presets",
        [
            "preset",
            "FFN shape (SwiGLU, 3 matrices)",
            "expansion",
            "FFN parameters",
            "share of non-embedding parameters",
        ],
        rows,
    )
    exp.finding(
        "In every preset the FFN holds most (> 60%) of the non-embedding parameters",
        all(r[4] > 0.6 for r in rows),
        shares=[r[4] for r in rows],
    )

    fig, axes = figure(4, 1, width=3.6, height=3.4)
    grid = torch.stack(torch.meshgrid(torch.linspace(-2, 2, 80), torch.linspace(-2, 2, 80), indexing="xy"), -1)
    flat = grid.reshape(-1, 2)
    panels = [("target: x1 * x2", target(flat)[:, 0])]
    for act, h in (("linear", widths[-1]), ("relu", widths[1]), ("relu", widths[-1])):
        with torch.no_grad():
            panels.append((f"{'ReLU' if act == 'relu' else 'no activation'}, width {h}", models[(act, h)](flat)[:, 0]))
    for ax, (title, z) in zip(axes[0], panels, strict=True):
        ax.imshow(z.reshape(80, 80).numpy(), extent=(-2, 2, -2, 2), origin="lower", cmap="coolwarm", vmin=-4, vmax=4)
        ax.set(title=title, xlabel="x1", ylabel="x2")
        ax.grid(False)
    exp.savefig(fig, "maps")
    fig, axes = figure()
    axes[0][0].plot(widths, relu, "o-", label="ReLU")
    axes[0][0].plot(widths, lin, "s--", label="no activation")
    axes[0][0].axhline(var, color="gray", ls=":", label="predict the mean")
    axes[0][0].set_xscale("log", base=2)
    axes[0][0].set_yscale("log")
    axes[0][0].set(
        xlabel="hidden width (2 -> width -> 2)",
        ylabel="val mean squared error",
        title="expansion buys capacity only with a non-linearity",
    )
    axes[0][0].legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
