"""Target: vllm.entrypoints.serve.engine.serving.BaseServing._check_model

Why: bad per-request PLPHP settings are also checked in the engine's input
processor (`v1_engine_input_processor`), but that runs only after the API
server has rendered the request. By then, for a streaming request, HTTP 200
has been sent (the client gets an error event inside the stream, not a 400),
and the renderer has recorded the request's images in its multimodal cache as
sent to the engine core, so the next request with the same image is sent by
hash only and fails with HTTP 500 ("P0/P1 cache drift"). Found by
`benchmarks/soak.py`.
How: after the original model check (the first thing chat and completion
requests go through, before rendering), when the engine runs PLPHP and the
request carries `plphp` / `plphp_<key>` vllm_xargs, parse them against the
engine's settings; a bad value returns vLLM's 400 error response naming the
field.
vLLM versions checked: 0.32.0.
Remove when: vLLM validates SamplingParams.extra_args before rendering, or
lets plugins validate them.
"""

from vllm.entrypoints.serve.engine.serving import BaseServing

from vllm_plphp.config import PlphpConfigError, from_vllm_config
from vllm_plphp.patches import original, patch, plphp_selected
from vllm_plphp.request_config import config_from_extra_args, has_plphp_args


async def _check_model(self, request):
    error = await original(BaseServing, "_check_model")(self, request)
    xargs = getattr(request, "vllm_xargs", None)
    if error is not None or not has_plphp_args(xargs):
        return error
    vllm_config = getattr(getattr(self, "engine_client", None), "vllm_config", None)
    if vllm_config is None or not plphp_selected(vllm_config):
        return None
    base = getattr(self, "_plphp_base", None)
    if base is None:
        base = self._plphp_base = from_vllm_config(vllm_config)
    try:
        config_from_extra_args(base, xargs)
    except PlphpConfigError as e:
        return self.create_error_response(str(e), param="vllm_xargs.plphp")
    return None


def apply() -> None:
    patch(BaseServing, "_check_model", _check_model)
