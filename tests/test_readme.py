"""The README's set-up commands and CI stay in sync."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = _bash_blocks(setup)
    assert len(blocks) == 2
    main_job, test_cmd = blocks
    for cmd in blocks:
        assert "pip install torch==2.13.0 && pip install -e" in cmd
    assert main_job.endswith("geomtools demo")
    assert test_cmd.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"^TEST_COMMAND='(.*)'$", ci, flags=re.M)
    assert match is not None
    assert match.group(1) == test_cmd
    assert 'bash -c "$TEST_COMMAND"' in ci
