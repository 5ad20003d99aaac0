"""What does the data of each training stage look like? Real records of pretraining, SFT, preference
and RL data, tokenized, with what the model is trained to predict.

Pretraining: raw TinyStories text, every token a target. SFT: Alpaca-style instructions rendered
with the ChatML template; only the assistant's answer (and the <|im_end|> that ends it) is a target.
Preference (DPO): the same prompts, each with a chosen and a rejected answer. RL (GRPO): GSM8K
questions whose answers end in "#### N", so a completion is rewarded by checking its number. All
counted with one 4,096-token BPE.
"""

import statistics

from _common import tokenizer

from mmlab.data.corpus import read_json
from mmlab.data.registry import dataset_path
from mmlab.data.sft import conversation_from_record, encode_examples
from mmlab.data.verifiable import load_gsm8k, math_reward
from mmlab.lab import Experiment
from mmlab.lab.lm import document_splits
from mmlab.lab.plots import figure
from mmlab.tokenizer.chat import encode_chat


def marked(tok, ids: list[int], mask: list[int]) -> str:
    """The text of a templated conversation with the trained-on spans in [[ ]]."""
    out, inside = [], False
    for i, m in zip(ids, mask, strict=True):
        if m and not inside:
            out.append("[[")
        if not m and inside:
            out.append("]]")
        inside = bool(m)
        out.append(tok.decode([i]))
    return "".join(out) + ("]]" if inside else "")


def main(exp: Experiment) -> None:
    n = exp.pick(full=None, quick=300, smoke=40)
    tok = tokenizer()
    stories, _ = document_splits("tinystories-train-2mib")
    stories = stories[:n] if n else stories
    sft_records = read_json(dataset_path("instructions-1k"))[:n]
    pref_records = read_json(dataset_path("preferences-1k"))[:n]
    math_items = load_gsm8k(dataset_path("gsm8k-test"))[:n]
    exp.set_config(vocab_size=tok.vocab_size, records={"stories": len(stories), "sft": len(sft_records),
                                                       "preferences": len(pref_records), "gsm8k": len(math_items)})

    story_tokens = [len(tok.encode(s, allow_special=False)) for s in stories]
    convs = [conversation_from_record(r, f"instructions-1k[{i}]") for i, r in enumerate(sft_records)]
    examples = encode_examples(tok, convs)
    sft_tokens = [len(e.ids) for e in examples]
    sft_targets = sum(sum(e.mask) for e in examples) / sum(sft_tokens)
    content_tokens = sum(len(tok.encode(m["content"], allow_special=False)) for c in convs for m in c)
    template_overhead = sum(sft_tokens) / content_tokens - 1

    prompt_tok, chosen_tok, rejected_tok, identical = [], [], [], 0
    for i, r in enumerate(pref_records):
        user = conversation_from_record({**r, "output": r["chosen"]}, f"preferences-1k[{i}]")[0]
        prompt_tok.append(len(encode_chat(tok, [user], add_generation_prompt=True)[0]))
        chosen_tok.append(len(tok.encode(r["chosen"], allow_special=False)))
        rejected_tok.append(len(tok.encode(r["rejected"], allow_special=False)))
        identical += r["chosen"].strip() == r["rejected"].strip()
    math_q = [len(tok.encode(m.question, allow_special=False)) for m in math_items]
    self_check = sum(math_reward(m.solution + f"\n#### {m.answer}", m.answer) for m in math_items) / len(math_items)

    exp.table("stages", ["stage", "dataset", "records", "mean tokens / record", "share of tokens trained on"], [
        ["pretraining", "tinystories-train-2mib", len(stories), statistics.mean(story_tokens), 1.0],
        ["SFT", "instructions-1k", len(examples), statistics.mean(sft_tokens), sft_targets],
        ["preference (DPO)", "preferences-1k", len(pref_records),
         statistics.mean(p + c + r for p, c, r in zip(prompt_tok, chosen_tok, rejected_tok, strict=True)),
         "chosen and rejected answers"],
        ["RL (GRPO)", "gsm8k-test", len(math_items), statistics.mean(math_q), "sampled completions, rewarded"],
    ], caption=f"Tokens counted with one byte-level BPE of {tok.vocab_size:,} tokens.")
    exp.table("preferences", ["", "mean tokens"], [["prompt (templated)", statistics.mean(prompt_tok)],
                                                   ["chosen answer", statistics.mean(chosen_tok)],
                                                   ["rejected answer", statistics.mean(rejected_tok)]])
    first = examples[0]
    pref = pref_records[0]
    exp.metric("examples", [
        {"title": "pretraining (every token is a target)", "text": stories[0][:400]},
        {"title": "SFT, templated ([[ ]] = trained on)", "text": marked(tok, first.ids, first.mask)},
        {"title": "preference pair", "text": f"PROMPT: {pref['instruction']}\n{pref['input']}\n\nCHOSEN: "
                                              f"{pref['chosen']}\n\nREJECTED: {pref['rejected']}"},
        {"title": "RL prompt with a verifiable answer",
         "text": f"QUESTION: {math_items[0].question}\n\nREFERENCE ANSWER: {math_items[0].answer}"},
    ])
    exp.metric("sft_target_share", sft_targets)
    exp.metric("template_overhead", template_overhead)
    exp.finding("In the SFT data, fewer than half of the tokens are targets (the assistant's answers)",
                sft_targets < 0.5, target_share=sft_targets)
    exp.finding("The chat template adds more than 10% tokens on top of the messages' own text",
                template_overhead > 0.10, overhead=template_overhead)
    exp.finding("No preference pair has identical chosen and rejected answers", identical == 0, identical=identical,
                pairs=len(pref_records))
    exp.finding("Every GSM8K reference solution earns reward 1 from the answer checker (the checker reads it right)",
                self_check == 1.0, share=self_check, items=len(math_items))

    fig, axes = figure(2)
    ax = axes[0][0]
    ax.hist([story_tokens, sft_tokens, math_q], bins=40, label=["story", "SFT conversation", "GSM8K question"],
            histtype="step", linewidth=1.5)
    ax.set(xlabel="tokens per record", ylabel="records", title="record lengths")
    ax.legend()
    ax = axes[0][1]
    ax.scatter(rejected_tok, chosen_tok, s=6, alpha=0.5)
    top = max(max(chosen_tok), max(rejected_tok))
    ax.plot([0, top], [0, top], "k:", lw=1)
    ax.set(xlabel="rejected answer (tokens)", ylabel="chosen answer (tokens)", title="preference pairs")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
