"""Target: vllm.v1.engine.input_processor.InputProcessor._validate_params

Why: a request's own PLPHP settings (`SamplingParams.extra_args["plphp"]`, sent
by OpenAI clients as `extra_body={"vllm_xargs": {"plphp": ...}}`) must be
checked where vLLM checks the rest of a request, so a bad value is an HTTP 400
(or a ValueError from `LLM.generate`) naming the field, and never reaches the
worker.
How: after the original, when the engine runs PLPHP and the request carries a
`plphp` / `plphp_<key>` extra arg, parse it against the engine's settings (and refuse FastV settings a pipeline
stage split cannot serve); a PlphpConfigError
becomes vLLM's VLLMValidationError (a ValueError, mapped to 400 by the server).
vLLM versions checked: 0.32.0.
Remove when: vLLM lets plugins validate extra_args.
"""

from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.input_processor import InputProcessor

from vllm_plphp.config import PlphpConfigError, from_vllm_config
from vllm_plphp.frontend.validate import fastv_stage_problem
from vllm_plphp.patches import original, patch, plphp_selected
from vllm_plphp.request_config import config_from_extra_args, has_plphp_args


def _validate_params(self, params, *args, **kwargs):
    result = original(InputProcessor, "_validate_params")(self, params, *args, **kwargs)
    extra = params.extra_args if isinstance(params, SamplingParams) else None
    if has_plphp_args(extra) and plphp_selected(self.vllm_config):
        base = getattr(self, "_plphp_base", None)
        if base is None:
            base = self._plphp_base = from_vllm_config(self.vllm_config)
        try:
            config = config_from_extra_args(base, extra)
        except PlphpConfigError as e:
            raise VLLMValidationError(str(e), parameter="vllm_xargs.plphp") from None
        problem = config and fastv_stage_problem(config, self.vllm_config)
        if problem:
            raise VLLMValidationError(f"vllm_xargs.plphp: {problem}", parameter="vllm_xargs.plphp")
    return result


def apply() -> None:
    patch(InputProcessor, "_validate_params", _validate_params)
