"""tests/integration/test_plphp_matches_reference.py under vLLM's GPU defaults: Model Runner V2,
async scheduling, torch.compile (see tests/gpu_defaults/conftest.py)."""

from tests.integration.test_plphp_matches_reference import *  # noqa: F401,F403
