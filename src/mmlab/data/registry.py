"""Named datasets: where each file comes from, what it must hash to, and how to get it.

Resolution order for ``dataset_path(name)``:
  1. the local cache: ``$MMLAB_DATA_DIR`` (default ``~/.cache/mmlab/data``);
  2. a mirror folder: ``$MMLAB_DATA_MIRROR`` (a copy of the files, e.g. on a shared drive or in CI);
  3. a download from the canonical URL (pinned to a commit) into the cache.
Every file is checked against its sha256 wherever it comes from: a corrupted or truncated file is
reported, never silently used. The test suite never downloads (it uses the mirror or a local server).

The large corpora (full TinyStories, MiniMind's data files, a FineWeb-Edu sample) are ``HubFile`` entries:
files of a Hugging Face dataset repository at a pinned commit, fetched with ``huggingface_hub`` (see
``mmlab.data.hub`` for how they are verified).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mmlab.errors import MMLabError

_GITHUB_RAW = "https://raw.githubusercontent.com"


class DataError(MMLabError):
    """A dataset cannot be found, fetched, verified or parsed; the message names the file."""


@dataclass(frozen=True)
class Dataset:
    name: str
    filename: str
    url: str
    sha256: str
    size: int
    license: str
    description: str
    kind: str  # "text" (a corpus), "json", "jsonl"
    doc_separator: str | None = None  # for document corpora: the string between documents


@dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face dataset repository at a pinned commit (``revision``).

    Its size and sha256 are not typed in here: they could not be looked up where this registry was written
    (no network) and the hub publishes them with the file. ``mmlab.data.hub`` checks the download against the
    sha256 the hub serves for it (the LFS object id), then records both in a lock file, so a later change of
    the file is detected. ``revision_source`` says where the pinned commit comes from."""
    name: str
    repo_id: str
    filename: str
    revision: str
    revision_source: str
    license: str
    description: str
    kind: str  # "text" (a corpus), "jsonl", "parquet"
    stage: str  # what it trains: "pretrain", "sft", "lora", "dpo"
    approx_size: str  # as public READMEs give it, or "not looked up" (informative only; never checked)
    doc_separator: str | None = None

    @property
    def url(self) -> str:
        return f"https://huggingface.co/datasets/{self.repo_id}/resolve/{self.revision}/{self.filename}"


_TINYSTORIES = ("roneneldan/TinyStories", "f54c09fd23315a6f9c86f9dc80f725de7d8f9c64",
                "the commit a public TinyStories training project pins (not resolved here: no network)")
# MiniMind-3's file names (pretrain_t2t_mini, sft_t2t_mini); MiniMind2's pretrain_hq / sft_mini_512 have the same
# formats and can be given as paths.
_MINIMIND = ("jingyaogong/minimind_dataset", "312afb4f76391145c6902f765bb51691c09a12f5",
             "the commit a public MiniMind-3 tutorial downloads its samples from (not resolved here: no network)")
_MINIMIND_LICENSE = ("the dataset card lists Apache-2.0 and CC-BY-NC-2.0, with data from several sources: check each "
                     "file's origin before use")
_FINEWEB_EDU = ("HuggingFaceFW/fineweb-edu", "fc9850dff5e2d0f8f776efe41b24a1c49556cfc5",
                "the commit a public pretraining project's data config pins (not resolved here: no network)")

HUB_FILES = [
    HubFile("tinystories-v2-train", _TINYSTORIES[0], "TinyStoriesV2-GPT4-train.txt", *_TINYSTORIES[1:],
            "CDLA-Sharing-1.0", "All of TinyStories V2 (GPT-4 stories), train split; stories end in <|endoftext|>",
            "text", "pretrain", "~2.2 GB", doc_separator="<|endoftext|>"),
    HubFile("tinystories-v2-valid", _TINYSTORIES[0], "TinyStoriesV2-GPT4-valid.txt", *_TINYSTORIES[1:],
            "CDLA-Sharing-1.0", "TinyStories V2 (GPT-4 stories), validation split", "text", "pretrain",
            "not looked up", doc_separator="<|endoftext|>"),
    HubFile("minimind-pretrain", _MINIMIND[0], "pretrain_t2t_mini.jsonl", *_MINIMIND[1:], _MINIMIND_LICENSE,
            "MiniMind-3's pretraining corpus (mini): one {\"text\"} object per line", "jsonl", "pretrain",
            "not looked up"),
    HubFile("minimind-sft", _MINIMIND[0], "sft_t2t_mini.jsonl", *_MINIMIND[1:], _MINIMIND_LICENSE,
            "MiniMind-3's SFT set (mini): {\"conversations\": [{role, content, reasoning_content?}, ...]}",
            "jsonl", "sft", "not looked up"),
    HubFile("minimind-dpo", _MINIMIND[0], "dpo.jsonl", *_MINIMIND[1:], _MINIMIND_LICENSE,
            "MiniMind's preference pairs: {\"chosen\": [messages], \"rejected\": [messages]}", "jsonl", "dpo",
            "55-909 MB by release"),
    HubFile("minimind-lora-identity", _MINIMIND[0], "lora_identity.jsonl", *_MINIMIND[1:], _MINIMIND_LICENSE,
            "MiniMind's identity set for LoRA ('who are you?'): {\"conversations\": [...]}", "jsonl", "lora",
            "~23 KB"),
    HubFile("fineweb-edu-sample", _FINEWEB_EDU[0], "sample/10BT/000_00000.parquet", *_FINEWEB_EDU[1:],
            "ODC-By-1.0", "The first parquet file of FineWeb-Edu's 10BT sample (educational web text, column 'text')",
            "parquet", "pretrain", "~2 GB"),
]


