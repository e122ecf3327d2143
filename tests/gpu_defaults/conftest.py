"""Modules here run under vLLM's GPU defaults (Model Runner V2, async
scheduling, torch.compile) on CPU; they need tests/support/gpu_defaults.py
applied at interpreter start in every process, which the second pass of
scripts/test.sh does. In any other run they are skipped, saying so."""

import pytest

from tests.support import gpu_defaults


def pytest_collection_modifyitems(config, items):
    if gpu_defaults.enabled():
        return
    skip = pytest.mark.skip(reason="runs in the second pass of scripts/test.sh "
                                   "(PLPHP_GPU_DEFAULTS=1, tests/support/site on PYTHONPATH)")
    for item in items:
        if "tests/gpu_defaults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def eager_engines():
    """Engines of the using module run eager: what it checks does not depend on
    torch.compile (test_plphp_matches_reference covers that), and each compiled
    engine start costs minutes of CI on CPU."""
    import tests.conftest

    saved, tests.conftest.EAGER = tests.conftest.EAGER, True
    yield
    tests.conftest.EAGER = saved
