"""The README, ARCHITECTURE.md and docs/ stay true: every repository path they name exists,
every relative link (and its #anchor) resolves, and every command they show still works as
written: ``python -m tdfusion_ros.<module>``, ``python training/<script>.py`` (and benchmarks/,
experiments/), ``bash scripts/...``, ``ros2 launch`` / ``ros2 run`` of this package, each with
its ``--options``, launch arguments and node parameter names. The node's reference tables in
docs/node.md must match ``node_params``.

Fast and static: the files are read as text; options are looked up in the tools' sources
(``"--name"`` must appear in them), not by running the tools.
"""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]
TOP_DIRS = ("tdfusion_ros", "training", "config", "scripts", "test", "models", "results",
            "benchmarks", "experiments", "launch", "interfaces", "requirements", "docs",
            "resource")
TOP_FILES = ("README.md", "ARCHITECTURE.md", "LICENSE", "package.xml", "setup.py", "setup.cfg",
             "ruff.toml")
PATH_RE = re.compile(r"(?<![\w./$-])((?:" + "|".join(TOP_DIRS) + r")/[\w.*{},/-]*|(?:"
                     + "|".join(re.escape(f) for f in TOP_FILES) + r"))(?![\w/])")
SCRIPT_RE = re.compile(r"(?<![\w./-])((?:training|benchmarks|experiments)/\w+\.py)\b")
MODULE_RE = re.compile(r"\bpython3?\s+-m\s+(tdfusion_ros(?:\.\w+)*)")
# ROS arguments end a tool's own options
ROS_ARGS = "--ros-args"


