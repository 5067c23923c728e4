"""The user documentation (README.md, docs/*.md, bench/README.md) agrees with the repository.

- every relative link resolves to an existing file, and an anchor in it to a heading of the linked page;
- every repository path named in backticks (`egs/demo/conf/demo.sh`, `dphubert/bin/prune.py`, recipe-relative
  `conf/...` and `local/...`) exists, and every `dphubert.<module>[.<name>]` names an existing module and name;
- every ``python -m dphubert.bin.X ...`` command (code blocks, continuation lines joined, and inline code) names
  an existing module, and each ``--flag`` on it is an option of that module's ``get_parser()`` (of its
  subcommand, where it has subcommands); ``python bench/X.py`` flags are options the script declares;
- every ``./run.sh`` / ``./dphubert.sh`` / ``exp/<tag>/run.sh`` option is a variable that
  egs/TEMPLATE/dphubert.sh declares before its ``help_message`` (``--config`` and ``--help`` always exist),
  and the options inside ``--distill_prune_opts "..."`` / ``--superb_opts "..."`` are options of
  ``dphubert.bin.distill_prune`` / ``dphubert.bin.superb_stage``.

A renamed flag, module, file or heading thus fails here until the docs follow.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])
STAGE_SCRIPT = ROOT / "egs" / "TEMPLATE" / "dphubert.sh"
# Top-level entries a backticked path may start with to count as a repository path.
REPO_DIRS = ("dphubert", "egs", "tools", "bench", "test", "docs", ".ci")
# Recipe-relative paths (`conf/...` in a recipe dir) must exist in one of these.
RECIPE_DIRS = sorted(p for p in (ROOT / "egs").iterdir() if p.is_dir()) + [ROOT / "egs" / "TEMPLATE" / "skeleton"]
RECIPE_ROOTS = ("conf", "local", "utils")
NESTED_OPTS = {"distill_prune_opts": "dphubert.bin.distill_prune", "superb_opts": "dphubert.bin.superb_stage"}

FENCE = re.compile(r"^\s*```")
FLAG = re.compile(r"^--[A-Za-z0-9][\w-]*(=.*)?$")


# ----- reading markdown ----------------------------------------------------------------------------------------
def split_markdown(text: str) -> Tuple[List[Tuple[int, List[str]]], str]:
    """``(code blocks as (first line number, lines), the prose with code blocks blanked)``."""
    blocks, prose, current, start = [], [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            if current is None:
                current, start = [], number + 1
            else:
                blocks.append((start, current))
                current = None
            prose.append("")
        elif current is not None:
            current.append(line)
            prose.append("")
        else:
            prose.append(line)
    return blocks, "\n".join(prose)


def inline_code(prose: str) -> List[str]:
    """Inline code spans of the prose (a span may run over a line break; its text is joined with a space)."""
    return [" ".join(span.split()) for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(path: Path) -> Set[str]:
    _, prose = split_markdown(path.read_text(encoding="utf-8"))
    seen: Dict[str, int] = {}
    out = set()
    for line in prose.splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def logical_lines(lines: List[str]) -> Iterator[str]:
    """Shell lines with backslash continuations joined."""
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def tokens(line: str) -> List[str]:
    """Shell words of a line, comments dropped, optional-argument brackets stripped (``[--resume]``)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote (not a shell line): split on spaces
        words = line.split("#")[0].split()
    return [w.strip("[]()|,;") if w.startswith(("[", "(")) or w.endswith(("]", ")", ",", ";")) else w
            for w in words]


def commands() -> Iterator[Tuple[str, str]]:
    """``(where, command line)`` of every shell line in a code block and every inline code span."""
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        blocks, prose = split_markdown(text)
        name = doc.relative_to(ROOT)
        for start, lines in blocks:
            for offset, line in enumerate(logical_lines(lines)):
                yield f"{name} (code block at line {start})", line
        for span in inline_code(prose):
            yield f"{name} (inline)", span


# ----- what the code accepts -----------------------------------------------------------------------------------
def parser_options(parser: argparse.ArgumentParser) -> Tuple[Set[str], Dict[str, argparse.ArgumentParser]]:
    options = {o for action in parser._actions for o in action.option_strings}
    subparsers = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subparsers.update(action.choices)
    return options, subparsers


@lru_cache(maxsize=None)
def module_parser(module: str) -> Optional[argparse.ArgumentParser]:
    """The module's ``get_parser()``; None for a module without one (it passes its arguments on)."""
    get_parser = getattr(importlib.import_module(module), "get_parser", None)
    return get_parser() if get_parser is not None else None


