"""The README and the documentation site: the site builds with every link and anchor checked, the README's links,
commands and Python example point at things that exist, and the public names it uses are public."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import chestxray

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_docs_site_builds_strictly_with_links_checked(tmp_path: Path) -> None:
    """`mkdocs build --strict` fails on a broken internal link or anchor, a missing page, a bad API reference."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("read_folder", "prepare_dataset", "TrainConfig", "evaluate_run", "predict_images"):
        assert f'id="chestxray.' in api and name in api, name
    # the README's demo-figures section is included in the demo page, not copied
    assert "nih-chestxray14 (macro over 14)" in (site / "demo" / "index.html").read_text(encoding="utf-8")


def _nav_hook():
    spec = importlib.util.spec_from_file_location("nav_hook", ROOT / "docs" / "hooks" / "nav.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nav_hook_drops_unwritten_pages_and_adds_unlisted_ones(tmp_path: Path) -> None:
    (tmp_path / "index.md").write_text("# Home\n")
    (tmp_path / "training.md").write_text("# Training\n")
    (tmp_path / "surprise.md").write_text("# A page nobody listed\n")
    (tmp_path / "hooks").mkdir()
    config = {"docs_dir": str(tmp_path), "nav": [{"Home": "index.md"},
                                                  {"Guide": [{"Training": "training.md"}, {"Later": "later.md"}]},
                                                  {"Reference": [{"Not yet": "not-yet.md"}]}]}
    nav = _nav_hook().on_config(config)["nav"]
    assert nav == [{"Home": "index.md"}, {"Guide": [{"Training": "training.md"}]}, {"More": ["surprise.md"]}]


def test_readme_starts_with_the_two_commands_and_ci_runs_its_test_command() -> None:
    first = _code_blocks(README, "bash")[0]
    assert README.index("```bash") < README.index("\n## "), "the two commands come before any section"
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, flags=re.M)


def test_readme_links_point_at_files_that_exist() -> None:
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    assert targets
    for target in targets:
        if "://" in target or target.startswith("#"):
            continue
        path = ROOT / target.split("#")[0]
        assert path.exists(), f"README links to {target}, which does not exist"


def test_readme_python_uses_public_names_with_their_signatures() -> None:
    """Each call in the README's Python example binds to the public function's signature (nothing internal)."""
    (code,) = _code_blocks(README, "python")
    tree = ast.parse(code)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module == "chestxray", f"README imports from {node.module}: use public names"
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            raise AssertionError(f"README imports {[a.name for a in node.names]}")
    assert imported <= set(chestxray.__all__)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert {c.func.id for c in calls} >= imported
    for call in calls:
        target = getattr(chestxray, call.func.id)
        args = [object()] * len(call.args)
        kwargs = {k.arg: object() for k in call.keywords}
        inspect.signature(target).bind(*args, **kwargs)  # raises TypeError on an unknown or missing argument


def test_cli_page_lists_every_command() -> None:
    from typer.main import get_group

    from chestxray.cli import app

    from chestxray.cli import ORDER

    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `([a-z-]+)", page, flags=re.M)
    assert sorted(ORDER) == sorted(get_group(app).commands), "give every command its place in cli.COMMANDS"
    assert listed == ORDER, "docs/cli.md lists the commands in the order of chestxray --help"


def test_python_examples_in_docs_import_only_public_names() -> None:
    """Issue 23: public Python examples use only public names (`from chestxray import …`, listed in __all__)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        for code in _code_blocks(page.read_text(encoding="utf-8"), "python"):
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chestxray"):
                    where = f"{page.relative_to(ROOT)}: from {node.module} import …"
                    assert node.module == "chestxray", f"{where}: import it from chestxray (make it public there)"
                    assert {a.name for a in node.names} <= set(chestxray.__all__), where
                elif isinstance(node, ast.Import):
                    assert not any(a.name.startswith("chestxray.") for a in node.names), page


def _command_lines(text: str) -> list[str]:
    """`chestxray …` lines of the bash blocks, continuation lines joined and comments dropped."""
    found = []
    for block in _code_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            for part in line.split("&&"):
                part = part.strip().removeprefix("nice ").strip()
                if part.count('"') % 2:  # the end of a quoted shell string: sbatch --wrap "… && chestxray …"
                    part = part.rstrip('"')
                if part.startswith("chestxray "):
                    found.append(part)
    return found


def test_documented_commands_parse_with_the_real_command_line() -> None:
    """Every `chestxray …` line in the README's and the docs' bash blocks names real commands and options with valid
    values (parsed by the command line itself, nothing run)."""
    import shlex

    import click
    from typer.main import get_group

    from chestxray.cli import app

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    lines = [(page, line) for page in pages for line in _command_lines(page.read_text(encoding="utf-8"))]
    assert len(lines) > 20
    problems = []
    for page, line in lines:
        try:
            args, command, ctx = shlex.split(line)[1:], get_group(app), None
            ctx = click.Context(command, info_name="chestxray")
            while isinstance(command, click.Group) and args:
                name = args.pop(0)
                sub = command.get_command(ctx, name)
                if sub is None:
                    raise click.UsageError(f"no command {name!r}")
                command, ctx = sub, click.Context(sub, info_name=name, parent=ctx)
            command.make_context(command.name, args, parent=ctx.parent)
        except (click.ClickException, ValueError) as exc:
            message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
            problems.append(f"{page.name}: {line}\n    {message}")
    assert not problems, "\n".join(problems)
