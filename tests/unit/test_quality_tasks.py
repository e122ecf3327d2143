"""Procedural quality tasks: deterministic from seeds, splits apart, answers
consistent with the scenes, scoring rules (no model, no engine)."""

import numpy as np
import pytest

from plphp_dev.quality import tasks
from plphp_dev.quality.metrics import exact_match, rouge_l


def _pixels(example):
    return [np.asarray(im).copy() for im in example.images]


def test_examples_are_deterministic_and_independent_of_the_count():
    a = tasks.make_examples("test", 3, seed=0)
    b = tasks.make_examples("test", 5, seed=0)
    by_key = {(e.task, i % 5): e for i, e in enumerate(b)}
    for i, e in enumerate(a):
        other = by_key[(e.task, i % 3)]
        assert (e.question, e.answer) == (other.question, other.answer)
        assert all(np.array_equal(x, y) for x, y in zip(_pixels(e), _pixels(other)))


def test_train_and_test_streams_differ():
    train = tasks.make_examples("train", 20, seed=0, tasks=("caption",))
    test = tasks.make_examples("test", 20, seed=0, tasks=("caption",))
    overlap = {e.answer for e in train} & {e.answer for e in test}
    assert len(overlap) < 10
    assert not any(np.array_equal(_pixels(x)[0], _pixels(y)[0]) for x, y in zip(train, test))


def test_every_task_has_its_image_count_and_a_scorable_answer():
    for e in tasks.make_examples("test", 4, seed=1):
        assert (len(e.images) >= 2) == (e.task in tasks.MULTI_IMAGE_TASKS)
        assert tasks.score(e.task, e.answer, e.answer) == 1.0
        assert tasks.prompt_text(e).count(tasks.IMAGE_TOKEN) == len(e.images)
        assert 0.0 <= tasks.chance_score(e.task) < 0.6


def test_scoring_rules():
    assert exact_match("Red.", "red") == 1.0
    assert exact_match("the circle", "circle") == 1.0
    assert exact_match("3", "three") == 1.0
    assert exact_match("blue", "red") == 0.0
    assert rouge_l("a red circle top", "a red circle top left") == pytest.approx(2 * 4 / 9)
    with pytest.raises(ValueError):
        tasks.score("nope", "a", "a")
