"""Build the learning site from the Markdown beside the code, so it cannot drift from the lessons.

``build_site`` copies README.md, ROADMAP.md, DEVELOPERS.md and every Markdown file under ``modules/``
(with the images they show) into a temporary docs folder, never touching the sources, and on the way:

- turns each ``quiz.md`` into an interactive page (``quiz.py``, ``assets/quiz.js``);
- keeps links between pages; rewrites a link to a file that is not a page (an experiment script,
  ``src/...``) into a link to that file in the source repository; leaves a link to nothing alone, so
  the strict build fails on it;
- generates the navigation from the folders, so a new lesson appears by itself;
- runs MkDocs (Material theme) in strict mode: a warning (a broken link, a missing image) fails the
  build, and the last good site stays in place.
"""

from __future__ import annotations

import functools
import http.server
import importlib.metadata
import importlib.util
import json
import logging
import posixpath
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mmlab.docsite.quiz import parse_quiz, render_quiz
from mmlab.errors import MMLabError

ASSETS = Path(__file__).parent / "assets"
HOOKS = Path(__file__).parent / "hooks.py"
TOP_PAGES = {"README.md": "Home", "ROADMAP.md": "Learning paths", "DEVELOPERS.md": "Developers"}
LESSON_PAGES = {"teaching.md": "Teaching", "code_guide.md": "Code guide", "quiz.md": "Quiz"}
IMAGES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
MARKER = ".mmlab-site"  # marks a folder this command built, so it may replace it
NEEDS = {"mkdocs": "mkdocs", "material": "mkdocs-material", "pymdownx": "pymdown-extensions",
         "latex2mathml": "latex2mathml"}

# Code (fenced blocks, inline spans) is skipped; a link is [text](target "title") or ![alt](target).
LINK = re.compile(
    r"(?P<fence>^[ \t]*(?P<f>`{3,}|~{3,})[^\n]*\n.*?^[ \t]*(?P=f)[ \t]*$)"
    r"|(?P<code>(?P<ticks>`+)(?:(?!\n[ \t]*\n).)+?(?P=ticks))"
    r"|(?P<link>!?\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\))",
    re.M | re.S,
)


@dataclass
class BuildReport:
    out: Path
    pages: int
    seconds: float


def source_url() -> str | None:
    """The repository URL from the package metadata (``[project.urls] Source``)."""
    try:
        urls = importlib.metadata.metadata("minimind-lab").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((u.split(",", 1)[1].strip() for u in urls if u.lower().startswith("source,")), None)


def rewrite_links(text: str, page: str, root: Path, pages: set[str], repo_url: str | None) -> tuple[str, set[str]]:
    """Rewrite the links of ``page`` (a path relative to ``root``) for the site; return the text and the
    images it shows (paths relative to ``root``, to copy).

    A link to a page stays; to a folder with a README.md page, points at that page; to any other file or
    folder of the repository, points at it in ``repo_url`` (or becomes plain text without one); a link
    to nothing stays as it is, for the strict build to report."""
    images: set[str] = set()

    def fix(m: re.Match) -> str:
        if not m["link"]:
            return m[0]  # code
        target = m["target"]
        path, hash_, anchor = target.partition("#")
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path, re.I) or path.startswith("/"):
            return m[0]  # an anchor on this page, a URL, an absolute path
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page), path))
        if resolved in pages or resolved.startswith("../") or not (root / resolved).exists():
            return m[0]  # a page, or nothing: MkDocs checks both

        def relink(new: str) -> str:
            return m[0].replace(f"]({target}", f"]({new}{hash_}{anchor}", 1)

        if (root / resolved).is_dir() and f"{resolved}/README.md" in pages:
            return relink(posixpath.join(path, "README.md"))
        if m[0].startswith("!") and Path(resolved).suffix.lower() in IMAGES and (root / resolved).is_file():
            images.add(resolved)
            return m[0]
        if repo_url is None:
            return m["text"]
        return relink(f"{repo_url}/{'tree' if (root / resolved).is_dir() else 'blob'}/main/{resolved}")

    return LINK.sub(fix, text), images