@lru_cache(maxsize=None)
def stage_script_options() -> Set[str]:
    """Variables assigned at the top of the stage script, before ``help_message``: its options."""
    names = {"config", "help"}
    for line in STAGE_SCRIPT.read_text(encoding="utf-8").splitlines():
        if line.startswith("help_message="):
            return names
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    raise AssertionError(f"{STAGE_SCRIPT}: no help_message line")


@lru_cache(maxsize=None)
def script_flags(path: Path) -> Set[str]:
    """The ``--flags`` a bench script declares with ``add_argument``."""
    return set(re.findall(r"""add_argument\(\s*["'](--[\w-]+)["']""", path.read_text(encoding="utf-8")))


def flags_of(words: List[str]) -> List[str]:
    return [w.split("=", 1)[0] for w in words if FLAG.match(w)]


# ----- the checks ----------------------------------------------------------------------------------------------
def check_python_command(words: List[str], where: str) -> List[str]:
    """Problems of the ``-m dphubert.bin.X ...`` commands among ``words``."""
    problems = []
    for i, word in enumerate(words[:-1]):
        if word != "-m" or not words[i + 1].startswith("dphubert.bin."):
            continue
        module = words[i + 1]
        if not re.fullmatch(r"dphubert\.bin\.\w+", module):
            continue  # a placeholder such as dphubert.bin.<stage>
        if importlib.util.find_spec(module) is None:
            problems.append(f"{where}: no module {module}")
            continue
        parser = module_parser(module)
        if parser is None:
            continue
        args = []
        for arg in words[i + 2:]:
            if arg in ("--", "&&", "||", "|", ";") or (arg == "-m" and args):
                break  # the rest belongs to another program (run_downstream after --) or command
            args.append(arg)
        problems += check_flags(module, parser, args, where)
    return problems


def check_flags(module: str, parser: argparse.ArgumentParser, args: List[str], where: str) -> List[str]:
    options, subparsers = parser_options(parser)
    positional = [a for a in args if not a.startswith("-")]
    if subparsers and positional and positional[0] in subparsers:
        options = options | parser_options(subparsers[positional[0]])[0]
    return [f"{where}: python -m {module} has no option {flag}" for flag in flags_of(args) if flag not in options]


def check_stage_script_command(words: List[str], where: str) -> List[str]:
    problems = []
    for i, word in enumerate(words):
        if not (word in ("./run.sh", "./dphubert.sh") or re.fullmatch(r"exp/[^/\s]+/run\.sh", word)):
            continue
        rest = words[i + 1:]
        j = 0
        while j < len(rest):
            arg = rest[j]
            if arg in ("&&", "||", "|", ";"):
                break
            if not arg.startswith("--") or arg == "--":
                j += 1
                continue
            name, _, value = arg[2:].partition("=")
            name = name.replace("-", "_")  # parse_options.sh takes --stop-stage for --stop_stage
            if not value and name != "help":
                value = rest[j + 1] if j + 1 < len(rest) else ""
                j += 1
            j += 1
            if name not in stage_script_options():
                problems.append(f"{where}: {word} has no option --{name} (egs/TEMPLATE/dphubert.sh declares none)")
            elif name in NESTED_OPTS and value:
                module = NESTED_OPTS[name]
                problems += check_flags(module, module_parser(module), tokens(value), f"{where}, --{name}")
    return problems


def check_bench_command(words: List[str], where: str) -> List[str]:
    problems = []
    for i, word in enumerate(words):
        match = re.fullmatch(r"(?:\.\./\.\./)?(bench/\w+\.py)", word)
        if not match or i == 0 or not words[i - 1].startswith("python"):
            continue
        script = ROOT / match.group(1)
        if not script.exists():
            problems.append(f"{where}: no script {match.group(1)}")
            continue
        declared = script_flags(script) | {"--help", "-h"}
        problems += [f"{where}: {match.group(1)} has no option {flag}" for flag in flags_of(words[i + 1:])
                     if flag not in declared]
    return problems


def check_command(line: str, where: str) -> List[str]:
    if not any(key in line for key in ("dphubert.bin.", "run.sh", "dphubert.sh", "bench/")):
        return []
    words = tokens(line)
    return (check_python_command(words, where) + check_stage_script_command(words, where)
            + check_bench_command(words, where))


def check_links(doc: Path) -> List[str]:
    _, prose = split_markdown(doc.read_text(encoding="utf-8"))
    prose = re.sub(r"`[^`]*`", "", prose)
    problems = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        where = f"{doc.relative_to(ROOT)}: link ({target})"
        if not linked.exists():
            problems.append(f"{where}: {path} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: no heading with anchor #{anchor} in {linked.relative_to(ROOT)}")
    return problems


