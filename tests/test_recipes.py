"""Recipes: the one-command tiny-model runs. A short run goes through every step (train, whole-split
evaluation, bits per byte, samples, results JSON); committed results must come from the current recipe."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ENV
from mmlab.data.registry import get_dataset
from mmlab.errors import MMLabError
from mmlab.recipes import RECIPES, get_recipe, recipe_overrides, run_recipe
from mmlab.train.evaluate import summed_loss

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "modules" / "03-training" / "09-tiny-model"


def test_evaluate_split_predicts_every_token_once():
    class Uniform(torch.nn.Module):
        def forward(self, x):
            return type("Out", (), {"logits": torch.zeros(*x.shape, 7)})()

    tokens = torch.randint(0, 7, (1000,))
    for block in (16, 64, 999, 2000):
        nats, n = summed_loss(Uniform(), tokens, block, batch_size=5)
        assert n == 999
        assert nats / n == pytest.approx(math.log(7))


def test_fingerprint_tracks_what_shapes_the_run():
    r = get_recipe("shakespeare-char")
    changed = type(r)(**{**r.__dict__, "train": {**r.train, "lr": 1e-3}})
    assert changed.fingerprint() != r.fingerprint()
    renamed = type(r)(**{**r.__dict__, "summary": "other words"})
    assert renamed.fingerprint() == r.fingerprint()


def test_unknown_recipe_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "mmlab.cli", "recipe", "run", "nope"], capture_output=True,
                          text=True, env=ENV)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"mmlab: error: unknown recipe 'nope'; available: {', '.join(RECIPES)}"]


def _generated_tinystories_mirror(root):
    """The full TinyStories' two files, laid out as the mirror holds hub files (hf/<repo>/<file>), in their real
    format (stories separated by <|endoftext|>) but generated and small."""
    from mmlab.data.synthetic import story_corpus

    for name, seed in (("tinystories-v2-train", 0), ("tinystories-v2-valid", 1)):
        ds = get_dataset(name)
        (root / "hf" / ds.repo_id).mkdir(parents=True, exist_ok=True)
        stories = story_corpus(n_chars=300_000 if seed == 0 else 60_000, seed=seed)
        (root / "hf" / ds.repo_id / ds.filename).write_text("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n")
    return root


@pytest.mark.parametrize("name", list(RECIPES))
def test_short_recipe_run_measures_and_samples(name, tmp_path, mirror_file, monkeypatch):
    recipe = get_recipe(name)
    if recipe.eval_data:  # the streamed recipe's code path, on generated files of the full corpus's format
        monkeypatch.setenv("MMLAB_DATA_MIRROR", str(_generated_tinystories_mirror(tmp_path / "mirror")))
    else:
        path = mirror_file(get_dataset(recipe.data).filename)
        monkeypatch.setenv("MMLAB_DATA_MIRROR", str(path.parent))
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path / "cache"))
    # fp32 and no compilation keep the test fast; the recipes' own bf16 + compile path is what
    # test_train's compile test and the committed full runs exercise
    small = {"val_fraction": 0.05} if recipe.eval_data else {}  # a small generated file needs a larger val share
    # and small batches: the recipes' 32 x 256-token batches and 20 eval batches would make the training loop's
    # own evaluation 3/4 of this test's time, for a code path that 4 rows and 2 batches exercise as well
    small |= {"batch_size": 4, "eval_batches": 2}
    result = run_recipe(name, str(tmp_path / "run"), max_iters=4, dtype="fp32", compile=False, **small)
    assert result["mode"] == "smoke"
    assert result["metrics"]["evaluated_step"] <= 4
    m = result["metrics"]
    assert 0 < m["val_loss"] < math.log(m["vocab_size"]) + 1
    assert m["val_bits_per_byte"] == pytest.approx(m["val_loss"] / math.log(2) * m["val_tokens"] / m["val_bytes"])
    assert len(m["samples"]) == len(get_recipe(name).prompts)
    assert all(s["text"].startswith(s["prompt"]) for s in m["samples"])
    assert (tmp_path / "run" / f"recipe_{name}.json").is_file()
    assert (tmp_path / "run" / f"recipe_{name}.png").is_file()
    assert m["weights"] in ("best", "ckpt") and "whole val split" not in result["findings"][0]["claim"]
    if recipe.eval_data:  # streamed into shards, measured on the other file (refusal and overwrite: as below)
        assert list((tmp_path / "cache").glob("shards/*/manifest.json")) and m["epochs"] is not None
        return
    # an existing run is refused at once (before the tokenizer is trained), naming --overwrite
    with pytest.raises(MMLabError, match="already holds a run .*pass --overwrite"):
        run_recipe(name, str(tmp_path / "run"), max_iters=2, dtype="fp32", compile=False)
    # a run folder with recipe results can be overwritten (they are the recipe's own files)
    run_recipe(name, str(tmp_path / "run"), max_iters=2, overwrite=True, dtype="fp32", compile=False, **small)


def test_a_run_is_the_recipe_only_when_nothing_differs():
    recipe = get_recipe("shakespeare-char")
    steps = recipe.train["max_iters"]
    assert recipe_overrides(recipe) == {}
    assert recipe_overrides(recipe, max_iters=steps) == {}  # the recipe's own length is the recipe
    assert recipe_overrides(recipe, dtype=recipe.train.get("dtype")) == {}
    assert set(recipe_overrides(recipe, max_iters=steps // 2)) >= {"max_iters"}
    assert set(recipe_overrides(recipe, max_iters=2 * steps)) >= {"max_iters"}  # longer is not the recipe either
    assert recipe_overrides(recipe, dtype="fp32" if recipe.train.get("dtype") != "fp32" else "bf16")


@pytest.mark.parametrize("name", list(RECIPES))
def test_committed_recipe_results_come_from_the_current_recipe(name):
    path = PROJECT / "results" / f"recipe_{name}.json"
    if get_recipe(name).needs and not path.is_file():
        pytest.skip(f"recipe {name} needs {get_recipe(name).needs}: not on this project's machines, so no results "
                    "are committed (its code path: test_short_recipe_run_measures_and_samples)")
    assert path.is_file(), f"run `mmlab recipe run {name} --results-dir {path.parent.relative_to(ROOT)}`"
    result = json.loads(path.read_text())
    assert result["mode"] == "full"
    assert result["config"]["fingerprint"] == get_recipe(name).fingerprint(), (
        f"{path} was produced by another version of the recipe; run it again")
    for figure in result["figures"]:
        assert (path.parent / figure).is_file()
