"""Build the learning site from the Markdown beside the code, so it cannot drift from the lessons.

``build_site`` copies README.md, ROADMAP.md, DEVELOPERS.md and every Markdown file under ``modules/``
(with the images they show) into a temporary docs folder, never touching the sources, and on the way:

- turns each ``quiz.md`` into an interactive page (``quiz.py``, ``assets/quiz.js``);
- keeps links between pages; rewrites a link to a file that is not a page (an experiment script,
  ``src/...``) into a link to that file in the source repository; leaves a link to nothing (or to a
  file git ignores, such as quick-run results) alone, so the strict build fails on it; copies the images
  the pages show, and never turns an image into a link;
- generates the navigation from the folders, so a new lesson appears by itself;
- runs MkDocs (Material theme) in strict mode: a warning (a broken link, a missing image) fails the
  build, and the last good site stays in place;
- is bilingual: each page's Chinese twin (``teaching.zh.md`` beside ``teaching.md``) becomes the page under
  ``zh/`` (``mkdocs-static-i18n``, suffix layout), with a language switch on every page, Chinese navigation
  titles (the twins' own headings), quizzes whose buttons and feedback speak Chinese, and a search index
  that segments Chinese words (``jieba``); a page without a twin falls back to the English one.
"""

from __future__ import annotations

import functools
import http.server
import importlib.metadata
import importlib.util
import json
import logging
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmlab.docsite.quiz import parse_quiz, render_quiz
from mmlab.errors import MMLabError
from mmlab.lab.i18n import lang_of

ASSETS = Path(__file__).parent / "assets"
HOOKS = Path(__file__).parent / "hooks.py"
TOP_PAGES = {"README.md": "Home", "ROADMAP.md": "Learning paths", "DEVELOPERS.md": "Developers"}
LESSON_PAGES = {"teaching.md": "Teaching", "code_guide.md": "Code guide", "quiz.md": "Quiz"}
IMAGES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
MARKER = ".mmlab-site"  # marks a folder this command built and lists what it wrote, so it may replace it
NEEDS = {"mkdocs": "mkdocs", "material": "mkdocs-material", "pymdownx": "pymdown-extensions",
         "latex2mathml": "latex2mathml", "mkdocs_static_i18n": "mkdocs-static-i18n", "jieba": "jieba"}
# the navigation's fixed labels in the Chinese edition (lesson and section titles come from the zh pages)
NAV_ZH = {"Home": "首页", "Learning paths": "学习路线", "Lessons": "课程", "Developers": "开发者指南",
          "Teaching": "讲解", "Code guide": "代码导读", "Quiz": "测验",
          "Foundation": "基础", "Architecture": "架构", "Training": "训练", "Inference": "推理"}

# Code (fenced blocks, inline spans) is skipped; a link is [text](target "title") or ![alt](target), and
# a link's text may hold an image: [![plot](results/p.png)](teaching.md).
IMAGE = r"!\[[^\]\n]*\]\([^)\s]+(?:\s+\"[^\"]*\")?\)"
LINK = re.compile(
    r"(?P<fence>^[ \t]*(?P<f>`{3,}|~{3,})[^\n]*\n.*?^[ \t]*(?P=f)[ \t]*$)"
    r"|(?P<code>(?P<ticks>`+)(?:(?!\n[ \t]*\n).)+?(?P=ticks))"
    rf"|(?P<link>!?\[(?P<text>(?:{IMAGE}|[^\]\n])*)\]\((?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\))",
    re.M | re.S,
)


ZH_LINK = re.compile(r"(\]\((?![a-z][a-z0-9+.-]*:)[^)\s]*?)\.zh\.md([#)\s])")


@dataclass
class BuildReport:
    out: Path
    pages: int
    seconds: float
    translated: int = 0  # pages with a Chinese twin


def source_url() -> str | None:
    """The repository URL from the package metadata (``[project.urls] Source``)."""
    try:
        urls = importlib.metadata.metadata("minimind-lab").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((u.split(",", 1)[1].strip() for u in urls if u.lower().startswith("source,")), None)