def _page_id(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return path.name


def _code(text: str) -> list[str]:
    """Fenced blocks (backslash continuations joined, comments dropped) and inline spans."""
    out = []
    fenced = re.findall(r"^\s*```[^\n]*\n(.*?)^\s*```", text, re.S | re.M)
    for block in fenced:
        joined = re.sub(r"\\\n\s*", " ", block)
        out += [line.split(" #")[0] for line in joined.splitlines()]
    rest = re.sub(r"^\s*```[^\n]*\n.*?^\s*```", "", text, flags=re.S | re.M)
    out += re.findall(r"`([^`\n]+)`", rest)
    return out


def _expand(path: str) -> list[str]:
    """``a/{b,c}.py`` -> ``a/b.py``, ``a/c.py``."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [x for part in match.group(1).split(",")
            for x in _expand(path[:match.start()] + part + path[match.end():])]


def _is_placeholder(path: str) -> bool:
    return bool(re.search(r"<|>|\b[A-Z]{1,}(?:_[A-Z]+)*\b(?![a-z.])", path)) or "..." in path


def _path_exists(path: str) -> bool:
    for candidate in _expand(path.rstrip(".,;:")):
        if "*" in candidate:
            if not list(REPO.glob(candidate)):
                return False
        elif not (REPO / candidate).exists():
            return False
    return True


@cache
def _source(root: str) -> str:
    """Every .py under a folder (or one file) of the repository, as one text."""
    base = REPO / root
    files = [base] if base.is_file() else sorted(base.rglob("*.py"))
    return "\n".join(p.read_text() for p in files)


def _options(tokens: list[str]) -> list[str]:
    out = []
    for token in tokens:
        if token == ROS_ARGS or token in ("&&", "||", ";", "|"):
            break
        token = token.strip("[](),")
        if token.startswith("--") and len(token) > 2:
            out.append(token.split("=")[0])
    return out


def _tokens(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=False)
    except ValueError:
        return line.split()


@cache
def _launch_arguments() -> set[str]:
    from tdfusion_ros.ros import node_params

    return {a.name for a in node_params.launch_arguments()}


@cache
def _parameters() -> set[str]:
    from tdfusion_ros.ros import node_params

    return set(node_params.BY_NAME)


def _console_scripts() -> dict[str, str]:
    text = (REPO / "setup.py").read_text()
    return dict(re.findall(r'"(\w+) = (tdfusion_ros\.\w+):main"', text))


def _problems(page: Path) -> list[str]:
    text = page.read_text()
    problems: list[str] = []
    where = _page_id(page)

    # relative links and their anchors
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            problems.append(f"{where}: link to {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{where}: link to {target}: no such heading in {dest.name}")

    for code in _code(text):
        # repository paths
        for path in PATH_RE.findall(code):
            path = path.rstrip(".,;:")
            if _is_placeholder(path) or path.endswith("/."):
                continue
            if not _path_exists(path):
                problems.append(f"{where}: {path} does not exist")
        tokens = _tokens(code)
        # python -m tdfusion_ros.<module> [options]
        for match in MODULE_RE.finditer(code):
            module = match.group(1)
            if code[match.end():match.end() + 2] == ".<":
                continue  # tdfusion_ros.<tool>: a placeholder
            rel = Path(*module.split("."))
            if not ((REPO / rel).with_suffix(".py").is_file()
                    or (REPO / rel / "__main__.py").is_file()):
                problems.append(f"{where}: python -m {module}: no such command")
                continue
            after = _tokens(code[match.end():])
            for option in _options(after):
                if f'"{option}"' not in _source("tdfusion_ros"):
                    problems.append(f"{where}: python -m {module} {option}: no such option")
            if module == "tdfusion_ros.replay":
                for i, token in enumerate(after[:-1]):
                    if token == "--set":
                        name = after[i + 1].split("=")[0]
                        if name.islower() and name not in _parameters():
                            problems.append(f"{where}: --set {name}: no such node parameter")
        # training/, benchmarks/, experiments/ scripts [options]
        for match in SCRIPT_RE.finditer(code):
            script = match.group(1)
            if not (REPO / script).is_file():
                continue  # reported as a path above
            root = script.split("/")[0]
            source = _source(script) + (_source("training") if root == "training" else "")
            for option in _options(_tokens(code[match.end():])):
                if f'"{option}"' not in source:
                    problems.append(f"{where}: {script} {option}: no such option")
        # ros2 launch / run / param of this package
        for i, token in enumerate(tokens):
            nxt = tokens[i + 1:i + 4]
            if token == "ros2" and nxt[:2] == ["launch", "tdfusion_ros"] and len(nxt) > 2:
                if not (REPO / "launch" / nxt[2]).is_file():
                    problems.append(f"{where}: ros2 launch tdfusion_ros {nxt[2]}: no such file")
                for arg in tokens[i + 4:]:
                    name = arg.split(":=")[0]
                    if ":=" in arg and name not in _launch_arguments():
                        problems.append(f"{where}: launch argument {name}: not declared")
            if token == "ros2" and nxt[:2] == ["run", "tdfusion_ros"] and len(nxt) > 2:
                scripts = _console_scripts()
                if nxt[2] not in scripts:
                    problems.append(f"{where}: ros2 run tdfusion_ros {nxt[2]}: no such "
                                    "executable")
                elif nxt[2] != "fusion_node":
                    for option in _options(tokens[i + 4:]):
                        if f'"{option}"' not in _source("tdfusion_ros"):
                            problems.append(f"{where}: ros2 run tdfusion_ros {nxt[2]} "
                                            f"{option}: no such option")
            if token == "ros2" and nxt[:2] == ["param", "set"] and len(nxt) > 2:
                name = tokens[i + 4] if len(tokens) > i + 4 else ""
                if name and name not in _parameters():
                    problems.append(f"{where}: ros2 param set {name}: no such parameter")
            if token == "-p" and i + 1 < len(tokens) and ":=" in tokens[i + 1]:
                name = tokens[i + 1].split(":=")[0]
                if name not in _parameters() and name != "use_sim_time":
                    problems.append(f"{where}: -p {name}: no such parameter")
        # bash scripts/X (the path check covers the file; its existence is what matters)
    return problems


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def _anchors(page: Path) -> frozenset[str]:
    text = re.sub(r"^\s*```.*?^\s*```", "", page.read_text(), flags=re.S | re.M)
    return frozenset(_slug(h) for h in re.findall(r"^#{1,6}\s+(.+)$", text, re.M))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_paths_links_and_commands_exist(page: Path) -> None:
    problems = _problems(page)
    assert not problems, "\n".join(problems)


def test_the_check_catches_what_it_should(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "# Title", "",
        "See `training/no_such_script.py` and [here](missing.md) and [there](#nowhere).", "",
        "```bash",
        ".venv/bin/python -m tdfusion_ros.replay BAG --no-such-option \\",
        "    --set sync.no_such=1",
        "python -m tdfusion_ros.no_such_tool --out X",
        "python training/train.py --config config/train_smoke.yaml --no-such-flag",
        "ros2 launch tdfusion_ros fusion.launch.py no_such_arg:=1",
        "ros2 run tdfusion_ros no_such_exe",
        "ros2 param set /fusion_node detection.no_such 1",
        "```", ""]))
    found = "\n".join(_problems(page))
    for expected in ("training/no_such_script.py does not exist", "missing.md: no such file",
                     "#nowhere: no such heading", "--no-such-option: no such option",
                     "--set sync.no_such", "tdfusion_ros.no_such_tool: no such command",
                     "training/train.py --no-such-flag", "no_such_arg: not declared",
                     "no_such_exe: no such executable", "detection.no_such"):
        assert expected in found, expected
    good = tmp_path / "good.md"
    good.write_text("# A heading (with: punctuation)\n\n[self](#a-heading-with-punctuation)\n"
                    "`python -m tdfusion_ros.replay BAG --bundle models/default --set "
                    "sync.slop=0.03`, `config/train_*.yaml`, `tdfusion_ros/{fuse,replay}.py`\n")
    assert _problems(good) == []


def test_node_reference_tables_match_node_params() -> None:
    from tdfusion_ros.ros import param_docs

    text = (REPO / "docs" / "node.md").read_text()
    assert param_docs.refresh(text) == text, (
        "docs/node.md's tables are stale: python -m tdfusion_ros.ros.param_docs --write")
