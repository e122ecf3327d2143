"""Target: vllm.v1.metrics.prometheus.get_prometheus_registry (and the name
`attach_router` calls it by in vllm.entrypoints.serve.instrumentator.metrics)

Why: with several API server processes (`--api-server-count N`, which
`--data-parallel-size N` implies) vLLM serves `/metrics` from a fresh
multiprocess CollectorRegistry, not from prometheus_client's global REGISTRY
where the PLPHP collector is registered, so the `vllm:plphp_*` metrics would
be missing.
How: wrap it so that a registry other than REGISTRY also gets the PLPHP
collector (`vllm_plphp.frontend.metrics`), which sums the engine cores' files.
vLLM versions checked: 0.32.0 (tests/integration/test_data_parallel.py).
Remove when: vLLM lets plugins register collectors with its metrics registry.
"""

import sys

from vllm.v1.metrics import prometheus

from vllm_plphp.patches import original, patch

_SERVE_METRICS = "vllm.entrypoints.serve.instrumentator.metrics"


def _get_prometheus_registry():
    from prometheus_client import REGISTRY

    from vllm_plphp.frontend.metrics import add_collector

    registry = original(prometheus, "get_prometheus_registry")()
    if registry is not REGISTRY:
        add_collector(registry)
    return registry


def apply() -> None:
    patch(prometheus, "get_prometheus_registry", _get_prometheus_registry)
    # an API server imported it by name before the plugin was loaded
    serve_metrics = sys.modules.get(_SERVE_METRICS)
    if serve_metrics is not None:
        patch(serve_metrics, "get_prometheus_registry", _get_prometheus_registry)
