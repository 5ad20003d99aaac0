"""What goes wrong when SFT trains on the prompt tokens too? The same model and steps with the
assistant-only loss mask and without it.

With the mask, the loss counts only the tokens the model must produce: the assistant's answer and
its <|im_end|>. Without it, every token is a target — the user's instruction and the template too.
Both runs are measured the same way on held-out conversations: the loss on the answer tokens only,
whether greedy decoding of a held-out prompt ends its answer with <|im_end|>, and samples.
"""

from _common import sft_examples, sft_model_config, tokenizer

from mmlab.data.sft import SFTBatches
from mmlab.infer.generate import generate
from mmlab.lab import Experiment
from mmlab.lab.lm import train_lm
from mmlab.lab.plots import figure
from mmlab.tokenizer.chat import encode_chat


def main(exp: Experiment) -> None:
    steps = exp.pick(full=500, quick=40, smoke=2)
    train, val, val_convs = sft_examples(limit=exp.pick(None, 400, 60))
    tok = tokenizer()
    pad_id, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    n_prompts = exp.pick(40, 10, 2)
    exp.set_config(steps=steps, rows=16, train_examples=len(train), val_examples=len(val), model="4 layers x 128",
                   lr=2e-3, generation="greedy, up to 80 tokens", prompts=n_prompts)
    runs, samples = {}, []
    for name, on_prompt in (("answer tokens only (mask)", False), ("every token (no mask)", True)):
        source = SFTBatches(train, val, pad_id, mode="pad", train_on_prompt=on_prompt)
        r = train_lm(sft_model_config(tok.vocab_size), steps, 2e-3, seed=exp.seed, batch_size=16, source=source,
                     eval_interval=max(1, steps // 10))
        model = r.pop("model").eval()
        stopped = 0
        for i, conv in enumerate(val_convs[:n_prompts]):
            ids, _ = encode_chat(tok, conv[:1], add_generation_prompt=True)
            out = generate(model, ids, exp.pick(80, 40, 4), temperature=0.0)[0]
            stopped += im_end in out
            if i < 2:
                text = tok.decode(out[: out.index(im_end) + 1] if im_end in out else out)
                samples.append({"title": f"{name}, held-out prompt: {conv[0]['content'][:80]!r}", "text": text})
        runs[name] = {"final_val_loss": r["final_val_loss"], "val_curve": r["val_curve"],
                      "stop_rate": stopped / n_prompts}
        exp.log(f"{name}: answer val loss {r['final_val_loss']:.3f}, ends with <|im_end|> in {stopped}/{n_prompts}")
    exp.metric("runs", runs)
    exp.metric("samples", samples)
    a, b = runs["answer tokens only (mask)"], runs["every token (no mask)"]
    exp.table("compare", ["loss on", "val loss on answers", "greedy answers that end with <|im_end|>"],
              [[k, r["final_val_loss"], r["stop_rate"]] for k, r in runs.items()],
              caption=f"{steps} steps of 16 conversations, one seed; {n_prompts} held-out prompts.")
    exp.finding("With the mask, the val loss on the answers is lower than without it (same steps)",
                a["final_val_loss"] < b["final_val_loss"], mask=a["final_val_loss"], no_mask=b["final_val_loss"])
    exp.finding("Both models learn to end their answers with <|im_end|> in most held-out prompts",
                a["stop_rate"] > 0.5 and b["stop_rate"] > 0.5, mask=a["stop_rate"], no_mask=b["stop_rate"])

    fig, axes = figure()
    ax = axes[0][0]
    for name, r in runs.items():
        xs, ys = zip(*r["val_curve"], strict=True)
        ax.plot(xs, ys, "o-", ms=3, label=name)
    ax.set(xlabel="step", ylabel="val loss on answer tokens (nats / token)", title="SFT with and without the loss mask")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