def linkable(root: Path) -> Callable[[str], bool]:
    """Whether a path (relative to ``root``) is there for the site to link to or show: it exists and, in a
    git checkout, git does not ignore it; outside git, it is not under ``results/quick/`` (quick-run
    results, which are never committed). A link to anything else is left for the strict build to report."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout, or no git
        return lambda path: (root / path).exists() and "/results/quick/" not in f"/{path}/"
    known = {"."}
    for name in os.fsdecode(listed).split("\0"):
        while name and name not in known:  # the file and its folders
            known.add(name)
            name = posixpath.dirname(name)
    return lambda path: path in known and (root / path).exists()


def rewrite_links(text: str, page: str, root: Path, pages: set[str], repo_url: str | None,
                  can_link: Callable[[str], bool] | None = None) -> tuple[str, set[str]]:
    """Rewrite the links of ``page`` (a path relative to ``root``) for the site; return the text and the
    images it shows (paths relative to ``root``, to copy).

    A link to a page stays; to a folder with a README.md page, points at that page; to any other file or
    folder of the repository, points at it in ``repo_url`` (or becomes plain text without one); a link
    to nothing (see ``linkable``) stays as it is, for the strict build to report. An image is copied, or
    left for the strict build to report: never turned into a link."""
    images: set[str] = set()
    can_link = can_link or linkable(root)

    def fix(m: re.Match) -> str:
        if not m["link"]:
            return m[0]  # code
        image, target = m[0].startswith("!"), m["target"]
        inner = m["text"] if image else LINK.sub(fix, m["text"])  # a link's text may hold an image

        def link(new: str) -> str:
            return f"{'!' if image else ''}[{inner}]({new}{m['title'] or ''})"

        path, hash_, anchor = target.partition("#")
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path, re.I) or path.startswith("/"):
            return link(target)  # an anchor on this page, a URL, an absolute path
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page), path))
        if resolved in pages or resolved == ".." or resolved.startswith("../") or not can_link(resolved):
            return link(target)  # a page, or nothing: MkDocs checks both
        if image:
            if Path(resolved).suffix.lower() in IMAGES and (root / resolved).is_file():
                images.add(resolved)
            return link(target)
        if (root / resolved).is_dir() and posixpath.normpath(f"{resolved}/README.md") in pages:
            return link(posixpath.join(path, "README.md") + hash_ + anchor)
        if repo_url is None:
            return inner
        # the published branch, not the commit being built: its links stay valid once the site is online
        kind = "tree" if (root / resolved).is_dir() else "blob"
        return link(f"{repo_url}/{kind}/main/{resolved}{hash_}{anchor}")

    return LINK.sub(fix, text), images


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MMLabError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from None


def source_pages(root: Path) -> list[str]:
    """The site's pages, as paths relative to ``root``: the top-level documents and every Markdown file
    under modules/ (not hidden, not under results/)."""
    pages = [name for name in TOP_PAGES if (root / name).is_file()]
    for path in sorted((root / "modules").rglob("*.md")):
        parts = path.relative_to(root).parts
        if not any(p.startswith((".", "_")) or p == "results" for p in parts) and lang_of(path) == "en":
            pages.append("/".join(parts))
    if "README.md" not in pages:
        raise MMLabError(f"{root}: no README.md: the site's home page is the repository's README")
    return pages


def zh_twin(page: str) -> str:
    return page[: -len(".md")] + ".zh.md"


def translated_pages(root: Path, pages: list[str]) -> list[str]:
    """The Chinese twins of ``pages`` that exist."""
    return [zh_twin(p) for p in pages if (root / zh_twin(p)).is_file()]


def nav_translations(root: Path, pages: list[str]) -> dict[str, str]:
    """English navigation title -> Chinese: the fixed labels, and each page's heading -> its twin's heading."""
    out = dict(NAV_ZH)
    for page in pages:
        twin = zh_twin(page)
        if (root / twin).is_file() and (en := _title(root, page, "")) and (zh := _title(root, twin, "")):
            out.setdefault(en, zh)
    return out


def _title(root: Path, page: str, fallback: str) -> str:
    m = re.search(r"^# (.+)$", _read(root / page), re.M)
    return m[1].strip() if m else fallback


def _folder_title(name: str) -> str:
    words = re.sub(r"^\d+[-_]", "", name).replace("-", " ").replace("_", " ")
    return words[:1].upper() + words[1:]


def make_nav(root: Path, pages: list[str]) -> list:
    """The navigation, from the folders: home and learning paths, then modules/ as nested sections (a
    folder's README.md is its section's page; a lesson lists Teaching, Code guide, Quiz), then the rest."""

    def folder(prefix: str) -> list:
        here = [p for p in pages if posixpath.dirname(p) == prefix]
        entries: list = [p for p in here if p.endswith("/README.md")]
        entries += [{label: f"{prefix}/{name}"} for name, label in LESSON_PAGES.items() if f"{prefix}/{name}" in here]
        entries += [{_title(root, p, p): p} for p in here
                    if posixpath.basename(p) not in LESSON_PAGES and not p.endswith("/README.md")]
        subs = sorted({p[len(prefix) + 1:].split("/")[0] for p in pages if p.startswith(prefix + "/")
                       and p.count("/") > prefix.count("/") + 1})
        for sub in subs:
            readme = f"{prefix}/{sub}/README.md"
            title = _title(root, readme, _folder_title(sub)) if readme in pages else _folder_title(sub)
            entries.append({title: folder(f"{prefix}/{sub}")})
        return entries

    nav: list = [{TOP_PAGES[p]: p} for p in ("README.md", "ROADMAP.md") if p in pages]
    if any(p.startswith("modules/") for p in pages):
        nav.append({"Lessons": folder("modules")})
    nav += [{TOP_PAGES[p]: p} for p in TOP_PAGES if p in pages and p not in ("README.md", "ROADMAP.md")]
    return nav


def _slugify() -> Callable[..., str]:
    from pymdownx.slugs import slugify

    return slugify(case="lower")


def mkdocs_config(docs: Path, site: Path, nav: list, zh_nav: dict[str, str] | None = None) -> dict:
    """The MkDocs configuration; with ``zh_nav`` (English title -> Chinese) the site is bilingual."""
    plugins: list = ["search"]
    if zh_nav is not None:
        # search: Chinese runs through jieba at build time (zero-width spaces between words), so the separator
        # splits on U+200B too; i18n: suffix layout (page.zh.md), a language switch in the header
        plugins = [{"search": {"lang": ["en", "zh"], "separator": r"[\s\u200b\-]+"}},
                   {"i18n": {"docs_structure": "suffix", "fallback_to_default": True, "reconfigure_material": True,
                             "reconfigure_search": True,
                             "languages": [{"locale": "en", "name": "English", "default": True, "build": True},
                                           {"locale": "zh", "name": "中文", "build": True,
                                            "site_description": "通过测量学习现代大语言模型如何构建与训练。",
                                            "nav_translations": zh_nav}]}}]
    return {
        "site_name": "MiniMind Lab",
        "site_description": "Learn how a modern LLM is built and trained, by measurement.",
        "docs_dir": str(docs),
        "site_dir": str(site),
        "use_directory_urls": False,  # plain .html files: the site also opens from the file system
        "strict": True,
        "nav": nav,
        "theme": {
            "name": "material",
            "font": False,  # system fonts: nothing is fetched from outside
            "palette": [
                {"media": "(prefers-color-scheme: light)", "scheme": "default",
                 "toggle": {"icon": "material/weather-night", "name": "Switch to the dark theme"}},
                {"media": "(prefers-color-scheme: dark)", "scheme": "slate",
                 "toggle": {"icon": "material/weather-sunny", "name": "Switch to the light theme"}},
            ],
            "features": ["navigation.tabs", "navigation.indexes", "navigation.footer",
                         "search.suggest", "search.highlight", "content.code.copy", "toc.follow"],
        },
        "plugins": plugins,
        "hooks": [str(HOOKS)],
        "markdown_extensions": [
            "tables", "attr_list", "md_in_html", "admonition", "pymdownx.details", "pymdownx.superfences",
            "pymdownx.inlinehilite", "pymdownx.highlight",
            # Unicode slugs: a Chinese heading keeps its words in its anchor (#快速入门30-分钟), as on GitHub
            {"toc": {"permalink": True, "slugify": _slugify()}},
            {"pymdownx.arithmatex": {"generic": True}}, {"pymdownx.tasklist": {"custom_checkbox": True}},
        ],
        "extra_css": ["assets/mmlab/site.css"],
        "extra_javascript": ["assets/mmlab/quiz.js"],
        "validation": {"omitted_files": "warn", "absolute_links": "warn", "unrecognized_links": "warn",
                       "anchors": "warn"},
    }


def stage_docs(root: Path, docs: Path, repo_url: str | None) -> list[str]:
    """Write the site's Markdown and images into ``docs``; return the pages."""
    pages = source_pages(root)
    twins = translated_pages(root, pages)
    images: set[str] = set()
    can_link = linkable(root)
    for page in pages + twins:
        text = _read(root / page)
        zh = lang_of(Path(page)) == "zh"
        if posixpath.basename(page) in ("quiz.md", "quiz.zh.md"):  # parsed as written: ids ignore the links
            text = render_quiz(parse_quiz(text, root / page), posixpath.dirname(page).removeprefix("modules/"),
                               "zh" if zh else "en")
        text, shown = rewrite_links(text, page, root, set(pages + twins), repo_url, can_link)
        # "[中文版](README.zh.md)" / "[English](README.md)": the site's language switch does that; plain text here
        twin = posixpath.basename(page.replace(".zh.md", ".md") if zh else zh_twin(page))
        text = re.sub(rf"(?<!!)\[([^\]\n]*)\]\({re.escape(twin)}\)", r"\1", text)
        if zh:  # the i18n plugin finds a page's twin from the English name: link to page.md, it serves page.zh.md
            text = ZH_LINK.sub(r"\g<1>.md\g<2>", text)
        images |= shown
        (docs / page).parent.mkdir(parents=True, exist_ok=True)
        (docs / page).write_text(text, encoding="utf-8")
    for image in images:
        (docs / image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / image, docs / image)
    shutil.copytree(ASSETS, docs / "assets" / "mmlab")
    return pages


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _check_extra() -> None:
    missing = [pkg for mod, pkg in NEEDS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise MMLabError(f"the site needs the docs extra ({', '.join(missing)} missing): "
                         "in your clone of the repository, pip install -e \".[docs]\"")


def _tree(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, as paths relative to it (links are not followed)."""
    found = set()
    for top, dirs, files in os.walk(folder):
        rel = Path(top).relative_to(folder)
        found |= {(rel / name).as_posix() for name in (*dirs, *files)}
    return found


def _check_out(out: Path) -> None:
    """``out`` may be missing, an empty folder, or a site an earlier build wrote that holds nothing else
    (its marker lists what the build wrote: a .git, a CNAME or a note put there since is kept safe)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MMLabError(f"{out} exists and is not a folder: pass another --out")
    found = _tree(out)
    if not found:
        return
    if MARKER not in found:
        raise MMLabError(f"{out} exists and is not a site built by `mmlab docs build`: pass another --out, "
                         "or remove it")
    wrote = set((out / MARKER).read_text(encoding="utf-8", errors="replace").splitlines()[1:])
    foreign = sorted(found - wrote - {MARKER})
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise MMLabError(f"{out} holds what `mmlab docs build` did not write ({', '.join(foreign[:3])}{more}): "
                         "move it away, or pass another --out")


def _replace(new: Path, out: Path) -> None:
    """Put the built site at ``out``, in place of an earlier one; if that fails, the earlier one stays."""
    _check_out(out)
    parked = None  # the earlier site, moved aside into a fresh folder
    try:
        if out.exists():
            parked = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent)) / "site"
            out.rename(parked)
        try:
            new.rename(out)
        except OSError:
            if parked:
                parked.rename(out)  # the earlier site goes back
            raise
    except OSError as e:
        kept = f" (the earlier site is in {parked})" if parked and parked.exists() and not out.exists() else ""
        raise MMLabError(f"cannot put the site at {out}: {e.strerror or e}{kept}") from None
    finally:
        if parked and (out.exists() or not parked.exists()):
            shutil.rmtree(parked.parent, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def repo_root(root: str | Path | None = None) -> Path:
    """The repository whose Markdown the site shows: ``root``, else the folder holding ``modules/``."""
    if root is None:
        from mmlab.lab.registry import modules_root

        root = modules_root().parent
    return Path(root).resolve()


def site_dir(out: str | Path | None = None, root: str | Path | None = None) -> Path:
    """Where the site goes: ``out``; by default build/site in the repository's root when the working
    directory is inside it, else in the working directory."""
    if out is not None:
        return Path(out).resolve()
    root, cwd = repo_root(root), Path.cwd().resolve()
    return (root if root == cwd or root in cwd.parents else cwd) / "build" / "site"


def build_site(out: str | Path | None = None, root: str | Path | None = None) -> BuildReport:
    """Build the site into ``out`` (``site_dir``). Strict: any warning fails, leaving an earlier site in place."""
    _check_extra()
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import MkDocsException

    root, out = repo_root(root), site_dir(out, root)
    _check_out(out)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmlab-docs-") as tmp:
        docs = Path(tmp) / "docs"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            site = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
        except OSError as e:
            raise MMLabError(f"cannot write the site into {out.parent}: {e.strerror or e}") from None
        try:
            pages = stage_docs(root, docs, source_url())
            config_file = Path(tmp) / "mkdocs.yml"
            zh_nav = nav_translations(root, pages) if translated_pages(root, pages) else None
            config = mkdocs_config(docs, site, make_nav(root, pages), zh_nav)
            extensions = config.pop("markdown_extensions")  # holds a function: handed over in Python, not YAML
            config_file.write_text(json.dumps(config, indent=1))
            logger = logging.getLogger("mkdocs")
            collect, propagate = _Collect(), logger.propagate
            logger.addHandler(collect)
            logger.propagate = False  # MkDocs' info lines stay quiet; its warnings make the error below
            try:
                loaded = load_config(str(config_file), markdown_extensions=extensions)  # imports jieba (search)
                logging.getLogger("jieba").setLevel(logging.WARNING)  # its dictionary-loading chatter
                build(loaded)
            except MkDocsException as e:  # strict mode's Abort, or a hook's PluginError
                found = [m.replace(str(docs) + "/", "") for m in collect.messages] or [str(e)]
                raise MMLabError(f"the site did not build (strict mode): {len(found)} problem"
                                 f"{'' if len(found) == 1 else 's'}, any earlier site is kept:\n  "
                                 + "\n  ".join(found)) from None
            finally:
                logger.removeHandler(collect)
                logger.propagate = propagate
            wrote = "\n".join(sorted(_tree(site)))
            (site / MARKER).write_text(f"built by `mmlab docs build`, which replaces this folder while it holds "
                                       f"only what it wrote:\n{wrote}\n", encoding="utf-8")
            site.chmod(0o777 & ~_umask())  # mkdtemp made it private; a site is read by a web server
            _replace(site, out)
        finally:
            shutil.rmtree(site, ignore_errors=True)
    return BuildReport(out, len(pages), time.perf_counter() - start, len(translated_pages(root, pages)))


def make_server(site: str | Path, host: str = "127.0.0.1", port: int = 8001) -> http.server.ThreadingHTTPServer:
    """A static file server for the site folder ``site`` (port 0: any free port); quiet about each request.
    It binds at once and reads ``site`` only when asked, so `docs serve` reports a busy port before building."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True  # a slow client must not keep Ctrl-C from ending the process

        def handle_error(self, request, client_address):  # a browser that leaves mid-page is no error
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, TimeoutError)):
                super().handle_error(request, client_address)

    try:
        return Server((host, port), functools.partial(Handler, directory=str(site)))
    except OSError as e:
        raise MMLabError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