def source_pages(root: Path) -> list[str]:
    """The site's pages, as paths relative to ``root``: the top-level documents and every Markdown file
    under modules/ (not hidden, not under results/)."""
    pages = [name for name in TOP_PAGES if (root / name).is_file()]
    for path in sorted((root / "modules").rglob("*.md")):
        parts = path.relative_to(root).parts
        if not any(p.startswith((".", "_")) or p == "results" for p in parts):
            pages.append("/".join(parts))
    if "README.md" not in pages:
        raise MMLabError(f"{root}: no README.md: the site's home page is the repository's README")
    return pages


def _title(root: Path, page: str, fallback: str) -> str:
    m = re.search(r"^# (.+)$", (root / page).read_text(encoding="utf-8"), re.M)
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


def mkdocs_config(docs: Path, site: Path, nav: list) -> dict:
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
        "plugins": ["search"],
        "hooks": [str(HOOKS)],
        "markdown_extensions": [
            "tables", "attr_list", "md_in_html", "admonition", "pymdownx.details", "pymdownx.superfences",
            "pymdownx.inlinehilite", "pymdownx.highlight", {"toc": {"permalink": True}},
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
    images: set[str] = set()
    for page in pages:
        text = (root / page).read_text(encoding="utf-8")
        text, shown = rewrite_links(text, page, root, set(pages), repo_url)
        images |= shown
        if posixpath.basename(page) == "quiz.md":
            quiz_id = posixpath.dirname(page).removeprefix("modules/")
            text = render_quiz(parse_quiz(text, root / page), quiz_id)
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
                         "pip install -e \".[docs]\" (or pip install \"minimind-lab[docs]\")")


def _check_out(out: Path) -> None:
    """An earlier site (or an empty folder) may be replaced; anything else is refused."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise MMLabError(f"{out} exists and is not a site built by `mmlab docs build`: "
                         "pass another --out, or remove it")


def _replace(new: Path, out: Path) -> None:
    """Put the built site at ``out``, in place of an earlier one."""
    _check_out(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(out)


def build_site(out: str | Path = "build/site", root: str | Path | None = None) -> BuildReport:
    """Build the site into ``out`` (strict: any warning fails, leaving an earlier site in place)."""
    _check_extra()
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import MkDocsException

    if root is None:
        from mmlab.lab.registry import modules_root

        root = modules_root().parent
    root, out = Path(root).resolve(), Path(out).resolve()
    _check_out(out)
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmlab-docs-") as tmp:
        docs, site = Path(tmp) / "docs", Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
        try:
            pages = stage_docs(root, docs, source_url())
            config_file = Path(tmp) / "mkdocs.yml"
            config_file.write_text(json.dumps(mkdocs_config(docs, site, make_nav(root, pages)), indent=1))
            logger = logging.getLogger("mkdocs")
            collect, propagate = _Collect(), logger.propagate
            logger.addHandler(collect)
            logger.propagate = False  # MkDocs' info lines stay quiet; its warnings make the error below
            try:
                build(load_config(str(config_file)))
            except MkDocsException as e:  # strict mode's Abort, or a hook's PluginError
                found = "\n  ".join(m.replace(str(docs) + "/", "") for m in collect.messages) or str(e)
                raise MMLabError(f"the site did not build (strict mode):\n  {found}") from None
            finally:
                logger.removeHandler(collect)
                logger.propagate = propagate
            (site / MARKER).write_text("built by `mmlab docs build`; the next build replaces this folder\n")
            _replace(site, out)
        finally:
            shutil.rmtree(site, ignore_errors=True)
    return BuildReport(out, len(pages), time.perf_counter() - start)


def make_server(site: str | Path, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A static file server for a built site (port 0: any free port); quiet about each request."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

    if not (Path(site) / "index.html").is_file():
        raise MMLabError(f"{site}: no index.html: build the site first (mmlab docs build --out {site})")
    try:
        return http.server.ThreadingHTTPServer((host, port), functools.partial(Handler, directory=str(site)))
    except OSError as e:
        raise MMLabError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
