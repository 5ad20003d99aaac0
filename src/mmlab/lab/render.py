"""Result blocks in the Markdown: numbers in the docs come from committed result JSON only.

    <!-- mmlab:result exp2_norm_comparison -->            the findings, as a table
    <!-- mmlab:result exp2_norm_comparison table=final --> a table the experiment recorded
    <!-- mmlab:result recipe_shakespeare-char text=samples --> a metric's list of {"prompt" or "title", "text"}
                                                            as text blocks (generated samples)
    ... generated text ...
    <!-- /mmlab:result -->

``render_file`` regenerates every block from the JSON in the lesson's ``results/`` folder (the
Markdown file's folder, or a path relative to ``modules/`` such as
``01-foundation/01-normalization/exp2_norm_comparison``); ``check`` lists blocks that disagree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mmlab.errors import MMLabError
from mmlab.lab.i18n import Catalog, cell, lang_of

BLOCK = re.compile(
    r"(?P<open><!-- mmlab:result (?P<ref>[\w./-]+)(?: table=(?P<table>[\w-]+))?(?: text=(?P<text>[\w-]+))? -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- /mmlab:result -->)",
    re.S,
)


def fmt(value: Any) -> str:
    """A table cell: 4 significant digits, thousands separators for numbers from 10,000 (floats from 1,000),
    pipes escaped."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"  # parameter counts, bytes
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4g}"
    if value is None:
        return "—"
    return str(value).replace("|", "\\|")


def load_result(ref: str, markdown: Path, modules: Path | None) -> tuple[dict[str, Any], Path]:
    candidates = [markdown.parent / "results" / f"{ref}.json"]
    if "/" in ref and modules is not None:
        *lesson, name = ref.split("/")
        candidates.append(modules.joinpath(*lesson) / "results" / f"{name}.json")
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text()), path
            except json.JSONDecodeError as e:
                raise MMLabError(f"{path}:{e.lineno}: invalid results JSON ({e.msg}); re-run the experiment") from None
    raise MMLabError(f"{markdown}: result block {ref!r} has no results JSON (looked in {candidates[0]})")


def render_samples(result: dict[str, Any], key: str, source: Path, catalog: Catalog | None = None) -> str:
    samples = result.get("metrics", {}).get(key)
    if not isinstance(samples, list) or not all(isinstance(s, dict) and "text" in s for s in samples):
        raise MMLabError(f"{source}: metric {key!r} is not a list of samples with a 'text'")
    parts = []
    for i, s in enumerate(samples):
        if not isinstance(s["text"], str):
            raise MMLabError(f"{source}: metric {key!r}, sample {i}: 'text' is a {type(s['text']).__name__}, not text")
        # generated text is data, not markup: a fence longer than any backtick run inside it, and no
        # result-block marker that would end (or open) a block when the docs are rendered again
        text = s["text"].rstrip().replace("<!--", "<!\u200b--")
        fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
        about = ", ".join(f"{catalog.phrase(k) if catalog is not None else k} {s[k]}" for k in ("seed", "temperature")
                          if k in s)
        prompt = catalog.phrase("prompt") if catalog is not None else "Prompt"
        title = catalog(s["title"]) if catalog is not None and "title" in s else s.get("title")
        head = f"**{title}**" if "title" in s else f"{prompt} `{s.get('prompt', '')!r}`"
        parts.append(f"{head}{' (' + about + ')' if about else ''}:\n\n{fence}text\n{text}\n{fence}\n")
    return "\n".join(parts)


def render_block(result: dict[str, Any], table: str | None, source: Path, text: str | None = None,
                 catalog: Catalog | None = None) -> str:
    """One block's Markdown; with a ``catalog`` (a translated page), every piece of text in the catalog's
    language and every number from the JSON (``mmlab.lab.i18n``)."""
    tr = catalog if catalog is not None else (lambda t: t)
    if catalog is None:
        mode = "" if result.get("mode") == "full" else f" ({result.get('mode')} mode)"
        provenance = f"*Measured by `{result['experiment']}`{mode}; results: `results/{source.name}`.*\n"
    else:
        mode = "" if result.get("mode") == "full" else catalog.phrase("mode").format(mode=result.get("mode"))
        provenance = catalog.phrase("provenance").format(experiment=result["experiment"], mode=mode,
                                                         file=source.name) + "\n"
    if text:
        return render_samples(result, text, source, catalog) + "\n" + provenance
    if table:
        if table not in result.get("tables", {}):
            raise MMLabError(f"{source}: no table {table!r} (has: {', '.join(result.get('tables', {}))})")
        t = result["tables"][table]
        lines = ["| " + " | ".join(tr(h) for h in t["headers"]) + " |", "|" + "---|" * len(t["headers"])]
        lines += ["| " + " | ".join(cell(v, catalog, fmt) for v in row) + " |" for row in t["rows"]]
        caption = f"\n{tr(t['caption'])}\n" if t.get("caption") else ""
        return "\n".join(lines) + "\n" + caption + "\n" + provenance
    words = [catalog.phrase(w) if catalog is not None else w for w in ("finding", "measured", "holds?", "yes", "no")]
    lines = [f"| {words[0]} | {words[1]} | {words[2]} |", "|---|---|---|"]
    for f in result["findings"]:
        evidence = ", ".join(f"{k} = {fmt(v)}" for k, v in f["evidence"].items())
        claim = tr(f["claim"]).replace("|", "\\|")
        lines.append(f"| {claim} | {evidence} | {'**' + words[3] + '**' if f['holds'] else '**' + words[4] + '**'} |")
    return "\n".join(lines) + "\n\n" + provenance


def render_text(text: str, markdown: Path, modules: Path | None, catalog: Catalog | None = None) -> str:
    """``text`` with every block rendered from its JSON. A translated page (``*.zh.md``) takes its words from
    its lesson's catalog; a string the catalog lacks is an error naming all of them (pass a ``catalog`` to
    collect them in ``catalog.missing`` instead)."""
    lang = lang_of(markdown)
    own = catalog is None and lang != "en"
    if own:
        catalog = Catalog(markdown.parent, lang)

    def replace(m: re.Match) -> str:
        result, source = load_result(m["ref"], markdown, modules)
        return m["open"] + render_block(result, m["table"], source, m["text"], catalog) + m["close"]

    out = BLOCK.sub(replace, text)
    if own and catalog.missing:
        keys = "\n".join(f"  {k!r}" for k in dict.fromkeys(catalog.missing))
        raise MMLabError(f"{markdown}: {len(set(catalog.missing))} string(s) of its result blocks are not in "
                         f"{catalog.path} (add them to \"strings\", numbers as {{0}}, {{1}}, ...):\n{keys}")
    return out


def markdown_files(modules: Path, extra: list[Path] | None = None) -> list[Path]:
    files = sorted(modules.rglob("*.md")) + list(extra or [])
    return [f for f in files if f.is_file() and "mmlab:result" in f.read_text(encoding="utf-8")]


def render_all(modules: Path, extra: list[Path] | None = None, write: bool = True) -> list[Path]:
    """Re-render every block; return the files whose text changed (written when ``write``)."""
    return render_files(markdown_files(modules, extra), modules, write)


def render_files(paths: list[Path], modules: Path, write: bool = True) -> list[Path]:
    """Re-render the blocks of ``paths``; return the files whose text changed (written when ``write``)."""
    changed = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        new = render_text(text, path, modules)
        if new != text:
            changed.append(path)
            if write:
                path.write_text(new, encoding="utf-8")
    return changed
