"""What does cleaning remove from a real sample? Deduplication and filters on 2 MiB of TinyStories and
on the instruction data, with before/after statistics.

Pretraining corpora are cleaned before tokenization: exact duplicates, near-exact duplicates (same
text up to case, spacing and punctuation), documents too short or too long to be useful, and text
in scripts the model is not meant for. Each step is applied in order and reports what it removed.
The instruction data gets the same duplicate checks on its instructions.
"""

import unicodedata
from collections import Counter

from mmlab.data.clean import clean, deduplicate, non_ascii_share
from mmlab.data.corpus import read_json
from mmlab.data.registry import dataset_path
from mmlab.lab import Experiment
from mmlab.lab.lm import document_splits
from mmlab.lab.plots import figure


def main(exp: Experiment) -> None:
    limit = exp.pick(full=None, quick=2000, smoke=200)
    train, val = document_splits("tinystories-train-2mib")
    docs = (train + val)[:limit]
    min_chars, max_chars, max_non_ascii = 200, 5000, 0.01
    kept, report = clean(docs, min_chars, max_chars, max_non_ascii)
    records = read_json(dataset_path("instructions-1k"))
    instructions = [r["instruction"] + "\n" + r["input"] for r in records]
    _, exact_dups = deduplicate(instructions, normalise=False)
    _, near_dups = deduplicate(instructions, normalise=True)
    exp.set_config(min_chars=min_chars, max_chars=max_chars, max_non_ascii=max_non_ascii, documents=len(docs))
    exp.table("tinystories", ["step", "documents left", "removed", "characters left", "median characters"],
              [[r["step"], r["documents"], r["removed"], r["characters"], r["median_chars"]] for r in report.rows],
              caption="Steps applied in order to the stories of tinystories-train-2mib.")
    exp.table("instructions", ["check", "duplicates"],
              [["exact (instruction + input)", exact_dups], ["near-exact (case, spacing, punctuation)", near_dups]],
              caption=f"{len(records):,} records of instructions-1k.")
    # what the non-ASCII filter dropped: which characters, and were they letters of another script?
    dropped = [d for d in docs if non_ascii_share(d) > max_non_ascii]
    chars = Counter(c for d in dropped for c in d if ord(c) > 127)
    exp.table("non_ascii", ["character", "name", "Unicode category", "count in dropped stories"],
              [[c, unicodedata.name(c, "?"), unicodedata.category(c), n] for c, n in chars.most_common(8)],
              caption=f"The most common non-ASCII characters in the {len(dropped)} stories the filter drops.")
    letters = sum(n for c, n in chars.items() if unicodedata.category(c).startswith("L"))
    exp.metric("non_ascii_letter_share", letters / max(sum(chars.values()), 1))
    removed = {r["step"]: r["removed"] for r in report.rows[1:]}
    exp.metric("removed", removed)
    exp.metric("kept_share", len(kept) / len(docs))
    exp.finding("The TinyStories sample holds exact duplicate stories", removed["exact dedup"] > 0,
                exact_duplicates=removed["exact dedup"])
    exp.finding("Near-exact matching finds duplicates that exact matching misses",
                removed["near-exact dedup (case, spaces, punctuation)"] > 0,
                near_exact_duplicates=removed["near-exact dedup (case, spaces, punctuation)"])
    exp.finding("Cleaning keeps more than 90% of the stories", len(kept) / len(docs) > 0.9,
                kept_share=len(kept) / len(docs))
    exp.finding("Most non-ASCII characters in the dropped stories are letters (another script), not punctuation",
                letters / max(sum(chars.values()), 1) > 0.5, letter_share=letters / max(sum(chars.values()), 1),
                dropped=len(dropped))
    exp.finding("The instruction data has duplicate instructions", near_dups > 0, exact=exact_dups,
                near_exact=near_dups)

    fig, axes = figure()
    ax = axes[0][0]
    ax.hist([len(d) for d in docs], bins=60, histtype="step", linewidth=1.5, label=f"raw ({len(docs):,})")
    ax.hist([len(d) for d in kept], bins=60, histtype="step", linewidth=1.5, label=f"cleaned ({len(kept):,})")
    for x in (min_chars, max_chars):
        ax.axvline(x, color="gray", ls=":", lw=1)
    ax.set(xlabel="story length (characters)", ylabel="stories", title="TinyStories sample before and after cleaning")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
