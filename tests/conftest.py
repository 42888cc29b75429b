"""Shared pytest fixtures.

Real data for tests lives in ``../shared/data`` beside the checkout (override with
``HLA_SHARED_DATA``). Tests that need it take the ``shared_data`` fixture: when the folder is
absent they are skipped with a reason, unless ``HLA_REQUIRE_SHARED_DATA=1`` (set by ``.ci/run``),
in which case they fail, so CI always runs them.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = Path(os.environ.get("HLA_SHARED_DATA", ROOT.parent / "shared" / "data"))
REQUIRE_SHARED_DATA = os.environ.get("HLA_REQUIRE_SHARED_DATA") == "1"


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.is_dir() or REQUIRE_SHARED_DATA:
        return
    missing = pytest.mark.skipif(True, reason=f"shared test data not found at {SHARED_DATA} "
                                              "(set HLA_SHARED_DATA)")
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(missing)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; fails when absent and HLA_REQUIRE_SHARED_DATA=1."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"HLA_REQUIRE_SHARED_DATA=1 but {SHARED_DATA} does not exist")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep torch to the machine's cores so parallel helpers do not oversubscribe."""
    import torch
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
