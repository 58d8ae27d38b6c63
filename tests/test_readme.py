from conftest import ROOT

from pipeline.config import SECTIONS
from targets import TARGETS

README = (ROOT / "README.md").read_text()


def test_the_readme_lists_every_target():
    for name in TARGETS:
        assert f"| `{name}` |" in README, name


def test_the_readme_shows_every_command():
    from pipeline.cli import COMMANDS

    for name in COMMANDS:
        assert f"`python -m pipeline {name}" in README, name


def test_the_readme_config_reference_names_every_key():
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in README
        for key in cls.__dataclass_fields__:
            assert f"\n{key} = " in README, f"{section}.{key}"


def test_ci_runs_the_readme_test_command():
    assert "scripts/test.sh" in README
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
