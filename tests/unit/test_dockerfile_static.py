"""The Dockerfile, checked statically (no container engine runs here, so nothing is built): hadolint finds nothing,
the README's exact `docker build` commands use only build arguments, values and targets the Dockerfile declares,
its package pins are the Makefile's, and the runtime stage installs no build toolchain."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
TOOLCHAIN = ("build-essential", "g++", "gcc", "clang", "make")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[str] = field(default_factory=list)


@dataclass
class Dockerfile:
    args: dict[str, str | None]  # every ARG, global or in a stage, with its default
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)


def logical_lines(text: str) -> list[str]:
    """Lines with comments dropped and backslash continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def parse_dockerfile(text: str) -> Dockerfile:
    args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            words = rest.split()
            stages.append(Stage(name=words[2] if len(words) == 3 else "", base=words[0]))
        elif keyword.upper() == "ARG":
            name, equals, default = rest.partition("=")
            if equals or name not in args:  # a stage's bare `ARG NAME` keeps the global default
                args[name] = shlex.split(default)[0] if equals else None
        if stages:
            stages[-1].instructions.append(line)
    return Dockerfile(args, stages)


def readme_build_commands() -> list[list[str]]:
    """Every `docker build` command in the README's shell blocks, as argument lists."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    return [shlex.split(line) for block in blocks for line in logical_lines(block) if line.startswith("docker build")]


def build_options(command: list[str]) -> tuple[dict[str, str], list[str]]:
    """(build arguments, targets) of one `docker build` argument list; a flag this parser does not know fails."""
    build_args, targets, words = {}, [], iter(command[2:])
    for word in words:
        if word == "--build-arg":
            name, _, value = next(words).partition("=")
            build_args[name] = value
        elif word == "--target":
            targets.append(next(words))
        elif word in ("-t", "--tag", "-f", "--file"):
            next(words)
        else:
            assert word == ".", f"unexpected word {word!r} in {shlex.join(command)}"
    return build_args, targets


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    found = readme_build_commands()
    assert len(found) >= 2, "the README shows no CPU and GPU docker build commands"
    return found


def test_hadolint_finds_nothing():
    result = subprocess.run([str(HADOLINT), "--no-color", "--format", "json", str(DOCKERFILE)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, json.dumps(findings, indent=1) + result.stderr


def test_readme_builds_both_flavours(commands):
    flavours = {build_options(command)[0].get("FLAVOR") for command in commands}
    assert {"cpu", "gpu"} <= flavours


def test_readme_build_arguments_and_targets_exist(dockerfile, commands):
    stage_names = {stage.name for stage in dockerfile.stages}
    for command in commands:
        build_args, targets = build_options(command)
        assert set(build_args) <= set(dockerfile.args), (shlex.join(command), sorted(dockerfile.args))
        assert set(targets) <= stage_names, (shlex.join(command), sorted(stage_names))


def test_readme_values_pick_existing_stages(dockerfile, commands):
    """`FROM base-${FLAVOR}`-style stages: the value a command gives (or the default) names a declared stage."""
    stage_names = {stage.name for stage in dockerfile.stages}
    chosen_by = {m.group(2): m.group(1) for s in dockerfile.stages if (m := re.fullmatch(r"(.+-)\$\{(\w+)}", s.base))}
    assert {"FLAVOR", "VARIANTS"} <= set(chosen_by)
    for command in commands:
        build_args = build_options(command)[0]
        for arg, prefix in chosen_by.items():
            value = build_args.get(arg, dockerfile.args[arg])
            assert f"{prefix}{value}" in stage_names, (shlex.join(command), arg, value)


def test_readme_cpu_builds_pass_the_torch_index_from_the_environment(dockerfile, commands):
    for command in commands:
        build_args = build_options(command)[0]
        if build_args.get("FLAVOR", dockerfile.args["FLAVOR"]) == "cpu":
            assert build_args.get("TORCH_CPU_INDEX_URL", "").startswith("$"), shlex.join(command)


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*[:?]?=\s*(.+)$", (REPO / "Makefile").read_text(), flags=re.M)
    assert match, name
    return match.group(1).strip()


def test_package_pins_are_the_makefiles(dockerfile):
    assert dockerfile.args["DATA_PACKAGES"].split() == makefile_variable("DATA_PACKAGES").split()
    assert all("==" in package for package in dockerfile.args["DATA_PACKAGES"].split())
    assert dockerfile.args["UNWANTED_CPU"].split() == makefile_variable("UNWANTED").split()
    make_extras = [extra for extra in makefile_variable("EXTRAS").split(",") if extra != "dev"]
    assert dockerfile.args["CPU_EXTRAS"].split(",") == make_extras


def test_runtime_is_the_default_target_and_carries_no_build_toolchain(dockerfile):
    runtime = dockerfile.stages[-1]
    assert runtime.name == "runtime"
    assert any(line.startswith("COPY --from=builder /opt/venv") for line in runtime.instructions)
    for line in runtime.instructions:
        for match in re.finditer(r'(if \[ "\$FLAVOR" = gpu \]; then )?apt-get install ([^;&|]*)', line):
            packages = {word for word in match.group(2).split() if not word.startswith("-")}
            allowed = {"gcc"} if match.group(1) else set()  # Triton's C launcher on GPUs: the GPU flavour only
            assert not (packages & set(TOOLCHAIN)) - allowed, line


def test_builder_installs_the_toolchain_the_runtime_leaves_out(dockerfile):
    assert any("build-essential" in line for line in dockerfile.stage("builder").instructions)
    assert not set(TOOLCHAIN) & {word for line in dockerfile.stage("base").instructions for word in line.split()}
