"""The column registry (``nccli.schema.METRICS``) is the one place a report column is declared: adding one must
not break any module that reads the registry (the panels, the plots, the report formats, the command line)."""

import subprocess
import sys
from pathlib import Path

import nccli

PACKAGE = Path(nccli.__file__).resolve().parent
NEW_COLUMNS = """\
    Column("zz_new_nc1", "nc1", ANY_LAYER, "A new NC1 metric", "y", "a new column", "0"),
    Column("zz_new_nc2", "nc2", ANY_LAYER, "A new NC2 metric", "y", "a new column", "0"),
    Column("zz_new_loss", "loss", CLASSIFIER_LAYER, "A new loss", "y", "a new column", "0"),
"""
# Run in a fresh interpreter: nccli.schema is loaded from the source given on stdin, then every module imported.
IMPORT_ALL = """\
import importlib, importlib.abc, importlib.util, sys
source, path = sys.stdin.read(), sys.argv[1]

class PatchedSchema(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, search_path, target=None):
        return importlib.util.spec_from_loader(name, self, origin=path) if name == "nccli.schema" else None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        exec(compile(source, path, "exec"), module.__dict__)

sys.meta_path.insert(0, PatchedSchema())
for name in sys.argv[2:]:
    importlib.import_module(name)
import nccli.schema as schema
assert schema.NC2_METRICS[0] == "zz_new_nc2" and "zz_new_loss" in schema.METRIC_COLUMNS, schema.NC2_METRICS
"""


def test_a_new_registry_entry_breaks_no_import():
    """Three more columns, first in their families (every position after them moves): every module imports."""
    schema = PACKAGE / "schema.py"
    text = schema.read_text()
    anchor = "METRICS: tuple[Column, ...] = (\n"
    first = text.index(anchor) + len(anchor)
    modules = sorted(
        ".".join(("nccli", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
        if path.name != "__main__.py"
    )
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, str(schema), *modules],
        input=text[:first] + NEW_COLUMNS + text[first:],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
