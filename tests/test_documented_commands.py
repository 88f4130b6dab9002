"""Every ``langseg`` command shown in the README, docs/ and the configs' headers parses as written.

Commands that train for minutes are checked with ``--print_config`` (the whole config is parsed and
validated, nothing runs); the short end-to-end runs (fit, test, predict, the extension example) are in
tests/test_cli.py and tests/test_docs.py.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from langseg.cli import LIGHTNING_COMMANDS, main, predict_images_parser, tools_parser

REPO = Path(__file__).resolve().parent.parent


def documented_commands() -> list[tuple[str, str]]:
    """``(source file, command)`` for every ``langseg ...`` line in a bash block or a config header."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.startswith(("langseg ", "pip install -e \".[test]\" && langseg ")):
                    found.append((path.name, line.split("&& ")[-1]))
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        text = path.read_text().replace("\\\n#", " ")
        found += [(path.name, m) for m in re.findall(r"^#\s+(langseg .*)$", text, re.M)]
    return [(src, cmd.split("  #")[0].strip()) for src, cmd in found]


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) > 20 and any(cmd.startswith("langseg fit") for _, cmd in COMMANDS)


@pytest.mark.parametrize("source, command", COMMANDS, ids=[f"{s}: {c[:60]}" for s, c in COMMANDS])
def test_documented_command_parses(source, command, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    argv = shlex.split(command)[1:]
    if argv[0] == "predict" and "--image" in argv:  # run end to end in tests/test_cli_faults.py
        opts = predict_images_parser().parse_args(argv[1:])
        assert opts.ckpt_path.endswith(".ckpt") and opts.image and opts.text
    elif argv[0] in LIGHTNING_COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([*argv, "--print_config"])
        assert done.value.code in (0, None), capsys.readouterr().err[-2000:]
        assert "model:" in capsys.readouterr().out
    else:
        opts = tools_parser().parse_args(argv)
        for config in getattr(opts, "configs", None) or []:
            assert (REPO / config).is_file(), config
        if argv[0] == "demo":  # served end to end in tests/test_demo.py
            assert opts.ckpt_path is None or opts.ckpt_path.endswith(".ckpt")
        if argv[0] == "list-models":
            main(argv)
            assert "unet" in capsys.readouterr().out.split()
