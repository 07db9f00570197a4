"""The README tells the truth: its Python blocks run, in order, and its commands are the ones CI uses."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BASH_BLOCKS = [b.strip() for b in re.findall(r"```bash\n(.*?)```", README, flags=re.S)]


@pytest.fixture(scope="module")
def readme_namespace():
    """Runs every ```python block of the README, in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    return namespace


def test_readme_python_blocks_run(readme_namespace):
    assert readme_namespace["logits"].shape == (1, 7, 11)


def test_readme_check_command_runs(readme_namespace):
    commands = [b for b in BASH_BLOCKS if b.startswith("python -m interop.check ")]
    assert len(commands) == 1, "README shows no interop.check command"
    run = subprocess.run(commands[0].split(), capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_ci_runs_the_readme_test_command():
    test_commands = [b for b in BASH_BLOCKS if "pytest" in b]
    assert len(test_commands) == 1, "README must show exactly one test command"
    assert test_commands[0] in (ROOT / ".ci" / "run").read_text()
    main_commands = [b for b in BASH_BLOCKS if "experiments/charseq.py" in b]
    assert len(main_commands) == 1, "README must show exactly one main-job command"


def test_ruff_clean():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_readme_is_a_front_page():
    """At most 250 lines; the rest lives in docs/, and every file the README links to exists."""
    assert len(README.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#\s]+)\)", README)
    assert links, "the README links to no docs page"
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
