"""tests/integration/test_serve.py under vLLM's GPU defaults (see conftest.py):
`vllm serve --attention-backend plphp` on Model Runner V2 with async
scheduling and torch.compile, i.e. nothing but the fixture's own flags."""

from tests.integration.test_serve import *  # noqa: F401,F403
