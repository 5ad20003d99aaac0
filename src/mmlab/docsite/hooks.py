"""MkDocs hooks of the learning site (loaded by path from the generated mkdocs.yml).

Math: ``pymdownx.arithmatex`` (generic mode) marks ``$...$`` and ``$$...$$`` as ``\\(...\\)`` and
``\\[...\\]`` spans; here they become MathML at build time, which browsers render natively: no
JavaScript and nothing fetched from a CDN.

Languages: the header's language switch links each page to its twin (``mkdocs-static-i18n``). Material also
writes the same links into the head as ``<link rel="alternate">``, and its script then fetches
``sitemap.xml`` beside each of them: beside a page, not a site root, so every page load failed a request
(a 404 in the console). Those head links are dropped; the switch in the header does the job.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

HEAD_ALTERNATE = re.compile(r'\s*<link rel="alternate" href="[^"]*" hreflang="[^"]*">')
MATH = re.compile(r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>', re.S)


def to_mathml(page_html: str, where: str = "page") -> str:
    def replace(m: re.Match) -> str:
        tex = html.unescape(m["tex"]).strip()
        display = m["tag"] == "div"
        tex = tex[2:-2].strip() if tex[:2] in ("\\(", "\\[") else tex  # generic mode wraps in \( \) or \[ \]
        try:
            mathml = convert(tex, display="block" if display else "inline")
        except Exception as e:  # latex2mathml raises many kinds of errors for bad LaTeX
            raise PluginError(f"{where}: cannot render the math {tex!r}: {str(e) or type(e).__name__}") from None
        return f'<div class="mmlab-math">{mathml}</div>' if display else mathml

    return MATH.sub(replace, page_html)


def on_page_content(html_text, page, config, files):
    return to_mathml(html_text, page.file.src_uri)


def on_post_page(output, page, config):
    head, sep, body = output.partition("</head>")
    return HEAD_ALTERNATE.sub("", head) + sep + body if sep else output
