"""Target: vllm.v1.engine.llm_engine.StatLoggerManager (the name LLMEngine
builds its stat loggers with)

Why: `vllm serve` (AsyncLLM) loads stat loggers registered under the
`vllm.stat_logger_plugins` entry-point group, where PLPHP's
(`vllm_plphp.frontend.metrics.PlphpStatLogger`) is; the offline engine
(`vllm.LLM` -> LLMEngine) does not, so `LLM(..., disable_log_stats=False)`
would show vLLM's metrics in `llm.get_metrics()` but not PLPHP's.
How: LLMEngine's module-level name is rebound to a subclass whose `__init__`
adds PlphpStatLogger to the custom loggers when it is not there yet. Engines
without PLPHP get a logger that registers nothing.
vLLM versions checked: 0.32.0.
Remove when: LLMEngine loads `vllm.stat_logger_plugins` as AsyncLLM does.
"""

import vllm.v1.engine.llm_engine as llm_engine
from vllm.v1.metrics.loggers import StatLoggerManager

from vllm_plphp.frontend.metrics import PlphpStatLogger
from vllm_plphp.patches import patch


class PlphpStatLoggerManager(StatLoggerManager):
    def __init__(self, vllm_config, *args, custom_stat_loggers=None, **kwargs):
        loggers = list(custom_stat_loggers or [])
        if PlphpStatLogger not in loggers:
            loggers.append(PlphpStatLogger)
        super().__init__(vllm_config, *args, custom_stat_loggers=loggers, **kwargs)


def apply() -> None:
    patch(llm_engine, "StatLoggerManager", PlphpStatLoggerManager)
