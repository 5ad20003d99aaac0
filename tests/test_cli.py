"""The `mmlab` command: every subcommand has --help; bad input is one clear line, not a traceback."""

import json
import subprocess
import sys

import pytest

from mmlab.cli import build_parser, main


def run_cli(*args):
    """Run the CLI in a fresh interpreter (``python -m mmlab.cli``), as a separate process would."""
    return subprocess.run([sys.executable, "-m", "mmlab.cli", *args], capture_output=True, text=True, timeout=120)


def all_command_paths(parser, prefix=()):
    """Every subcommand path, found from the parser itself so a new command cannot skip the check."""
    yield prefix
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield from all_command_paths(sub, (*prefix, name))


@pytest.mark.parametrize("path", list(all_command_paths(build_parser())), ids=" ".join)
def test_every_command_has_help(path, capsys):
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == 0
    assert "usage: mmlab" in capsys.readouterr().out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"torch", "device", "torch_threads", "bf16_cpu"} <= set(info)


def test_model_summary_for_minimind_26m(capsys):
    assert main(["model", "summary", "--preset", "minimind-26m"]) == 0
    out = capsys.readouterr().out
    assert "25,829,888" in out and "KV cache/token: 4,096 B in bf16" in out
    assert main(["model", "summary", "--preset", "minimind-26m", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"]["total"] == 25_829_888


def test_model_summary_from_a_config_file(tmp_path, capsys):
    from mmlab.config import get_preset

    path = tmp_path / "cfg.json"
    get_preset("nano", n_layers=3).to_json(path)
    assert main(["model", "summary", "--config", str(path)]) == 0
    assert "3 layers" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["model", "summary", "--preset", "gpt5"], 1, "unknown preset 'gpt5'"),
        (["model", "summary", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["model", "summary", "--context", "-3"], 2, "expected a positive integer"),
        (["model", "summary", "--config", "missing.json"], 1, "config file not found: missing.json"),
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        ([], 2, "required: COMMAND"),
        (["train", "pretrain", "--out", "unused", "--set", "n_kv_heads"], 1, "expected FIELD=VALUE"),
        (["train", "pretrain", "--out", "unused", "--set", "bogus=1"], 1, "unknown ModelConfig field(s): bogus"),
        (["train", "pretrain", "--out", "unused", "--set", "n_kv_heads=3"], 1, "not divisible by n_kv_heads=3"),
        (["train", "pretrain", "--out", "unused", "--set", "causal=maybe"], 1, "causal"),
    ],
)
def test_bad_input_is_one_clear_line(args, code, fragment):
    result = run_cli(*args)
    assert result.returncode == code
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("mmlab")


def test_invalid_config_file_names_the_file_and_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"hidden_size": 96, "n_heads": 8, "n_kv_heads": 3}))
    result = run_cli("model", "summary", "--config", str(path))
    assert result.returncode == 1
    assert "bad.json: n_heads=8 is not divisible by n_kv_heads=3" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_threads_sets_torch_threads_before_serving(monkeypatch):
    import torch

    pytest.importorskip("fastapi")
    from mmlab.infer import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda ckpt, cfg, device: seen.update(threads=torch.get_num_threads(),
                                                                                 batch=cfg.batch))
    before = torch.get_num_threads()
    try:
        assert main(["serve", "--ckpt", "runs/x", "--threads", "1", "--batch", "4"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == {"threads": 1, "batch": 4}
