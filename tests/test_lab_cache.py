"""The lessons' shared checkpoints are built once even when two experiments ask for one at the same time."""

import threading
import time
import types

from mmlab.lab import posttrain


def test_concurrent_builds_of_one_checkpoint_train_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLAB_LAB_CACHE", str(tmp_path))
    exp = types.SimpleNamespace(mode="full", log=lambda msg: None)
    calls = []

    def train(out):
        calls.append(out)
        time.sleep(0.3)  # long enough for the other thread to arrive while this one builds
        out.mkdir(parents=True)
        (out / "weights").write_text("w")

    results = []
    threads = [threading.Thread(target=lambda: results.append(posttrain._build(exp, "x", {"a": 1}, train)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1
    assert (results[0] / "weights").read_text() == "w" and (results[0] / posttrain.DONE).is_file()
