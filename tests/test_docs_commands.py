"""Every ``kdlight`` command shown in the README and the docs/ pages parses against the code.

Each command runs through the console script's entry point with ``--print_config`` (parsing only:
nothing is built or trained), so a renamed argument, class or recipe breaks this test, not a reader.
"""

import re
import shlex
import sys
from pathlib import Path

import pytest

from kdlight.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: placeholders the docs use for "your recipe", not files of the repository
PLACEHOLDERS = {"recipe.yaml"}


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every ``kdlight fit|validate|test|predict`` line in a bash block or inline."""
    found = []
    for page in PAGES:
        text = page.read_text()
        blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
        inline = re.findall(r"`(kdlight (?:fit|validate|test|predict) [^`]+)`", text)
        for line in [*"\n".join(blocks).splitlines(), *inline]:
            command = line.split("#", 1)[0].strip()
            if re.match(r"kdlight (fit|validate|test|predict)\b", command):
                found.append((page.relative_to(ROOT).as_posix(), command))
    return found


def test_the_docs_show_commands():
    pages = {page for page, _ in shown_commands()}
    assert "README.md" in pages and len(pages) >= 4, pages


@pytest.mark.parametrize(("page", "command"), shown_commands(), ids=lambda v: v if "/" in v or " " not in v else None)
def test_command_parses(page, command, tmp_path, monkeypatch, capsys):
    args = shlex.split(command)[1:]
    if any(a in PLACEHOLDERS for a in args):
        pytest.skip(f"{page}: placeholder recipe")
    for i, arg in enumerate(args):
        if arg == "--config":
            assert (ROOT / args[i + 1]).is_file(), f"{page}: {args[i + 1]} does not exist"
    if "my_kd.LogitMatchingKD" in args:  # the README's variant: its code block is the module
        from test_readme_example import readme_example

        (tmp_path / "my_kd.py").write_text(readme_example())
        monkeypatch.syspath_prepend(str(tmp_path))
        sys.modules.pop("my_kd", None)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["kdlight"])
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), f"{page}: `{command}` does not parse:\n{out.err[-2000:]}"
    assert "model:" in out.out and "trainer:" in out.out
