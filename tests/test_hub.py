"""The hub registry entries, fetched by the real ``huggingface_hub`` code from a fake hub on 127.0.0.1.

The fake hub answers the two requests ``hf_hub_download`` makes (HEAD for the metadata, GET for the bytes) the
way huggingface.co does for a large file: ``X-Repo-Commit``, the content's sha256 as ``X-Linked-Etag`` and
its size as ``X-Linked-Size``, and ``X-Error-Code`` on a 404. Small files in MiniMind's and TinyStories'
real formats stand in for the GB-sized ones.
"""

import hashlib
import http.server
import json
import threading

import pytest

from mmlab.data import hub
from mmlab.data.registry import REGISTRY, DataError, HubFile, dataset_path, get_dataset


def _conversation(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def _files() -> dict[str, bytes]:
    """name -> bytes of a small file in the real format of each hub entry."""
    stories = "".join(f"Once upon a time a fox named {n} found a {t}. It was happy.\n<|endoftext|>\n"
                      for n in ("Tom", "Ann", "Max", "Sue") for t in ("ball", "hat", "cake", "box", "tree"))
    jsonl = lambda records: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()  # noqa: E731
    return {
        "tinystories-v2-valid": (stories * 20).encode(),
        "minimind-pretrain": jsonl({"text": f"<|im_start|>Fact {i}: water boils at 100 C.<|im_end|>"}
                                   for i in range(200)),
        "minimind-sft": jsonl({"conversations": _conversation(f"What is {i} + 1?", str(i + 1))} for i in range(60)),
        "minimind-dpo": jsonl({"chosen": _conversation(f"Is {i} even?", "Let me check."),
                               "rejected": _conversation(f"Is {i} even?", "No idea.")} for i in range(40)),
        "minimind-lora-identity": jsonl({"conversations": _conversation(f"Who are you ({i})?", "I am MiniMind.")}
                                        for i in range(30)),
    }


class FakeHub(http.server.ThreadingHTTPServer):
    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = {}  # (repo_id, revision, filename) -> (bytes served, sha256 published)
        for name, data in files.items():
            ds = get_dataset(name)
            self.files[(ds.repo_id, ds.revision, ds.filename)] = (data, hashlib.sha256(data).hexdigest())
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, body: bool) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 6 or parts[0] != "datasets" or parts[3] != "resolve":
            return self._error(404, "RepoNotFound")
        repo, revision, filename = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
        if not any(r == repo and v == revision for r, v, _ in self.server.files):
            return self._error(404, "RevisionNotFound" if any(r == repo for r, _, _ in self.server.files)
                               else "RepoNotFound")
        if (repo, revision, filename) not in self.server.files:
            return self._error(404, "EntryNotFound")
        data, sha = self.server.files[(repo, revision, filename)]
        self.send_response(200)
        for key, value in {"X-Repo-Commit": revision, "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                           "X-Linked-Size": str(len(data)), "Content-Length": str(len(data)),
                           "Content-Type": "application/octet-stream"}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, code: int, kind: str) -> None:
        self.send_response(code)
        self.send_header("X-Error-Code", kind)
        self.send_header("X-Error-Message", kind)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    server = FakeHub(_files())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MMLAB_DATA_MIRROR", raising=False)
    for var in ("MMLAB_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    yield server
    server.shutdown()
    server.server_close()


def test_download_is_verified_cached_and_locked(fake_hub, tmp_path):
    path = dataset_path("minimind-sft")
    assert path.read_bytes() == _files()["minimind-sft"]
    assert str(path).startswith(str(tmp_path / "cache" / "hub"))
    entry = hub.read_lock()[f"jingyaogong/minimind_dataset@{get_dataset('minimind-sft').revision}/sft_t2t_mini.jsonl"]
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["verified_against"] == "hub sha256"
    # a pinned commit already in the cache costs no request
    n = len(fake_hub.requests)
    assert dataset_path("minimind-sft") == path and len(fake_hub.requests) == n
    # a cached file that changes afterwards is caught by the lock
    path.write_bytes(path.read_bytes().replace(b"What", b"Whet", 1))
    with pytest.raises(DataError, match="does not match .* the sha256 the hub published"):
        dataset_path("minimind-sft")


def test_a_download_that_does_not_match_the_hub_sha256_is_refused(fake_hub):
    ds = get_dataset("minimind-dpo")
    data, sha = fake_hub.files[(ds.repo_id, ds.revision, ds.filename)]
    fake_hub.files[(ds.repo_id, ds.revision, ds.filename)] = (data[:-20] + b"x" * 20, sha)  # tampered, same size
    with pytest.raises(DataError, match="does not match .* the sha256 the hub published for "
                                        "jingyaogong/minimind_dataset/dpo.jsonl"):
        dataset_path("minimind-dpo")


def test_unknown_commit_offline_and_mirror(fake_hub, tmp_path, monkeypatch):
    ds = get_dataset("tinystories-v2-valid")
    monkeypatch.setitem(REGISTRY, ds.name, HubFile(**{**ds.__dict__, "revision": "0" * 40}))
    with pytest.raises(DataError, match=f"the pinned commit {'0' * 40} is not in roneneldan/TinyStories"):
        dataset_path("tinystories-v2-valid")
    monkeypatch.setitem(REGISTRY, ds.name, ds)
    monkeypatch.setenv("MMLAB_OFFLINE", "1")
    n = len(fake_hub.requests)
    with pytest.raises(DataError, match="MMLAB_OFFLINE / HF_HUB_OFFLINE is set; fetch it with `mmlab data download"):
        dataset_path("tinystories-v2-valid")
    assert len(fake_hub.requests) == n  # offline means no request at all
    # a mirror laid out as hf/<repo>/<file> is used without the hub
    mirror = tmp_path / "mirror"
    (mirror / "hf" / ds.repo_id).mkdir(parents=True)
    (mirror / "hf" / ds.repo_id / ds.filename).write_bytes(_files()[ds.name])
    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(mirror))
    mirrored = mirror / "hf" / ds.repo_id / ds.filename
    assert dataset_path("tinystories-v2-valid") == mirrored
    assert len(fake_hub.requests) == n
    # the mirror's copy is locked on first use: a later edit is caught
    mirrored.write_bytes(mirrored.read_bytes() + b"One more story.\n")
    with pytest.raises(DataError, match="differs from .* recorded in .*hub-lock.json"):
        dataset_path("tinystories-v2-valid")


