"""Prefix caching with PLPHP under vLLM's GPU defaults (Model Runner V2, async
scheduling: the scheduler runs a step ahead of the worker, so a request's
prune event, which hands its unpruned prompt blocks to the cache, arrives a
step later), eager engines: the shared system prompt hits; the same image
at two rates, turn 2 of a chat and a second chat about a picture still being
decoded hit through the image and answer as the reference; copies stay
private; aborts around the copy leak nothing."""

import pytest

from tests.integration.test_prefix_caching import (  # noqa: F401
    llm,
    ref,
    test_a_second_chat_hits_while_the_first_decodes,
    test_abort_around_the_copy_leaks_nothing,
    test_pruned_copies_are_private_and_nothing_leaks,
    test_same_image_different_rates_each_equal_their_own_run,
    test_second_turn_hits_through_the_image,
    test_shared_system_prompt_hits_and_stays_correct,
)

pytestmark = pytest.mark.usefixtures("eager_engines")
