"""environment.yml and pyproject.toml describe the same installation."""
import re
import tomllib

import yaml

from support import ROOT


def test_environment_yml_installs_this_package_with_existing_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "conda-forge" in env["channels"]
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    version = tuple(int(p) for p in python.split("=")[1].split("."))
    low, high = re.match(r">=(\d+\.\d+),<(\d+\.\d+)", project["requires-python"]).groups()
    assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split(".")))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    (line,) = [p for p in pip if p.startswith("-e")]
    extras = re.search(r"\[(.*)\]", line).group(1).split(",")
    assert set(extras) == set(project["optional-dependencies"]) == {"test", "torch"}


def test_torch_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["torch"] == ["torch==2.13.0"]