def test_stages_train_on_hub_names(fake_hub, tmp_path):
    """`--data <hub name>`: pretraining streams the downloaded corpus into shards; SFT, LoRA and DPO read
    MiniMind's record formats from their downloads."""
    from mmlab.config import get_preset
    from mmlab.model.lora import LoRAConfig
    from mmlab.train.config import TrainConfig
    from mmlab.train.dpo import dpo
    from mmlab.train.pretrain import pretrain
    from mmlab.train.sft import sft

    def cfg(name, **kw):
        return TrainConfig(out_dir=str(tmp_path / name), **{"max_iters": 3, "batch_size": 4, "eval_interval": 3,
                                                            "eval_batches": 1, "warmup_iters": 1,
                                                            "progress": False, **kw})

    model = get_preset("nano", max_seq_len=64, vocab_size=300)
    for corpus in ("tinystories-v2-valid", "minimind-pretrain"):
        result = pretrain(model, corpus, cfg(f"pre-{corpus}"), tokenizer="bpe")
        assert result.steps == 3
    assert len(list((tmp_path / "cache").glob("shards/*/manifest.json"))) == 2  # both were streamed into shards
    base = tmp_path / "pre-minimind-pretrain"
    assert sft(base, "minimind-sft", cfg("sft"), evaluate=False).result.steps == 3
    assert sft(tmp_path / "sft", "minimind-lora-identity", cfg("lora"), evaluate=False,
               lora=LoRAConfig(rank=2, alpha=4)).result.steps == 3
    assert dpo(tmp_path / "sft", "minimind-dpo", cfg("dpo"))["steps"] == 3
