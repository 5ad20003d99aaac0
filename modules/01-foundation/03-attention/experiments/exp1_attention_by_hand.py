"""Attention by hand: Q, K, V, scores, scaling, mask, softmax and output for a six-word sentence — and
do `mmlab`'s attention module (both paths) give the same numbers?

Six words get small deterministic embeddings (d_model = 4). One head with d_k = 4: we compute every
intermediate with plain tensor algebra and print it, then load the same W_q, W_k, W_v (and an identity
W_o) into `mmlab.model.attention.Attention` and compare the outputs and attention weights.
"""

import math

import torch

from mmlab.config import ModelConfig
from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.model.attention import Attention

WORDS = ["the", "cat", "sat", "on", "the", "mat"]
D = 4


def show(name: str, t: torch.Tensor, rows: list[str]) -> None:
    print(f"\n{name}  shape {tuple(t.shape)}")
    for label, row in zip(rows, t.tolist(), strict=True):
        print(f"  {label:>4}  " + "  ".join(f"{v:7.3f}" for v in row))


def main(exp: Experiment) -> None:
    g = torch.Generator().manual_seed(exp.seed)
    vocab = sorted(set(WORDS))
    table = torch.randn(len(vocab), D, generator=g)  # one embedding per distinct word: both "the" share it
    X = table[[vocab.index(w) for w in WORDS]]  # (T, d_model)
    W_q, W_k, W_v = (torch.randn(D, D, generator=g) / math.sqrt(D) for _ in range(3))
    exp.set_config(sentence=" ".join(WORDS), d_model=D, d_k=D, heads=1)

    show("X: the embeddings", X, WORDS)
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    show("Q = X W_q: what each word looks for", Q, WORDS)
    show("K = X W_k: what each word offers to be found by", K, WORDS)
    show("V = X W_v: what each word hands over when attended to", V, WORDS)
    scores = Q @ K.T
    show("scores = Q K^T", scores, WORDS)
    scaled = scores / math.sqrt(D)
    show(f"scaled = scores / sqrt(d_k) = scores / {math.sqrt(D):g}", scaled, WORDS)
    mask = torch.ones(len(WORDS), len(WORDS)).tril().bool()
    masked = scaled.masked_fill(~mask, float("-inf"))
    show("masked: word i may not see words after it (-inf)", masked, WORDS)
    weights = torch.softmax(masked, dim=-1)
    show("weights = softmax(masked) row by row (each row sums to 1)", weights, WORDS)
    out = weights @ V
    show("output = weights V: each word's new vector, a weighted mix of the values it may see", out, WORDS)

    # the same computation through the library: one head, d_k = d_model, W_o = identity
    diffs = {}
    for impl in ("explicit", "sdpa"):
        attn = Attention(ModelConfig(vocab_size=8, hidden_size=D, n_layers=1, n_heads=1, attn_impl=impl), 0)
        with torch.no_grad():  # nn.Linear computes x W^T, so it stores the transpose
            attn.q_proj.weight.copy_(W_q.T)
            attn.k_proj.weight.copy_(W_k.T)
            attn.v_proj.weight.copy_(W_v.T)
            attn.o_proj.weight.copy_(torch.eye(D))
            lib_out, lib_w = attn(X[None], need_weights=impl == "explicit")
        diffs[impl] = (lib_out[0] - out).abs().max().item()
        if lib_w is not None:
            diffs["weights"] = (lib_w[0, 0] - weights).abs().max().item()
    print(
        f"\nmax |by hand - mmlab|: explicit {diffs['explicit']:.2e}, sdpa {diffs['sdpa']:.2e}, "
        f"weights {diffs['weights']:.2e}"
    )

    exp.metric("weights", weights)
    exp.metric("max_abs_diff", diffs)
    exp.table(
        "weights",
        ["query \\ key", *WORDS],
        [[w, *row] for w, row in zip(WORDS, weights.tolist(), strict=True)],
        caption="Attention weights of the by-hand computation (row = the word that attends).",
    )
    exp.table(
        "check",
        ["comparison", "max abs difference"],
        [
            ["output: by hand vs mmlab explicit path", diffs["explicit"]],
            ["output: by hand vs mmlab SDPA path", diffs["sdpa"]],
            ["weights: by hand vs mmlab explicit path", diffs["weights"]],
        ],
    )
    exp.finding(
        "mmlab's attention (explicit and SDPA paths) reproduces the by-hand output to float32 precision",
        max(diffs.values()) < 1e-5,
        **diffs,
    )
    exp.finding(
        "Every row of the weights sums to 1 and no word attends to a later word",
        torch.allclose(weights.sum(-1), torch.ones(len(WORDS))) and weights.triu(1).abs().max().item() == 0,
        max_weight_above_diagonal=weights.triu(1).abs().max().item(),
    )
    exp.finding(
        "The first word can only attend to itself (weight exactly 1)",
        weights[0, 0].item() == 1.0,
        weight=weights[0, 0].item(),
    )
    # both "the" tokens have identical embeddings, so identical queries: the second "the" attends to the
    # first "the" and to itself with the same score (positions are unknown to bare attention)
    exp.finding(
        "The two 'the' tokens are indistinguishable to attention without positions: the second "
        "'the' gives both of them the same weight",
        abs(weights[4, 0].item() - weights[4, 4].item()) < 1e-6,
        w_to_first_the=weights[4, 0].item(),
        w_to_itself=weights[4, 4].item(),
    )

    fig, axes = figure(2, 1, width=4.8, height=4.2)
    for ax, (m, title) in zip(
        axes[0],
        [
            (masked.masked_fill(~mask, float("nan")), "scaled scores (masked = blank)"),
            (weights, "attention weights (softmax)"),
        ],
        strict=True,
    ):
        im = ax.imshow(m.numpy(), cmap="viridis")
        ax.set_xticks(range(len(WORDS)), WORDS)
        ax.set_yticks(range(len(WORDS)), WORDS)
        ax.set(xlabel="key (attended to)", ylabel="query (attending)", title=title)
        ax.grid(False)
        for i in range(len(WORDS)):
            for j in range(i + 1):
                ax.text(j, i, f"{m[i, j].item():.2f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
