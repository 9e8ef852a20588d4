"""
The documentation: every public name of the package has a docstring of its
own or one it inherits (from a base class or an interface it implements),
pydoctor builds the API docs with no warnings where it is installed, and the
Python blocks of the README's "Library use" section run, in order, in one
namespace; the test cases they define are this module's too, so both runners
run them.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementedBy

import timerserver
from tests.serverprocess import ROOT


def inherited(cls: type, name: str) -> bool:
    """Whether a base class or an implemented interface documents C{name}."""
    for base in cls.__mro__[1:]:
        if getattr(getattr(base, name, None), "__doc__", None):
            return True
    for interface in implementedBy(cls).flattened():
        if name in interface.names(all=True) and interface[name].__doc__:
            return True
    return False


def undocumented() -> list[str]:
    missing = []
    for info in pkgutil.iter_modules(timerserver.__path__):
        module = importlib.import_module(f"timerserver.{info.name}")
        if not module.__doc__:
            missing.append(module.__name__)
        for name, obj in list(vars(module).items()):
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and not obj.__doc__:
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, value in list(vars(obj).items()):
                    if attr.startswith("_") or not inspect.isfunction(value):
                        continue
                    if not value.__doc__ and not inherited(obj, attr):
                        missing.append(f"{module.__name__}.{name}.{attr}")
    return missing


class DocstringTests(SynchronousTestCase):
    def test_everyPublicNameIsDocumented(self) -> None:
        self.assertEqual(undocumented(), [])


class PydoctorTests(SynchronousTestCase):
    def test_buildsWithNoWarnings(self) -> None:
        if shutil.which("pydoctor", path=f"{sys.prefix}/bin") is None:
            raise SkipTest("pydoctor is not installed (pip install '.[dev]')")
        output = tempfile.mkdtemp(prefix="timerserver-apidocs-")
        self.addCleanup(shutil.rmtree, output, True)
        result = subprocess.run(
            [f"{sys.prefix}/bin/pydoctor", "--project-name=timerserver", "--docformat=epytext",
             f"--html-output={output}", "-q", "-W", "timerserver"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


README = ROOT / "README.md"
LIBRARY = "## Library use"
HELPERS = ("TimerWheel", "Periodic", "TimeoutMixin", "ThreadSafeTimerQueue")


def pythonBlocks(text: str, heading: str) -> list[tuple[int, str]]:
    """
    The C{```python} blocks of the section under C{heading} (up to the next
    heading of its level or above), each with the 0-based line its code starts on.
    """
    lines = text.splitlines()
    if heading not in lines:
        raise ValueError(f"no heading {heading!r}")
    level = heading.split(" ", 1)[0]
    blocks: list[tuple[int, str]] = []
    fence: str | None = None  # the language of the block we are in
    code: list[str] = []
    first = 0
    for number in range(lines.index(heading) + 1, len(lines)):
        line = lines[number]
        if fence is None:
            if line.startswith("#") and line.split(" ", 1)[0] <= level:
                break
            if line.startswith("```"):
                fence, code, first = line[3:].strip(), [], number + 1
        elif line.strip() == "```":
            if fence == "python":
                blocks.append((first, "\n".join(code)))
            fence = None
        else:
            code.append(line)
    if fence is not None:
        raise ValueError(f"the block on line {first} of {heading!r} is not closed")
    return blocks


def runBlocks(blocks: list[tuple[int, str]], filename: str) -> dict[str, Any]:
    """Run C{blocks} in one namespace, reporting errors at their lines in C{filename}."""
    namespace: dict[str, Any] = {"__name__": __name__}
    for first, code in blocks:
        exec(compile("\n" * first + code, filename, "exec"), namespace)
    return namespace


def definedTestCases(namespace: dict[str, Any]) -> dict[str, type[SynchronousTestCase]]:
    return {
        name: value
        for name, value in namespace.items()
        if isinstance(value, type)
        and issubclass(value, SynchronousTestCase)
        and value is not SynchronousTestCase
    }


LIBRARY_BLOCKS = pythonBlocks(README.read_text(encoding="utf-8"), LIBRARY)
README_TEST_CASES = definedTestCases(runBlocks(LIBRARY_BLOCKS, str(README)))
_clashes = set(README_TEST_CASES) & set(globals())
if _clashes:
    raise ImportError(f"README test cases clash with tests.test_docs names: {_clashes}")
globals().update(README_TEST_CASES)  # trial and pytest find them here


class ReadmeTests(SynchronousTestCase):
    def test_aUnitTestForEveryHelper(self) -> None:
        """Each public helper has a test case among the README's blocks."""
        tested = {
            helper
            for _, code in LIBRARY_BLOCKS
            if "(SynchronousTestCase)" in code
            for helper in HELPERS
            if helper in code
        }
        self.assertEqual(sorted(tested), sorted(HELPERS))
        methods = [
            m for case in README_TEST_CASES.values() for m in dir(case) if m.startswith("test_")
        ]
        self.assertGreaterEqual(len(methods), len(HELPERS))

    def test_blocksOfTheSectionOnly(self) -> None:
        text = "\n".join([
            "# T", "```python", "before = 1", "```", "## Library use", "```python", "a = 1",
            "```", "```sh", "# not a heading", "```", "### Sub", "```python", "b = 2", "```",
            "## Next", "```python", "after = 3", "```",
        ])  # fmt: skip
        self.assertEqual(pythonBlocks(text, "## Library use"), [(6, "a = 1"), (13, "b = 2")])

    def test_badReadmes(self) -> None:
        self.assertRaises(ValueError, pythonBlocks, "## Other\n", "## Library use")
        unclosed = "## Library use\n```python\nx = 1\n## Next\n"
        self.assertRaises(ValueError, pythonBlocks, unclosed, "## Library use")

    def test_errorsPointAtTheReadmeLine(self) -> None:
        blocks = pythonBlocks("## L\n\n```python\nx = 1\nraise KeyError(x)\n```\n", "## L")
        try:
            runBlocks(blocks, "README.md")
        except KeyError as e:
            tb = e.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename != "README.md":
                tb = tb.tb_next
            self.assertIsNotNone(tb)
            self.assertEqual(tb.tb_lineno if tb else None, 5)
        else:
            self.fail("the block did not run")
