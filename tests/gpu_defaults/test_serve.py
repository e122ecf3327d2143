"""tests/integration/test_serve.py under vLLM's GPU defaults: Model Runner V2
and async scheduling (see tests/gpu_defaults/conftest.py). Eager: what these
tests check does not depend on torch.compile, which test_plphp_matches_reference
covers, and each compiled engine start costs minutes of CI on CPU."""

import pytest

import tests.conftest
from tests.integration.test_serve import *  # noqa: F401,F403


@pytest.fixture(scope="module", autouse=True)
def _eager():
    saved, tests.conftest.EAGER = tests.conftest.EAGER, True
    yield
    tests.conftest.EAGER = saved
