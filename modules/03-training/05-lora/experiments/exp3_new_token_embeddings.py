"""What did pretraining do to the embeddings of the chat tokens it never saw?

The chat template wraps every turn in `<|im_start|>` and `<|im_end|>`, tokens that never occur in the
pretraining text (`<|endoftext|>`, which separates its stories, does). It is tempting to say their
embeddings are "still the random vectors they were initialised with". With tied embeddings that cannot
be quite true: the embedding matrix is also the output layer, every softmax step pushes down the logit
of every token that is not the target (so every row gets a gradient), and weight decay shrinks every
row. We measure it on the lessons' shared base: the model is rebuilt at initialisation from the same
config and seed (the pretraining stage seeds torch and builds `MiniMindLM(cfg)`, exactly as here), and
each row's change is compared with the ordinary tokens'. We also measure what the base predicts: the
log-probability it gives `<|im_end|>` as the next token on held-out text, against a uniform guess.
"""

import math

import torch

from mmlab.lab import Experiment
from mmlab.lab.lm import document_splits
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import base_settings, lesson_base
from mmlab.model import MiniMindLM
from mmlab.tokenizer.base import ENDOFTEXT, IM_END, IM_START
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model


def main(exp: Experiment) -> None:
    base = lesson_base(exp)
    settings = base_settings(exp)
    exp.set_config(base=settings, tokens=[ENDOFTEXT, IM_START, IM_END])
    model = load_model(base).eval()
    tok = load_checkpoint_tokenizer(base)
    exp.metric("tied_embeddings", model.cfg.tie_embeddings)
    torch.manual_seed(settings["train"]["seed"])  # what pretrain() does before building the model
    init = MiniMindLM(model.cfg).eval()
    w0, w1 = init.tok_emb.weight.detach(), model.tok_emb.weight.detach()
    change = (w1 - w0).norm(dim=1) / w0.norm(dim=1)  # how far each row moved, relative to its initial length
    cosine = torch.nn.functional.cosine_similarity(w0, w1, dim=1)
    special = {name: tok.token_to_id(name) for name in (ENDOFTEXT, IM_START, IM_END)}
    ordinary = torch.ones(len(w0), dtype=torch.bool)
    ordinary[list(special.values())] = False
    rows = {}
    for name, i in special.items():
        rows[name] = {"id": i, "init_norm": w0[i].norm().item(), "final_norm": w1[i].norm().item(),
                      "relative_change": change[i].item(), "cosine_with_init": cosine[i].item()}
    q = torch.tensor([0.05, 0.5, 0.95])
    rows["ordinary tokens (median)"] = {
        "id": None, "init_norm": w0[ordinary].norm(dim=1).median().item(),
        "final_norm": w1[ordinary].norm(dim=1).median().item(),
        "relative_change": change[ordinary].median().item(), "cosine_with_init": cosine[ordinary].median().item()}
    spread = torch.quantile(change[ordinary], q).tolist()
    torch.manual_seed(settings["train"]["seed"] + 1)  # the null: an initialisation pretraining did not start from
    other = MiniMindLM(model.cfg).tok_emb.weight.detach()
    null_cosine = torch.nn.functional.cosine_similarity(other, w1, dim=1)[ordinary].median().item()
    exp.metric("other_seed_median_cosine", null_cosine)
    exp.metric("rows", rows)
    exp.metric("ordinary_relative_change_quantiles", dict(zip(["p05", "p50", "p95"], spread, strict=True)))

    # what the base predicts: log p(<|im_end|>) as the next token, over held-out text
    _, val_docs = document_splits(settings["corpus"], max_chars=exp.pick(None, 200_000, 20_000))
    ids = [i for d in val_docs[: exp.pick(200, 40, 4)] for i in tok.encode(d, allow_special=False)]
    block = model.cfg.max_seq_len
    windows = torch.tensor(ids[: (len(ids) // block) * block]).view(-1, block)[: exp.pick(64, 16, 2)]
    logp = {}
    with torch.no_grad():
        for label, m in (("base", model), ("init", init)):
            lp = torch.log_softmax(m(windows).logits.float(), dim=-1)
            logp[label] = {name: lp[..., i].mean().item() for name, i in special.items()}
    uniform = -math.log(len(w0))
    exp.metric("mean_log_prob_next", logp)
    exp.metric("uniform_log_prob", uniform)
    exp.table("rows", ["token", "norm at init", "norm after pretraining", "moved (norm of the change / initial norm)",
                       "cosine with init"],
              [[name, r["init_norm"], r["final_norm"], r["relative_change"], r["cosine_with_init"]]
               for name, r in rows.items()],
              caption="Rows of the tied embedding (= output) matrix of the lessons' base, before and after its "
                      "pretraining on TinyStories (weight decay 0.1).")
    exp.table("predicted", ["token", "mean log p (next), base", "mean log p (next), at init", "uniform guess"],
              [[name, logp["base"][name], logp["init"][name], uniform] for name in special],
              caption=f"Over {windows.numel():,} positions of held-out TinyStories text.")
    im = rows[IM_END]
    exp.finding("Control: the rebuilt initial model is the one pretraining started from (the ordinary tokens' "
                "median cosine with it exceeds their median cosine with another seed's initialisation by > 0.1)",
                rows["ordinary tokens (median)"]["cosine_with_init"] > null_cosine + 0.1,
                median_cosine=rows["ordinary tokens (median)"]["cosine_with_init"], other_seed=null_cosine)
    exp.finding("The chat tokens are not still their random initial vectors: each moved by more than 10% of its "
                "initial length in pretraining", all(rows[t]["relative_change"] > 0.1 for t in (IM_START, IM_END)),
                im_start=rows[IM_START]["relative_change"], im_end=im["relative_change"])
    exp.finding("They moved less than the median ordinary token did", all(
        rows[t]["relative_change"] < rows["ordinary tokens (median)"]["relative_change"] for t in (IM_START, IM_END)),
        im_end=im["relative_change"], ordinary=rows["ordinary tokens (median)"]["relative_change"])
    exp.finding("Their rows shrank (weight decay, and no input ever pulls them back)",
                all(rows[t]["final_norm"] < rows[t]["init_norm"] for t in (IM_START, IM_END)),
                init=im["init_norm"], final=im["final_norm"])
    exp.finding("Pretraining taught the base never to predict <|im_end|>: its mean log-probability is more than "
                "2 nats below a uniform guess", logp["base"][IM_END] < uniform - 2, base=logp["base"][IM_END],
                uniform=uniform)

    fig, axes = figure(2)
    ax = axes[0][0]
    ax.hist(change[ordinary].numpy(), bins=40, color="C0", alpha=0.7, label="ordinary tokens")
    for k, (name, r) in enumerate(list(rows.items())[:3]):
        ax.axvline(r["relative_change"], color=f"C{k + 1}", linewidth=2, label=name)
    ax.set(xlabel="how far a row moved in pretraining (|Δ| / |init|)", ylabel="tokens",
           title="embedding rows: moved, not random")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    names = list(special)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [logp["init"][n] for n in names], width=0.4, color="C7", label="at init")
    ax.bar([x + 0.2 for x in xs], [logp["base"][n] for n in names], width=0.4, color="C3", label="after pretraining")
    ax.set_xticks(list(xs), [n.strip("<|>") for n in names])
    ax.axhline(uniform, color="k", linestyle="--", label="uniform guess")
    ax.set(ylabel="mean log p as the next token (nats)", title="what the base predicts on held-out text")
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
