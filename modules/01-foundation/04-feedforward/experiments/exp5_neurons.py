"""What do FFN neurons store? For a trained model: the contexts that most activate chosen neurons, and
what happens to the predictions when we switch those neurons off.

We train the 4-layer character model on TinyShakespeare, run it over val text and record every FFN
hidden unit (the input of `down_proj`: silu(gate(x)) * up(x)). A neuron's *selectivity* is how far its
top 1% of activations stand above its typical value (in standard deviations). For the most selective
neurons of the first and last layer we print the characters around their strongest activations, then
ablate (zero) each one and measure the loss change where it fires most against the average; and we
zero the 10% most selective neurons of a layer against several random 10% groups. Neurons are chosen
on one half of the val windows and their effects measured on the other half.
"""

import torch
import torch.nn.functional as F

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, shakespeare_tokens, train_lm
from mmlab.lab.plots import figure

WINDOW = 64


class Probe:
    """Records the FFN hidden activations of every layer; can zero chosen units of one layer."""

    def __init__(self, model):
        self.acts: dict[int, torch.Tensor] = {}
        self.zero: dict[int, torch.Tensor] = {}
        for i, block in enumerate(model.blocks):
            block.ffn.down_proj.register_forward_pre_hook(self._hook(i))

    def _hook(self, layer):
        def hook(module, args):
            h = args[0]
            self.acts[layer] = h.detach()
            if layer in self.zero:
                h = h.clone()
                h[..., self.zero[layer]] = 0.0
                return (h,)

        return hook


