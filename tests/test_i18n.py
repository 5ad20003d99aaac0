"""The Chinese edition: result blocks rendered from the same JSON with words from a catalog (numbers never
typed), translated pages that correspond to their English ones (headings, figures, blocks, code, quiz keys),
and the zh quiz labels."""

import json
from pathlib import Path

import pytest

from mmlab.docsite.quiz import parse_quiz
from mmlab.errors import MMLabError
from mmlab.lab.i18n import Catalog, check_translations, compare, english_twin, expected_translations, lang_of, template
from mmlab.lab.render import render_text

ROOT = Path(__file__).resolve().parents[1]


def test_template_takes_the_numbers_out_and_keeps_names():
    assert template("lr 3e-05 beats 1,024 tokens by 1.5x in exp1 (fp32)") == (
        "lr {0} beats {1} tokens by {2}x in exp1 (fp32)", ["3e-05", "1,024", "1.5"])
    assert template("-0.25 nats, {a}") == ("{0} nats, {{a}}", ["-0.25"])
    assert lang_of(Path("teaching.zh.md")) == "zh" and lang_of(Path("teaching.md")) == "en"
    assert english_twin(Path("x/quiz.zh.md")) == Path("x/quiz.md")


def lesson(tmp_path, strings):
    """A lesson folder with one result JSON and a catalog."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "exp1.json").write_text(json.dumps({
        "experiment": "exp1", "mode": "full",
        "findings": [{"claim": "Loss falls below 2.5 in 300 steps", "holds": True, "evidence": {"loss": 2.31}}],
        "tables": {"t": {"headers": ["run", "loss"], "rows": [["baseline", 2.31], ["with 8 heads", 2.2]],
                         "caption": "300 steps, one seed."}}}))
    (tmp_path / "i18n").mkdir()
    (tmp_path / "i18n" / "zh.json").write_text(json.dumps({"strings": strings}, ensure_ascii=False))
    return tmp_path


def test_a_zh_block_takes_words_from_the_catalog_and_numbers_from_the_json(tmp_path):
    folder = lesson(tmp_path, {"Loss falls below {0} in {1} steps": "{1} 步内损失降到 {0} 以下", "run": "运行",
                               "loss": "损失", "baseline": "基线", "with {0} heads": "{0} 个头",
                               "{0} steps, one seed.": "{0} 步，单个随机种子。"})
    page = folder / "teaching.zh.md"
    text = ("<!-- mmlab:result exp1 -->\n<!-- /mmlab:result -->\n"
            "<!-- mmlab:result exp1 table=t -->\n<!-- /mmlab:result -->\n")
    out = render_text(text, page, None)
    assert "| 300 步内损失降到 2.5 以下 | loss = 2.31 | **是** |" in out
    assert "| 结论 | 测量值 | 是否成立 |" in out and "*由 `exp1` 测得；结果：`results/exp1.json`。*" in out
    assert "| 运行 | 损失 |" in out and "| 8 个头 | 2.2 |" in out and "300 步，单个随机种子。" in out
    assert Catalog(folder, "zh")("3e-04") == "3e-04"  # a cell of numbers only needs no translation
    # the English page of the same lesson is untouched by the catalog
    assert "| Loss falls below 2.5 in 300 steps |" in render_text(text, folder / "teaching.md", None)


def test_a_missing_string_or_a_dropped_placeholder_is_an_error_naming_it(tmp_path):
    folder = lesson(tmp_path, {"Loss falls below {0} in {1} steps": "损失降到 {0} 以下"})
    text = "<!-- mmlab:result exp1 -->\n<!-- /mmlab:result -->\n"
    with pytest.raises(MMLabError, match=r"placeholders \{0\}, \{1\} once each"):
        render_text(text, folder / "teaching.zh.md", None)
    (folder / "i18n" / "zh.json").write_text("{}")
    with pytest.raises(MMLabError, match=r"not in .*zh.json[\s\S]*'Loss falls below \{0\} in \{1\} steps'"):
        render_text(text, folder / "teaching.zh.md", None)
    assert Catalog(folder, "zh").strings == {}


def test_the_zh_quiz_labels_parse_like_the_english_ones():
    q = parse_quiz("### Q1. 问题？\n- [ ] A. 错\n  为什么不对：原因\n- [x] B. 对\n> **解析：** 因为\n\n"
                   "### O1. 开放题？\n> **参考答案：** 答案\n", "quiz.zh.md")
    [c] = q.choices
    assert c.answer == 1 and c.notes == ["原因", ""] and len(q.open_questions) == 1


def test_compare_finds_a_translation_that_is_not_the_same_page(tmp_path):
    en, zh = tmp_path / "quiz.md", tmp_path / "quiz.zh.md"
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.png").write_bytes(b"png")
    en.write_text("# Quiz\n\n### Q1. What?\n- [x] A. yes\n- [ ] B. no\n  Why not: no\n> **Explanation:** e\n\n"
                  "![p](results/a.png)\n")
    zh.write_text("# 测验\n\n### Q1. 什么？\n- [ ] A. 是\n  为什么不对：否\n- [x] B. 否\n> **解析：** e\n")
    problems = compare(en, zh)
    assert any("correct options" in p for p in problems) and any("figures" in p for p in problems)
    zh.write_text("# 测验\n\n### Q1. 什么？\n- [x] A. 是\n- [ ] B. 否\n  为什么不对：否\n> **解析：** e\n\n"
                  "![图](results/a.png)\n")
    assert compare(en, zh) == []
    zh.write_text(zh.read_text() + "\n[下一课](../02-next/README.zh.md)\n")  # a page that does not exist
    assert [p for p in compare(en, zh) if "does not exist" in p]


def test_a_number_the_english_page_does_not_state_is_a_stale_copy(tmp_path):
    """A figure typed into a translation goes stale when the English page's figure is re-measured: every number
    in a translated page's prose must be one the English page states (result blocks and code aside)."""
    en, zh = tmp_path / "README.md", tmp_path / "README.zh.md"
    block = "<!-- mmlab:result results/a.json -->\n| 9.99 |\n<!-- /mmlab:result -->\n"
    en.write_text("# Speed\n\nBatching serves 3.16x the tokens/s at 1,024 tokens.\n\n" + block)
    zh.write_text("# 速度\n\n批处理在 1024 个 token 时达到 3.16x。\n\n" + block.replace("9.99", "8.88") +
                  "```\nmmlab serve --batch 16\n```\n")
    assert [p for p in compare(en, zh) if "numbers" in p] == []  # 1,024 == 1024; blocks and code are not prose
    zh.write_text(zh.read_text().replace("3.16x", "3.77x"))
    assert [p for p in compare(en, zh) if "numbers ['3.77'] are not in README.md" in p]


def test_every_translated_page_corresponds_to_its_english_page():
    state = check_translations(ROOT)
    assert state["problems"] == []


def test_every_page_has_its_chinese_translation():
    """README, ROADMAP and each lesson's four documents: a new English page needs its zh twin
    (`mmlab lab i18n --list-missing` names what is missing)."""
    missing = [str(tr.relative_to(ROOT)) for _, tr in expected_translations(ROOT) if not tr.is_file()]
    assert missing == []


def test_render_of_a_missing_file_is_a_one_line_error(capsys):
    from mmlab.cli import main

    assert main(["lab", "render", "--check", "no/such/page.zh.md"]) != 0
    assert "no such file: no/such/page.zh.md" in capsys.readouterr().err
