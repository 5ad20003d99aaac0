"""The ``mmlab`` command. Subcommands parse flags and call library functions; no logic lives here.

Errors a user can fix (a bad flag, an unknown preset, a malformed config file) are printed as one
line on stderr with exit status 2 (usage) or 1 (bad input), never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mmlab import __version__
from mmlab.errors import MMLabError


def _cmd_info(args: argparse.Namespace) -> int:
    from mmlab.device import environment

    env = environment()
    if args.json:
        print(json.dumps(env, indent=2))
    else:
        width = max(map(len, env))
        for key, value in env.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _load_config(args: argparse.Namespace):
    from mmlab.config import ModelConfig, get_preset

    if args.config:
        return ModelConfig.from_json(args.config)
    return get_preset(args.preset)


def _cmd_model_summary(args: argparse.Namespace) -> int:
    from mmlab.model.summary import format_summary, summarize

    summary = summarize(_load_config(args), context=args.context)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _cmd_model_presets(args: argparse.Namespace) -> int:
    from mmlab.config import PRESETS
    from mmlab.model.summary import param_breakdown

    for name, cfg in PRESETS.items():
        n = sum(param_breakdown(cfg).values())
        print(f"{name:<18}{n:>14,} params  {cfg.n_layers} layers x {cfg.hidden_size} hidden, "
              f"{cfg.n_heads}/{cfg.kv_heads} heads, vocab {cfg.vocab_size}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmlab",
        description="MiniMind Lab: build, train and measure a small Llama-style language model.",
    )
    parser.add_argument("--version", action="version", version=f"mmlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = sub.add_parser("info", help="versions, device, threads and bf16 support of this machine",
                          description="Print versions, the auto-selected device, threads and bf16 support.")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_cmd_info)

    model = sub.add_parser("model", help="inspect model configurations",
                           description="Inspect model configurations and presets.")
    model_sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    summary = model_sub.add_parser(
        "summary", help="parameters per component, FLOPs per token, KV-cache bytes per token",
        description="Parameters per component, forward FLOPs per token and KV-cache bytes per token.")
    source = summary.add_mutually_exclusive_group()
    source.add_argument("--preset", default="nano", help="a named preset (see `mmlab model presets`)")
    source.add_argument("--config", help="a ModelConfig JSON file instead of a preset")
    summary.add_argument("--context", type=_positive_int, default=None,
                         help="context length for the attention FLOPs (default: the config's max_seq_len)")
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")
    summary.set_defaults(func=_cmd_model_summary)
    presets = model_sub.add_parser("presets", help="list the named presets",
                                   description="List the named model presets with their sizes.")
    presets.set_defaults(func=_cmd_model_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints one line and exits with 2
    try:
        return args.func(args)
    except MMLabError as e:
        print(f"mmlab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mmlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
