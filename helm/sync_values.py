"""Copy quantserve.yaml into the Helm chart, so the chart serves the same config as `quantserve serve`.

Writes three generated parts of helm/quantserve/:
- values.yaml: the block between `# BEGIN quantserve.yaml` and `# END quantserve.yaml` becomes `quantserve:` followed
  by quantserve.yaml, indented (comments kept);
- values-gpu.yaml: the same block with quantserve.gpu.yaml (the GPU profile replaces the whole `quantserve:` map);
- values.schema.json: `$defs` becomes the JSON schema of quantserve.config.QuantserveConfig, and the allowed
  `serve.variants` become the config's `model:variant` ids.

    python helm/sync_values.py            # rewrite both files
    python helm/sync_values.py --check    # exit 1 if either is out of date (make helm-lint runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quantserve.config import QuantserveConfig, load_config
from quantserve.constants import DEFAULT_CONFIG_PATH

REPO = Path(__file__).resolve().parent.parent

CHART = REPO / "helm" / "quantserve"
GPU_CONFIG = REPO / "quantserve.gpu.yaml"
BEGIN, END = f"# BEGIN {DEFAULT_CONFIG_PATH}\n", f"# END {DEFAULT_CONFIG_PATH}\n"


def values_text(values: str, config_text: str) -> str:
    """values.yaml with its generated block replaced by `quantserve:` and the indented config."""
    head, found, rest = values.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"values.yaml lacks the {BEGIN.strip()!r} / {END.strip()!r} markers")
    body = "".join(f"  {line}" if line.strip() else line for line in config_text.splitlines(keepends=True))
    return f"{head}{BEGIN}quantserve:\n{body}{END}{tail}"


def variant_ids(config: QuantserveConfig) -> list[str]:
    return [f"{model.name}:{variant.name}" for model in config.models for variant in model.variants]


def config_schema() -> dict:
    """QuantserveConfig's JSON schema as `$defs`, the root model under its own name."""
    schema = QuantserveConfig.model_json_schema()
    defs = schema.pop("$defs", {})
    return {**defs, "QuantserveConfig": schema}


def schema_text(schema: str, config: QuantserveConfig) -> str:
    data = json.loads(schema)
    data["$defs"] = config_schema()
    data["properties"]["serve"]["properties"]["variants"]["items"]["enum"] = variant_ids(config)
    return json.dumps(data, indent=2) + "\n"


def sync(config_path: Path, *, check: bool, gpu_config_path: Path = GPU_CONFIG) -> list[str]:
    """Rewrite (or with check, only compare) the generated parts; return the files that were out of date."""
    config = load_config(config_path)
    load_config(gpu_config_path)  # copy only a valid config
    targets = {
        CHART / "values.yaml": lambda text: values_text(text, config_path.read_text()),
        CHART / "values-gpu.yaml": lambda text: values_text(text, gpu_config_path.read_text()),
        CHART / "values.schema.json": lambda text: schema_text(text, config),
    }
    stale = []
    for path, render in targets.items():
        current = path.read_text()
        wanted = render(current)
        if wanted != current:
            stale.append(str(path.relative_to(REPO)))
            if not check:
                path.write_text(wanted)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / DEFAULT_CONFIG_PATH, help="config to copy in")
    parser.add_argument("--check", action="store_true", help="only report whether the chart is up to date")
    args = parser.parse_args(argv)
    stale = sync(args.config, check=args.check)
    if args.check and stale:
        print(
            f"out of date with {args.config.name}: {', '.join(stale)}; run python helm/sync_values.py", file=sys.stderr
        )
        return 1
    print("\n".join(f"wrote {path}" for path in stale) or "helm chart already in sync")
    return 0


if __name__ == "__main__":
    sys.exit(main())
