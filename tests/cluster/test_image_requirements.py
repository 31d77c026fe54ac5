"""The image carries what the DAGs need at run time, all of it, and no test or dev tool.

requirements.in -> requirements.txt is the runtime set: the Dockerfile installs it. The test and
dev tools are in requirements-dev.in -> requirements-dev.txt, resolved under `-c requirements.txt`
and installed next to it into .venv only. A runtime dependency moved to the dev file would pass
every test in .venv and break the image, hence the import check at the end.

Fast: the lock files, the Dockerfile and the sources are parsed; nothing is installed or fetched.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_IN, RUNTIME_LOCK = ROOT / "requirements.in", ROOT / "requirements.txt"
DEV_IN, DEV_LOCK = ROOT / "requirements-dev.in", ROOT / "requirements-dev.txt"
# Named here too, so that moving one of them from requirements-dev.in back to requirements.in
# does not also remove it from what is checked.
DEV_TOOLS = frozenset({"moto", "pytest", "pytest-timeout", "ruff", "mypy", "playwright"})
CODE_DIRS = ("include/sluice", "dags", "plugins")

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)")
VIA = re.compile(r"^\s+#\s+via(?:\s+(?P<one>\S.*))?$")
VIA_MORE = re.compile(r"^\s+#\s{3}(?P<name>\S.*)$")


def canonical(name: str) -> str:
    """PEP 503: `PyYAML`, `pyyaml` and `py_yaml` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    version: str
    via: frozenset[str]  # canonical parent names, or `-r file` / `-c file` as uv writes them


def read_lock(path: Path) -> dict[str, Pin]:
    """A `uv pip compile` output: each pin with the `# via` parents uv annotated it with."""
    pins: dict[str, tuple[str, set[str]]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            current = canonical(match["name"])
            assert current not in pins, f"{path.name}: {current} pinned twice"
            pins[current] = (match["version"], set())
        elif current and (via := VIA.match(line)):
            if via["one"]:
                pins[current][1].add(via["one"].strip())
        elif current and (more := VIA_MORE.match(line)):
            pins[current][1].add(more["name"].strip())
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"{path.name}: unexpected line {line!r}")
    return {
        name: Pin(version, frozenset(p if p.startswith("-") else canonical(p) for p in via))
        for name, (version, via) in pins.items()
    }