def _raw(repo: str, commit: str, path: str) -> str:
    return f"{_GITHUB_RAW}/{repo}/{commit}/{path}"


_RASBT = ("rasbt/LLMs-from-scratch", "28c65cdfbc3338e2e040016eea4b7fdf556e4d57")
_NUTCRACKER = ("brucewlee/nutcracker-db", "95fa9aa468d4d0e179e2e950cc68cd5058463503")

REGISTRY: dict[str, Dataset | HubFile] = {
    d.name: d
    for d in [
        Dataset(
            "tinyshakespeare", "tinyshakespeare_input.txt",
            _raw("karpathy/char-rnn", "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e", "data/tinyshakespeare/input.txt"),
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1115394,
            "MIT (repository); the text is public domain",
            "TinyShakespeare: 40,000 lines of Shakespeare, 65 distinct characters", "text"),
        Dataset(
            "tinystories-valid-1k", "tinystories_valid_first1k.txt",
            _raw("yuninxia/moe-routing-bench", "bb9bb0bd461aa77cf6ab89423b758f586a6f75d1", "data/tinystories_val.txt"),
            "5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6", 794375,
            "CDLA-Sharing-1.0 (TinyStories)",
            "About the first 1,000 stories of the TinyStories validation split (plain text)", "text"),
        Dataset(
            "tinystories-train-2mib", "tinystories_train_head2MiB.txt",
            _raw("gusjengis/toy-RNN", "e4c7ff8bba4ff7989e69a3a816ebe4b14813b41e", "data/tinystories_sample.txt"),
            "5352b299dcb1a32898b2d779b145b5a05f3e1265953fd21c264c9f9f9c9ae33d", 2097152,
            "CDLA-Sharing-1.0 (TinyStories)",
            "First 2 MiB of TinyStories-train; stories end in <|endoftext|> (the cut-off last one is dropped)",
            "text",
            doc_separator="<|endoftext|>"),
        Dataset(
            "tinystories-sample-5", "tinystories_sample_cs336.txt",
            _raw("stanford-cs336/assignment1-basics", "25a8a49f6460c83a30416d42348f2ef11d1dd185",
                 "tests/fixtures/tinystories_sample.txt"),
            "defaedb58bf28079f3e29c6142cb7f3568d331a577e0911c5d7925c465c50c43", 3794,
            "CDLA-Sharing-1.0 (TinyStories); repository MIT",
            "5 TinyStories, each ending in <|endoftext|> (a test fixture)", "text",
            doc_separator="<|endoftext|>"),
        Dataset(
            "the-verdict", "the-verdict.txt",
            _raw(*_RASBT, "ch02/01_main-chapter-code/the-verdict.txt"),
            "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f", 20479,
            "public domain (Edith Wharton, 1908); repository Apache-2.0",
            "A 20 KB short story: a fast corpus for tests", "text"),
        Dataset(
            "instructions-1k", "instruction-data.json",
            _raw(*_RASBT, "ch07/01_main-chapter-code/instruction-data.json"),
            "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944", 203524,
            "Apache-2.0", "1,100 Alpaca-style {instruction, input, output} items (SFT)", "json"),
        Dataset(
            "preferences-1k", "instruction-data-with-preference.json",
            _raw(*_RASBT, "ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json"),
            "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e", 386968,
            "Apache-2.0 (answers generated with Llama 3.1 70B Instruct)",
            "The same 1,100 prompts with {chosen, rejected} answers (DPO)", "json"),
        Dataset(
            "gsm8k-test", "gsm8k_test.jsonl",
            _raw("openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c",
                 "grade_school_math/data/test.jsonl"),
            "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749738,
            "MIT", "GSM8K test: 1,319 {question, answer} lines, answers end in '#### N'", "jsonl"),
        Dataset(
            "arc-easy-test", "mc_arc_easy_test_nutcracker.jsonl",
            _raw(*_NUTCRACKER, "db/arc-easy/test.json"),
            "df89c8d6873908128ea39e0eb007bb1f0cc0e1c28f3877447da17b1c57372b4f", 861962,
            "CC-BY-SA-4.0", "ARC-Easy test: 2,376 multiple-choice science questions", "jsonl"),
        Dataset(
            "commonsenseqa-val", "mc_commonsenseqa_val_nutcracker.jsonl",
            _raw(*_NUTCRACKER, "db/commonsenseqa/test.json"),
            "6fecafb0b3e0c317af83c9cc88609f33ccdf7bc71a84ac3fdb00891a3855bb28", 321960,
            "MIT", "CommonsenseQA validation: 1,221 five-way multiple-choice questions", "jsonl"),
        Dataset(
            "hellaswag-100", "mc_hellaswag_train100_nutcracker.jsonl",
            _raw(*_NUTCRACKER, "db/hellaswag/dev.json"),
            "a2b3382d3ea2049c6a5fb122ebcfd0a01d5f4b399b7dd21201680f82557b9a70", 58283,
            "MIT", "100 HellaSwag items (4 endings each)", "jsonl"),
    ]
}
REGISTRY.update({h.name: h for h in HUB_FILES})  # type: ignore[misc]


