"""tests/integration/test_never_silent.py under vLLM's GPU defaults: Model Runner V2,
async scheduling, torch.compile (see tests/gpu_defaults/conftest.py)."""

from tests.integration.test_never_silent import *  # noqa: F401,F403
