"""Does a short fine-tune at 512 finish what inference-time scaling starts, and does generated text stay readable?

The lesson's RoPE model (trained on 64 characters, see ``_common.py``) is fine-tuned for a few hundred steps
on windows of 512 characters (8x), three ways: without scaling, with linear interpolation x8 and with YaRN x8
(the scaling set in the config, so training sees the same rotation tables as inference). A control spends
the same number of training characters on 64-character windows, so we can tell what the longer windows
bought from what more training bought. Every model is read over the same held-out windows of 512, in one
pass and through a 64-character sliding window (does it use the characters more than 64 back?).

Then generation with the KV cache past the trained length: from a 16-character prompt, each model samples
to 512 characters (temperature 0.8) — unscaled, YaRN x8, YaRN x8 fine-tuned, and the library's fallback of
a sliding window (a model whose table stops at 64 recomputes the last 64 characters at every step). A judge —
the base model reading through a 64-character window, where it works — scores every generated character:
its loss says whether the text is still plausible Shakespeare-like text, position by position.
"""

import math

import torch
from _common import (
    EVAL_LEN,
    FAR,
    SPANS,
    STRIDE,
    TRAIN_LEN,
    loss_per_position,
    scaling,
    sliding_loss_per_position,
    smooth,
    span_mean,
    trained_model,
    val_windows,
    with_rope,
)

from mmlab.infer.generate import generate
from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_tokens, train_lm
from mmlab.lab.plots import figure

FACTOR = EVAL_LEN // TRAIN_LEN  # 8
PROMPT = 16
TEMPERATURE = 0.8
FT_LR = 5e-4