def top_level_names(path: Path) -> set[str]:
    """The requirement names of a `.in` file (no `-c`/`-r` lines, no extras, no specifiers)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(canonical(re.split(r"[\s\[<>=!~;@]", line, maxsplit=1)[0]))
    return names


@pytest.fixture(scope="module")
def runtime() -> dict[str, Pin]:
    return read_lock(RUNTIME_LOCK)


@pytest.fixture(scope="module")
def dev() -> dict[str, Pin]:
    return read_lock(DEV_LOCK)


def is_named_dev_tool(name: str) -> bool:
    return name in DEV_TOOLS or name.startswith("pytest")


# -- the Dockerfile and its build context ----------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(words[0].upper(), words[1] if len(words) > 1 else "")
            for words in (line.strip().split(None, 1) for line in logical if line.strip())]


def in_build_context(path: str) -> bool:
    """Whether .dockerignore lets `path` in: the last matching rule wins, `!` lets in again."""
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a rule on a folder covers it
    included = True
    for rule in (r for r in rules if r and not r.startswith("#")):
        allow = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            included = allow
    return included


def test_the_image_installs_the_runtime_lock_and_not_the_dev_one() -> None:
    instructions = dockerfile_instructions()
    dev_lines = [f"{kind} {args}" for kind, args in instructions if "requirements-dev" in args]
    assert not dev_lines, f"the dev tools must not enter the image: {dev_lines}"
    installs = [args for kind, args in instructions if kind == "RUN" and "pip install" in args]
    runtime_lock = re.compile(r"(^|\s)-r\s+(\S*/)?requirements\.txt(\s|$)")
    assert any(runtime_lock.search(a) for a in installs), f"no `pip install -r .../requirements.txt` in {installs}"
    copies = [args.split() for kind, args in instructions if kind in ("COPY", "ADD")]
    sources = [src for words in copies for src in [w for w in words if not w.startswith("--")][:-1]]
    assert "requirements.txt" in sources, "requirements.txt is copied before the code, for the layer cache"
    for src in sources:
        assert src == "." or in_build_context(src), f".dockerignore keeps out {src}, which is copied"
    for kept_out in ("requirements-dev.txt", "requirements-dev.in", ".venv", ".env"):
        assert not in_build_context(kept_out), f".dockerignore lets {kept_out} into the image"


# -- the two lock files ------------------------------------------------------------------------------


def test_requirements_txt_pins_no_test_or_dev_tool(runtime: dict[str, Pin]) -> None:
    tools = sorted(name for name in runtime if is_named_dev_tool(name))
    assert not tools, f"test/dev tools in requirements.txt (they belong in requirements-dev.in): {tools}"
    # Every other pin must be needed at run time: walk the `# via` graph up from requirements.in's
    # own names, leaving out the dev tools (named above or listed in requirements-dev.in). What is
    # left is there only because a dev tool pulls it in, or is stale.
    dev_roots = top_level_names(DEV_IN)
    needed = {name for name, pin in runtime.items()
              if f"-r {RUNTIME_IN.name}" in pin.via and name not in dev_roots and not is_named_dev_tool(name)}
    grew = True
    while grew:
        more = {name for name, pin in runtime.items() if name not in needed and pin.via & needed}
        needed |= more
        grew = bool(more)
    orphans = {name: sorted(runtime[name].via) for name in sorted(set(runtime) - needed)}
    assert not orphans, f"requirements.txt pins what only test/dev tools (or nothing) need: {orphans}"


def test_the_dev_lock_keeps_every_runtime_pin(runtime: dict[str, Pin], dev: dict[str, Pin]) -> None:
    assert "-c requirements.txt" in DEV_IN.read_text().splitlines(), "requirements-dev.in must be constrained"
    moved = {name: (runtime[name].version, pin.version)
             for name, pin in dev.items() if name in runtime and pin.version != runtime[name].version}
    assert not moved, f"requirements-dev.txt moves runtime pins (runtime, dev): {moved}; run `make lock`"
    # uv marks what the constraint file pinned: a mismatch means the dev lock was resolved against
    # another requirements.txt than this one.
    stale = sorted(name for name, pin in dev.items()
                   if (f"-c {RUNTIME_LOCK.name}" in pin.via) != (name in runtime))
    assert not stale, f"requirements-dev.txt was not resolved against this requirements.txt: {stale}"


def test_make_lock_writes_both_locks_and_make_install_installs_both() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for source, lock in ((RUNTIME_IN, RUNTIME_LOCK), (DEV_IN, DEV_LOCK)):
        command = f"uv pip compile {source.name} --python-version 3.11 -o {lock.name}"
        assert f"$(BIN)/{command}" in makefile, f"`make lock` does not run {command}"
        header = lock.read_text().splitlines()[1]
        assert header == f"#    {command}", f"{lock.name} was not written by `make lock`: {header}"
    stamp = re.search(r"^STAMP := .*\$\(shell cat (?P<inputs>[^|]+)\|", makefile, re.MULTILINE)
    assert stamp and {RUNTIME_LOCK.name, DEV_LOCK.name} <= set(stamp["inputs"].split()), "hash both in STAMP"
    assert f"-r {RUNTIME_LOCK.name} -r {DEV_LOCK.name}" in makefile, "`make install` installs both as one set"


# -- the code's imports --------------------------------------------------------------------------------


class RuntimeImports(ast.NodeVisitor):
    """Top-level modules imported at run time (not under `if TYPE_CHECKING:`, not relative)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.found: list[tuple[str, str]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name.split(".")[0], f"{self.where}:{node.lineno}") for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.found.append((node.module.split(".")[0], f"{self.where}:{node.lineno}"))


def third_party_imports() -> dict[str, list[str]]:
    """{top-level module: [file:line, ...]} over the package, the DAGs and the plugins."""
    local = {p.stem for d in ("dags", "plugins") for p in (ROOT / d).iterdir()} | {"sluice"}
    found: dict[str, list[str]] = {}
    for folder in CODE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            visitor = RuntimeImports(str(path.relative_to(ROOT)))
            visitor.visit(ast.parse(path.read_text(), filename=str(path)))
            for module, where in visitor.found:
                if module not in sys.stdlib_module_names and module not in local:
                    found.setdefault(module, []).append(where)
    return found


def test_every_third_party_import_is_pinned_in_requirements_txt(runtime: dict[str, Pin]) -> None:
    imports = third_party_imports()
    assert {"airflow", "pandas", "mlflow"} <= set(imports), "the import walk finds nothing: is it broken?"
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module, where in sorted(imports.items()):
        distributions = sorted({canonical(d) for d in providers.get(module, [])})
        if not any(d in runtime for d in distributions):
            missing[module] = (distributions or "no installed distribution", where[:3])
    assert not missing, (
        "imported by the code the image runs but not pinned in requirements.txt "
        f"(add the distribution to requirements.in, `make lock`): {missing}"
    )
