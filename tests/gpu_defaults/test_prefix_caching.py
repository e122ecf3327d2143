"""Prefix caching with PLPHP under vLLM's GPU defaults (Model Runner V2, async
scheduling: blocks are cached when the scheduler allocates them, a step ahead
of the worker), eager engines: the shared system prompt hits and stays
correct, and the same image at two rates gives each its own answer."""

import pytest

from tests.integration.test_prefix_caching import (  # noqa: F401
    llm,
    ref,
    test_same_image_different_rates_each_equal_their_own_run,
    test_shared_system_prompt_hits_and_stays_correct,
)

pytestmark = pytest.mark.usefixtures("eager_engines")
