"""
The API documentation: every public name of the package has a docstring of
its own or one it inherits (from a base class or an interface it implements),
and pydoctor builds the docs with no warnings where it is installed.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
import subprocess
import sys
import tempfile

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
