"""tests/integration/test_serve.py under vLLM's GPU defaults: Model Runner V2
and async scheduling (see conftest.py), eager engines."""

import pytest

from tests.integration.test_serve import *  # noqa: F401,F403

pytestmark = pytest.mark.usefixtures("eager_engines")
