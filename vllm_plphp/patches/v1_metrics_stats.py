"""Target: vllm.v1.metrics.stats.SchedulerStats (adds the field `plphp`)

Why: PLPHP's counts arise in the engine core's scheduler and must reach the
API server's `/metrics` for every engine core (data parallel, across nodes
under Ray), as vLLM's own scheduler counts do. `SchedulerStats` is what vLLM
sends from each engine core to its front end with the step's outputs, but it
goes through msgspec, which encodes and decodes a dataclass by its declared
fields only: an attribute set on an instance is dropped on the way.
How: declare one more dataclass field, `plphp: dict | None = None`, on the
class itself, in every process (the plugin's `register()` runs before any
stats are encoded or decoded). The scheduler fills it (`make_stats`, in
`v1_core_sched_scheduler`) with `vllm_plphp.engine.stats.EngineStats.drain()`;
`vllm_plphp.frontend.metrics.PlphpStatLogger` reads it. Engines without PLPHP
leave it None, and msgspec fills None in for a peer that lacks the field.
vLLM versions checked: 0.32.0 (msgspec dataclass encoding, V1 and V2 runners,
sync and async scheduling, data parallel).
Remove when: vLLM's SchedulerStats offers a field for plugin statistics.
"""

import dataclasses

from vllm.v1.metrics.stats import SchedulerStats

FIELD = "plphp"


def _field() -> dataclasses.Field:
    field = dataclasses.field(default=None)
    # what @dataclass sets on each field it collects (Python 3.10-3.12)
    field.name, field.type, field._field_type = FIELD, "dict | None", dataclasses._FIELD
    return field


def apply() -> None:
    if FIELD in SchedulerStats.__dataclass_fields__:
        return
    SchedulerStats.__dataclass_fields__[FIELD] = _field()
    SchedulerStats.__annotations__[FIELD] = "dict | None"
    setattr(SchedulerStats, FIELD, None)  # the default for instances built by __init__


def revert() -> None:
    SchedulerStats.__dataclass_fields__.pop(FIELD, None)
    SchedulerStats.__annotations__.pop(FIELD, None)
    if FIELD in vars(SchedulerStats):
        delattr(SchedulerStats, FIELD)