def get_dataset(name: str) -> Dataset | HubFile:
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def cache_dir() -> Path:
    return Path(os.environ.get("MMLAB_DATA_DIR") or Path.home() / ".cache" / "mmlab" / "data")


def mirror_dir() -> Path | None:
    value = os.environ.get("MMLAB_DATA_MIRROR")
    return Path(value) if value else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(ds: Dataset, path: Path) -> None:
    """Raise DataError naming the file when its size or sha256 is not the registered one."""
    size = path.stat().st_size
    if size != ds.size:
        raise DataError(
            f"{path}: {size:,} bytes, expected {ds.size:,} for dataset {ds.name!r} (truncated or replaced?)"
        )
    digest = sha256_file(path)
    if digest != ds.sha256:
        raise DataError(f"{path}: sha256 {digest[:16]}... does not match {ds.sha256[:16]}... for dataset {ds.name!r}")


def dataset_path(name: str, download: bool = True) -> Path:
    """A verified local path of the dataset's file (cache -> mirror -> download)."""
    ds = get_dataset(name)
    if isinstance(ds, HubFile):
        from mmlab.data.hub import hub_path

        return hub_path(ds, download=download)
    cached = cache_dir() / ds.filename
    if cached.is_file():
        try:
            verify(ds, cached)
        except DataError as e:
            raise DataError(f"{e}; delete it or run `mmlab data download {name} --force`") from None
        return cached
    mirror = mirror_dir()
    if mirror is not None and (mirror / ds.filename).is_file():
        verify(ds, mirror / ds.filename)
        return mirror / ds.filename
    if not download:
        raise DataError(f"dataset {name!r} is not in the cache ({cached}) or the mirror ({mirror or 'unset'})")
    return fetch(ds)  # the mirror had no copy: download


def fetch(ds: Dataset | HubFile, force: bool = False, timeout: float = 30.0) -> Path:
    """Put a verified copy in the cache: from the mirror when it has a good one, else downloaded.
    Written to a temp file, verified, then renamed: never a half-written file."""
    if isinstance(ds, HubFile):
        from mmlab.data.hub import hub_path

        return hub_path(ds, force=force)
    target = cache_dir() / ds.filename
    if target.is_file() and not force:
        verify(ds, target)
        return target
    mirror = mirror_dir()
    source = mirror / ds.filename if mirror is not None and (mirror / ds.filename).is_file() else None
    if source is None and os.environ.get("MMLAB_OFFLINE"):
        raise DataError(f"dataset {ds.name!r} is not in the cache or the mirror and MMLAB_OFFLINE is set (no "
                        f"download from {ds.url}); set MMLAB_DATA_MIRROR to a folder holding {ds.filename}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{ds.filename}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        if source is not None:
            verify(ds, source)
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out)
        else:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(ds.url, timeout=timeout) as response:
                shutil.copyfileobj(response, out)
        verify(ds, tmp)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise DataError(
            f"cannot download dataset {ds.name!r} from {ds.url} ({reason}). Offline? Put {ds.filename} in a "
            f"folder and set MMLAB_DATA_MIRROR to it, or copy it into {target.parent}"
        ) from None
    except DataError:
        tmp.unlink(missing_ok=True)
        raise
    return target
