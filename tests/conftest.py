"""Shared pytest fixtures.

Real data for tests lives in ``../shared/data`` beside the checkout (override with
``HLA_SHARED_DATA``), reference key tables in ``../shared/docs`` (``HLA_SHARED_DOCS``). Tests that
need them take the ``shared_data`` / ``shared_docs`` fixtures: when the folder is absent they are
skipped with a reason, unless ``HLA_REQUIRE_SHARED_DATA=1`` (set by ``.ci/run``), in which case
they fail, so CI always runs them.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = Path(os.environ.get("HLA_SHARED_DATA", ROOT.parent / "shared" / "data"))
SHARED_DOCS = Path(os.environ.get("HLA_SHARED_DOCS", ROOT.parent / "shared" / "docs"))
REQUIRE_SHARED_DATA = os.environ.get("HLA_REQUIRE_SHARED_DATA") == "1"


def pytest_collection_modifyitems(config, items):
    if REQUIRE_SHARED_DATA:
        return
    for fixture, folder, variable in (("shared_data", SHARED_DATA, "HLA_SHARED_DATA"),
                                      ("shared_docs", SHARED_DOCS, "HLA_SHARED_DOCS")):
        if folder.is_dir():
            continue
        missing = pytest.mark.skipif(True, reason=f"shared test files not found at {folder} "
                                                  f"(set {variable})")
        for item in items:
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(missing)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; fails when absent and HLA_REQUIRE_SHARED_DATA=1."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"HLA_REQUIRE_SHARED_DATA=1 but {SHARED_DATA} does not exist")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_docs() -> Path:
    """Path of ``../shared/docs`` (Pytorch_Retinaface's key tables); like :func:`shared_data`."""
    if not SHARED_DOCS.is_dir():
        pytest.fail(f"HLA_REQUIRE_SHARED_DATA=1 but {SHARED_DOCS} does not exist")
    return SHARED_DOCS


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep torch to the machine's cores so parallel helpers do not oversubscribe."""
    import torch
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