def per_position_loss(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        logits = model(x).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(y.shape)


def main(exp: Experiment) -> None:
    steps = exp.pick(full=1000, quick=100, smoke=2)
    n_windows = exp.pick(full=400, quick=100, smoke=8)
    lr = 2e-3
    exp.set_config(
        steps=steps, lr=lr, model="shakespeare-char (4 layers x 128, SwiGLU 384)", val_chars=n_windows * WINDOW
    )
    r = train_lm(shakespeare_config(), steps, lr, seed=exp.seed, eval_batches=exp.pick(50, 5, 2))
    model = r["model"].eval()
    exp.metric("val_loss", r["final_val_loss"])
    tok, tokens = shakespeare_tokens()
    val = torch.as_tensor(tokens[int(len(tokens) * 0.9) :].astype("int64"))[: n_windows * WINDOW + 1]
    x, y = val[:-1].view(n_windows, WINDOW), val[1:].view(n_windows, WINDOW)
    chars = [tok.decode([i]) for i in range(tok.vocab_size)]
    probe = Probe(model)
    # neurons are chosen on the first half of the windows and their effect is measured on the second half
    half = n_windows // 2
    sel_x, test_x, test_y = x[:half], x[half:], y[half:]
    with torch.no_grad():
        model(sel_x)
    acts = {layer: a.reshape(-1, a.shape[-1]) for layer, a in probe.acts.items()}  # (N*T, hidden), selection half
    base = per_position_loss(model, test_x, test_y)  # (N, T) on the test half; also records test activations
    test_acts = {layer: a.reshape(-1, a.shape[-1]) for layer, a in probe.acts.items()}
    flat_x = sel_x.reshape(-1)
    n_layers, hidden = len(acts), acts[0].shape[1]
    k_top = max(1, flat_x.numel() // 100)

    def selectivity(a):
        top = a.topk(k_top, dim=0).values.mean(0)
        return (top - a.median(0).values) / a.std(0).clamp_min(1e-6)

    def ablate(layer, units):
        probe.zero = {layer: torch.as_tensor(units)}
        try:
            return per_position_loss(model, test_x, test_y).reshape(-1) - base.reshape(-1)
        finally:
            probe.zero = {}

    neurons, rows = [], []
    for layer in (0, n_layers - 1):
        sel = selectivity(acts[layer])
        for unit in sel.topk(3).indices.tolist():
            contexts = []
            for pos in acts[layer][:, unit].topk(6).indices.tolist():
                lo = max(0, pos - 10)
                ctx = "".join(chars[t] for t in flat_x[lo:pos].tolist()) + "[" + chars[flat_x[pos].item()] + "]"
                contexts.append(repr(ctx)[1:-1])
            delta = ablate(layer, [unit])
            top_pos = test_acts[layer][:, unit].topk(k_top).indices  # where it fires most in the test half
            n = {"layer": layer, "unit": unit, "selectivity": sel[unit].item(), "contexts": contexts,
                 "delta_at_top": delta[top_pos].mean().item(), "delta_overall": delta.mean().item()}
            neurons.append(n)
            rows.append([layer, unit, n["selectivity"], " · ".join(contexts[:4]), n["delta_at_top"],
                         n["delta_overall"]])
            exp.log(f"layer {layer} unit {unit}: {contexts[:4]} dloss top {n['delta_at_top']:+.4f} "
                    f"overall {n['delta_overall']:+.5f}")
    exp.metric("neurons", neurons)
    n_test = test_x.numel()
    exp.table("neurons", ["layer", "unit", "selectivity (std)", "strongest contexts ([x] = the character it fires on)",
                          "loss change where it fires most", "loss change on average"], rows,
              caption=f"Neurons chosen and contexts shown on {flat_x.numel():,} val positions; effects measured on "
                      f"{n_test:,} other val positions (where it fires most = its top 1% there). Loss in nats per "
                      "character.")
    hurt = [n["delta_at_top"] > 0.01 for n in neurons]
    exp.finding("Zeroing a selective neuron raises the loss where it fires most (by > 0.01 nats), for every neuron "
                "shown", all(hurt), at_top=[n["delta_at_top"] for n in neurons])
    exp.finding("...for at least half of the neurons shown", sum(hurt) >= len(hurt) / 2, count=sum(hurt),
                of=len(hurt))
    exp.finding("One neuron out of 384 matters little on average (loss change < 0.01 nats)",
                all(abs(n["delta_overall"]) < 0.01 for n in neurons), overall=[n["delta_overall"] for n in neurons])

    # group ablation: the 10% most selective vs random 10% groups (several draws) of each layer
    n_group, n_draws = hidden // 10, exp.pick(full=5, quick=3, smoke=2)
    g = torch.Generator().manual_seed(exp.seed)
    group = {}
    for layer in range(n_layers):
        top_units = selectivity(acts[layer]).topk(n_group).indices
        random_draws = [ablate(layer, torch.randperm(hidden, generator=g)[:n_group]).mean().item()
                        for _ in range(n_draws)]
        group[layer] = {"most selective": ablate(layer, top_units).mean().item(), "random": random_draws}
    exp.metric("group_ablation", group)
    exp.table("groups", ["layer", f"zero the {n_group} most selective units", f"zero {n_group} random units: "
                         f"mean of {n_draws} draws", "random: largest of the draws"],
              [[layer, v["most selective"], sum(v["random"]) / n_draws, max(v["random"])]
               for layer, v in group.items()],
              caption=f"Mean loss change (nats / char) on {n_test:,} held-out val positions; base "
                      f"{base.mean():.4f}.")
    beats = [v["most selective"] > max(v["random"]) for v in group.values()]
    exp.finding(f"In every layer, zeroing the most selective 10% hurts more than every one of {n_draws} random 10% "
                "groups", all(beats), by_layer={k: (v["most selective"], max(v["random"])) for k, v in group.items()})

    fig, axes = figure(2, 1, width=5.0, height=3.8)
    labels = [f"L{n['layer']}/{n['unit']}" for n in neurons]
    xs = range(len(neurons))
    axes[0][0].bar([i - 0.2 for i in xs], [n["delta_at_top"] for n in neurons], width=0.4, label="where it fires most")
    axes[0][0].bar([i + 0.2 for i in xs], [n["delta_overall"] for n in neurons], width=0.4, label="on average")
    axes[0][0].set_xticks(list(xs), labels)
    axes[0][0].set(xlabel="layer / neuron", ylabel="loss change when zeroed (nats / char)", title="single neurons")
    axes[0][0].legend()
    layers = list(group)
    axes[0][1].bar(
        [i - 0.2 for i in layers], [group[i]["most selective"] for i in layers], width=0.4, label="10% most selective"
    )
    axes[0][1].bar([i + 0.2 for i in layers], [sum(group[i]["random"]) / len(group[i]["random"]) for i in layers],
                   width=0.4, label="10% random (mean of draws)")
    axes[0][1].set(xlabel="layer", ylabel="val loss change (nats / char)", title="groups of neurons zeroed")
    axes[0][1].set_xticks(layers)
    axes[0][1].legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
