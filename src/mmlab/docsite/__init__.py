"""The learning site (`mmlab docs build` / `serve`): MkDocs pages generated from the Markdown beside the
code (build.py), interactive quizzes from each quiz.md (quiz.py, assets/quiz.js), math as MathML (hooks.py).

Needs the ``docs`` extra (mkdocs, mkdocs-material, pymdown-extensions, latex2mathml) only to build."""

from mmlab.docsite.build import BuildReport, build_site, make_server, site_dir

__all__ = ["BuildReport", "build_site", "make_server", "site_dir"]