def module_names(path: Path) -> Set[str]:
    """Top-level names a module defines or imports (without importing it)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def check_dotted(name: str) -> Optional[str]:
    """``dphubert.a.b[.attr]``: None when it names a module (and a name in it), else the problem."""
    parts = name.split(".")
    path = ROOT
    for k, part in enumerate(parts):
        package, module = path / part, path / f"{part}.py"
        if package.is_dir() and (package / "__init__.py").exists():
            path = package
            continue
        if module.exists():
            path = module
            rest = parts[k + 1:]
            break
        rest = parts[k:]
        break
    else:
        return None
    if path == ROOT:
        return f"no module {name}"
    if path.is_dir():
        path = path / "__init__.py"
    if rest and rest[0] not in module_names(path):
        return f"{'.'.join(parts[:len(parts) - len(rest)])} has no {rest[0]}"
    return None


def check_paths(doc: Path) -> List[str]:
    _, prose = split_markdown(doc.read_text(encoding="utf-8"))
    problems = []
    for span in inline_code(prose):
        where = f"{doc.relative_to(ROOT)}: `{span}`"
        dotted = re.match(r"^(dphubert(?:\.\w+)+)", span)
        if dotted and "/" not in span:
            problem = check_dotted(dotted.group(1))
            if problem:
                problems.append(f"{where}: {problem}")
            continue
        if " " in span or any(c in span for c in "<>*{}$[]|") or "/" not in span:
            continue
        path = span.rstrip("/")
        first = path.split("/")[0]
        if first in REPO_DIRS:
            if not (ROOT / path).exists():
                problems.append(f"{where}: no such file in the repository")
        elif first in RECIPE_ROOTS:
            if not any((recipe / path).exists() for recipe in RECIPE_DIRS):
                problems.append(f"{where}: in no recipe dir of egs/")
    return problems


# ----- tests ---------------------------------------------------------------------------------------------------
def test_the_docs_exist():
    names = {str(doc.relative_to(ROOT)) for doc in DOCS}
    for page in ("method", "training", "recipes", "models", "superb", "deployment", "experiments"):
        assert f"docs/{page}.md" in names
    assert "bench/README.md" in names
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme.splitlines()[6] and "make test" in readme.splitlines()[7]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(doc):
    assert check_links(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_exist(doc):
    assert check_paths(doc) == []


def test_commands_use_existing_modules_and_options():
    problems = [problem for where, line in commands() for problem in check_command(line, where)]
    assert problems == []


def test_the_checks_catch_a_renamed_flag():
    """The checkers themselves: a wrong flag, module, stage-script option, path or anchor is reported."""
    where = "example"
    assert check_command("python -m dphubert.bin.prune --ckpt last.pt --out pruned.pt", where) == []
    assert check_command("python -m dphubert.bin.prune --ckpt last.pt --output pruned.pt", where) == [
        "example: python -m dphubert.bin.prune has no option --output"]
    assert check_command("python -m dphubert.bin.distill_prune --config c.yaml \\", where) == []
    joined = list(logical_lines(["python -m dphubert.bin.distill_prune --config c.yaml \\",
                                 "    [--teacher-feat dump/t]"]))
    assert check_command(joined[0], where) == [
        "example: python -m dphubert.bin.distill_prune has no option --teacher-feat"]
    assert check_command("python -m dphubert.bin.no_such_tool --x 1", where) == [
        "example: no module dphubert.bin.no_such_tool"]
    assert check_command("python -m dphubert.bin.sweep report --prefix demo --out d", where) == []
    assert check_command("python -m dphubert.bin.sweep plan --out d", where) != []
    assert check_command('python -m dphubert.bin.superb --db db.sh -- -m train -u x -k m.pt', where) == []
    assert check_command("./run.sh --stage 3 --stop_stage 4 --config conf/x.sh", where) == []
    assert check_command("./run.sh --stage 3 --stopstage 4", where) == [
        "example: ./run.sh has no option --stopstage (egs/TEMPLATE/dphubert.sh declares none)"]
    assert check_command('./run.sh --distill_prune_opts "--budget macs --target-sparsity 0.6"', where) == []
    assert check_command('./run.sh --distill_prune_opts "--budgets macs"', where) == [
        "example, --distill_prune_opts: python -m dphubert.bin.distill_prune has no option --budgets"]
    assert check_command("python bench/model_speed.py --repeats 5", where) == []
    assert check_command("python bench/model_speed.py --repeat 5", where) == [
        "example: bench/model_speed.py has no option --repeat"]
    assert check_dotted("dphubert.models.macs") is None
    assert check_dotted("dphubert.s3prl.expert.register") is None
    assert check_dotted("dphubert.models.no_such_module") is not None
    assert check_dotted("dphubert.s3prl.expert.no_such_function") is not None
    assert slug("Drop-in release files (`--to release`)") == "drop-in-release-files---to-release"
    assert slug("The demo's target sweep") == "the-demos-target-sweep"