def main(exp: Experiment) -> None:
    steps = exp.pick(full=200, quick=12, smoke=2)
    batch = exp.pick(full=4, quick=2, smoke=1)  # windows of 512 per step; the control: batch x 8 windows of 64
    n_windows = exp.pick(full=96, quick=12, smoke=2)
    n_samples = exp.pick(full=16, quick=4, smoke=1)
    base, train_settings = trained_model(exp)
    x, y = val_windows(n_windows)
    exp.set_config(train=train_settings, train_length=TRAIN_LEN, eval_length=EVAL_LEN, factor=FACTOR,
                   fine_tune={"steps": steps, "lr": FT_LR, "block_size": EVAL_LEN, "batch_size": batch,
                              "schedule": "cosine to lr/10 after a warmup of steps/10 (train_lm's default)",
                              "control": {"block_size": TRAIN_LEN, "batch_size": batch * FACTOR}},
                   windows=n_windows, sliding_window={"window": TRAIN_LEN, "stride": STRIDE},
                   generation={"samples": n_samples, "prompt_chars": PROMPT, "temperature": TEMPERATURE,
                               "length": EVAL_LEN + 1, "seed": exp.seed})

    # ---- fine-tunes ----
    runs = {"no scaling": (None, EVAL_LEN, batch), f"linear x{FACTOR}": ("linear", EVAL_LEN, batch),
            f"YaRN x{FACTOR}": ("yarn", EVAL_LEN, batch),
            f"control: at {TRAIN_LEN}": (None, TRAIN_LEN, batch * FACTOR)}
    tuned, val_curves = {}, {}
    for name, (kind, block, rows) in runs.items():
        exp.log(f"fine-tuning {name}: {steps} steps of {rows} x {block} characters")
        cfg = base.cfg.replace(rope_scaling=scaling(kind, FACTOR))
        r = train_lm(cfg, steps, FT_LR, seed=exp.seed, batch_size=rows, block_size=block,
                     eval_interval=max(1, steps // 10), eval_batches=exp.pick(4, 2, 1), init=base)
        tuned[name], val_curves[name] = r["model"].eval(), r["val_curve"]

    # ---- every model, read in one pass and through the sliding window ----
    readings = {"base, no scaling": loss_per_position(with_rope(base, None), x, y),
                f"base, YaRN x{FACTOR}": loss_per_position(with_rope(base, scaling("yarn", FACTOR)), x, y),
                f"base, sliding window ({TRAIN_LEN})": sliding_loss_per_position(base, x, y)}
    for name, m in tuned.items():
        readings[f"fine-tuned {name}"] = loss_per_position(m, x, y)
        readings[f"fine-tuned {name}, sliding window ({TRAIN_LEN})"] = sliding_loss_per_position(m, x, y)
    span = {n: {s: span_mean(c, s) for s in SPANS} for n, c in readings.items()}
    for n in readings:
        exp.log(f"{n}: " + ", ".join(f"{s}: {v:.3f}" for s, v in span[n].items()))
    exp.metric("loss_by_span", span)
    exp.metric("loss_per_position", {n: c.tolist() for n, c in readings.items()})
    exp.metric("fine_tune_val_curves", val_curves)
    exp.table("finetune", ["model, reading", *(f"loss at {s}" for s in SPANS)],
              [[n, *span[n].values()] for n in readings],
              caption=f"mean loss (nats / char) over {n_windows} held-out windows of {EVAL_LEN}. Fine-tunes: {steps} "
                      f"steps of {batch} x {EVAL_LEN} characters at lr {FT_LR:g} from the base model (trained on "
                      f"{TRAIN_LEN}); the control spends the same characters on {batch * FACTOR} x {TRAIN_LEN}. "
                      f"\"Sliding window\": the same model reading at most {TRAIN_LEN} characters.")

    # ---- generation past the trained length ----
    tok, _ = shakespeare_tokens()
    prompts = x[:n_samples, :PROMPT]
    gen_models = {"no scaling": with_rope(base, None), f"YaRN x{FACTOR}": with_rope(base, scaling("yarn", FACTOR)),
                  f"YaRN x{FACTOR} + fine-tune": tuned[f"YaRN x{FACTOR}"],
                  f"sliding window ({TRAIN_LEN})": with_rope(base, None, max_len=TRAIN_LEN)}
    judge = with_rope(base, None)
    judged, gen, samples = {}, {}, []
    for name, m in gen_models.items():
        out = torch.tensor(generate(m, prompts, EVAL_LEN + 1 - PROMPT, temperature=TEMPERATURE, seed=exp.seed))
        seq = torch.cat([prompts, out], dim=1)  # (samples, 513)
        curve = sliding_loss_per_position(judge, seq[:, :-1], seq[:, 1:])  # index i scores character i + 2
        judged[name] = curve

        def chars(a: int, b: int, curve=curve) -> float:  # mean judge loss on characters a..b (1-based)
            return float(curve[a - 2:b - 1].mean())

        gen[name] = {"judge_17_64": chars(PROMPT + 1, TRAIN_LEN), "judge_257_512": chars(EVAL_LEN // 2 + 1, EVAL_LEN)}
        samples.append({"title": f"{name} — characters 313-513 of sample 1", "text": tok.decode(seq[0, 312:].tolist())})
        exp.log(f"generated with {name}: judge loss {gen[name]['judge_17_64']:.3f} at 17-64, "
                f"{gen[name]['judge_257_512']:.3f} at 257-512")
    exp.metric("generation", gen)
    exp.metric("samples", samples)
    exp.table("generation", ["model", "judge loss at characters 17-64", "at 257-512", "change"],
              [[n, g["judge_17_64"], g["judge_257_512"], g["judge_257_512"] - g["judge_17_64"]]
               for n, g in gen.items()],
              caption=f"{n_samples} samples per model, each a {PROMPT}-character held-out prompt continued to "
                      f"{EVAL_LEN + 1} characters at temperature {TEMPERATURE}; the judge (the base model reading "
                      f"through a {TRAIN_LEN}-character window) scores every generated character (nats).")

    # ---- findings ----
    far = {n: span[n][FAR] for n in readings}
    yarn_ft, sl = f"fine-tuned YaRN x{FACTOR}", f", sliding window ({TRAIN_LEN})"
    exp.finding(f"A short fine-tune at {EVAL_LEN} lowers YaRN x{FACTOR}'s loss at {FAR}",
                far[yarn_ft] < far[f"base, YaRN x{FACTOR}"], before=far[f"base, YaRN x{FACTOR}"], after=far[yarn_ft])
    exp.finding(f"After the same fine-tune, YaRN beats no scaling at {FAR} (the scaled model has less to learn)",
                far[yarn_ft] < far["fine-tuned no scaling"], yarn=far[yarn_ft], no_scaling=far["fine-tuned no scaling"])
    exp.finding(f"After the same fine-tune, YaRN beats linear interpolation at {FAR}",
                far[yarn_ft] < far[f"fine-tuned linear x{FACTOR}"], yarn=far[yarn_ft],
                linear=far[f"fine-tuned linear x{FACTOR}"])
    exp.finding(f"The fine-tuned YaRN model uses the longer context: reading all {EVAL_LEN} characters beats reading "
                f"it through a {TRAIN_LEN}-character window by more than 0.02 nats at {FAR}",
                far[yarn_ft] < far[yarn_ft + sl] - 0.02, full_read=far[yarn_ft], sliding_window=far[yarn_ft + sl])
    control = f"fine-tuned control: at {TRAIN_LEN}{sl}"
    exp.finding(f"The longer windows, not just more training: YaRN + fine-tune at {EVAL_LEN} beats the control (the "
                f"same characters in windows of {TRAIN_LEN}, read through a {TRAIN_LEN}-character window) at {FAR}",
                far[yarn_ft] < far[control], yarn=far[yarn_ft], control=far[control])
    none_g, yarn_g = gen["no scaling"], gen[f"YaRN x{FACTOR} + fine-tune"]
    exp.finding("Without scaling, generated text falls apart past the trained length: the judge's loss at characters "
                "257-512 is more than 0.3 nats above its loss at 17-64",
                none_g["judge_257_512"] > none_g["judge_17_64"] + 0.3, at_17_64=none_g["judge_17_64"],
                at_257_512=none_g["judge_257_512"])
    exp.finding("With YaRN and the fine-tune, generated text holds up: the judge's loss at 257-512 stays within 0.15 "
                "nats of its loss at 17-64", yarn_g["judge_257_512"] < yarn_g["judge_17_64"] + 0.15,
                at_17_64=yarn_g["judge_17_64"], at_257_512=yarn_g["judge_257_512"])

    fig, axes = figure(3, width=5.2)
    ax = axes[0][0]
    pos = range(1, EVAL_LEN + 1)
    shown = ["base, no scaling", f"base, YaRN x{FACTOR}", *(f"fine-tuned {n}" for n in runs if "control" not in n),
             control]
    for i, n in enumerate(shown):
        ax.plot(pos, smooth(readings[n]), label=n, color=f"C{i}", ls=":" if "sliding" in n else "-")
    ax.axvline(TRAIN_LEN, color="gray", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="position (log)", ylabel="loss (nats / char, 8-position average)", ylim=(1.0, math.log(65) + 0.3),
           title=f"after {steps} fine-tuning steps")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for i, (n, c) in enumerate(val_curves.items()):
        if "control" not in n and c:
            ax.plot([s for s, _ in c], [v for _, v in c], "o-", ms=3, color=f"C{i + 2}", label=n)
    ax.set(xlabel="fine-tuning step", ylabel=f"held-out loss, windows of {EVAL_LEN}", title="how fast each recovers")
    ax.legend(fontsize=7)
    ax = axes[0][2]
    colors = ["C0", "C1", "C4", "C7"]  # as in the left panel: base unscaled, base YaRN, fine-tuned YaRN; window
    for color, (n, c) in zip(colors, judged.items(), strict=True):
        ax.plot(range(2, EVAL_LEN + 2), smooth(c, 16), label=n, color=color, lw=1)
    ax.axvline(TRAIN_LEN, color="gray", ls="--", lw=1)
    ax.axvspan(1, PROMPT, color="gray", alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="character of the generated text (log; grey: prompt)", ylabel="judge loss (nats, 16-char average)",
           title="is generated text still plausible?")
    ax.legend(fontsize=7)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
