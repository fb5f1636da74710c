"""`quantserve quantize …`: build, evaluate, list, push and pull a model's variants."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantize.errors import QuantizeError
from quantserve.config import QuantserveConfig, load_config
from quantserve.constants import DEFAULT_CONFIG_PATH


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    quantize = subparsers.add_parser("quantize", help="build, evaluate, list, push and pull quantized variants")
    commands = quantize.add_subparsers(dest="quantize_command", required=True, metavar="COMMAND")

    base = commands.add_parser("base", help="convert the model source into a Hugging Face folder")
    build = commands.add_parser("build", help="build variants (skips those whose inputs are unchanged)")
    evaluate = commands.add_parser("eval", help="(re)compute perplexity and greedy agreement of built variants")
    listing = commands.add_parser("list", help="print the variant table from the manifest")
    for parser in (base, build, evaluate, listing):
        _add_model_options(parser)
    for parser in (build, evaluate):
        parser.add_argument("--variants", default="all", help="comma-separated variant names, or 'all'")
    build.add_argument("--force", action="store_true", help="rebuild even when inputs are unchanged")
    base.set_defaults(handler=_run_base)
    build.set_defaults(handler=_run_build)
    evaluate.set_defaults(handler=_run_eval)
    listing.set_defaults(handler=_run_list)
    _add_transfer_commands(commands)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH),
                        help="quantserve config file (default: %(default)s)")
    parser.add_argument("--model", metavar="PATH",
                        help="a local Hugging Face causal-LM folder (or .gguf) to use instead")
    parser.add_argument("--name", help="model name for --model (default: the folder name)")
    parser.add_argument("--models", default="all", help="comma-separated model names from the config, or 'all'")


def _add_transfer_commands(commands: argparse._SubParsersAction) -> None:
    push = commands.add_parser("push", help="upload built variants and their manifest to S3-compatible storage")
    pull = commands.add_parser("pull", help="download variants, check every sha256, then place them in models_dir")
    for parser in (push, pull):
        parser.add_argument("uri", metavar="URI", help="s3://BUCKET[/PREFIX]; files go to PREFIX/<model>/<variant>/. "
                            "Credentials and endpoint from the environment (AWS_*, AWS_ENDPOINT_URL)")
        parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH),
                            help="quantserve config file: models, variants and models_dir (default: %(default)s)")
        parser.add_argument("--models", default="all", help="comma-separated model names from the config, or 'all'")
        parser.add_argument("--variants", default="all", help="comma-separated variant names, or 'all'")
    push.set_defaults(handler=_run_push)
    pull.set_defaults(handler=_run_pull)


def selected_config(args: argparse.Namespace) -> QuantserveConfig:
    """The config, with --model swapped in for the chat model when given."""
    from quantize.plan import config_for_local_model

    config = load_config(args.config)
    if args.model:
        return config_for_local_model(config, Path(args.model), args.name)
    return config


def _selected_models(args: argparse.Namespace, config: QuantserveConfig) -> list:
    if args.models == "all":
        return list(config.models)
    wanted = [name.strip() for name in args.models.split(",") if name.strip()]
    known = [m.name for m in config.models]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise QuantizeError(f"unknown model {', '.join(unknown)}; the config has {', '.join(known)}")
    return [config.model(name) for name in wanted]


def _run_base(args: argparse.Namespace) -> None:
    from quantize.build import prepare_base

    config = selected_config(args)
    for model in _selected_models(args, config):
        folder = prepare_base(config, model)
        print(f"{model.name}: base model in {folder}")


def _run_build(args: argparse.Namespace) -> None:
    from quantize.build import build_model
    from quantize.table import render_table

    config = selected_config(args)
    for model in _selected_models(args, config):
        manifest = build_model(config, model, args.variants, force=args.force)
        print(render_table(manifest))


def _run_eval(args: argparse.Namespace) -> None:
    from quantize.build import evaluate_model
    from quantize.table import render_table

    config = selected_config(args)
    for model in _selected_models(args, config):
        print(render_table(evaluate_model(config, model, args.variants)))


def _run_list(args: argparse.Namespace) -> None:
    from quantize.table import render_table
    from quantserve.manifest import read_manifest

    config = selected_config(args)
    for model in _selected_models(args, config):
        manifest = read_manifest(Path(config.models_dir) / model.name)
        if manifest is None:
            print(f"{model.name}: nothing built yet; run `quantserve quantize build`")
        else:
            print(render_table(manifest))


def _run_push(args: argparse.Namespace) -> None:
    from quantize.storage import push_model  # boto3 takes a while to import: only for push and pull

    _transfer(args, push_model, "pushed", "to")


def _run_pull(args: argparse.Namespace) -> None:
    from quantize.storage import pull_model

    _transfer(args, pull_model, "pulled", "from")


def _transfer(args: argparse.Namespace, move, verb: str, preposition: str) -> None:
    from quantize.object_store import ObjectLocation, ObjectStore

    location = ObjectLocation.parse(args.uri)
    config = load_config(args.config)
    models = _selected_models(args, config)
    store = ObjectStore(location)
    for model in models:
        done = move(config, model, args.variants, store)
        if done.skipped:
            print(f"{model.name}: up to date here, skipped: {', '.join(done.skipped)}", flush=True)
        if done.variants:
            print(f"{model.name}: {verb} {', '.join(done.variants)} ({done.bytes / 1e6:.1f} MB in "
                  f"{done.seconds:.1f} s) {preposition} {location.uri(model.name)}", flush=True)
