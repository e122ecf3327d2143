"""Per-request PLPHP settings from ``SamplingParams.extra_args["plphp"]``.

OpenAI clients send them as ``extra_body={"vllm_xargs": {"plphp": ...}}``:
``false`` skips pruning for the request, a JSON object overrides fields
(``{"r": 0.3}``); ``true`` or absent uses the server's settings.
"""

from __future__ import annotations

import json

from vllm_plphp.config import PlphpConfig, PlphpConfigError

OVERRIDABLE = ("r", "delta_r", "alpha", "beta", "gqa_reduce")


def parse_override(base: PlphpConfig, value) -> PlphpConfig | None:
    """Returns the request's config, or None when it opts out of pruning."""
    if value is None or value is True:
        return base
    if value is False:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise PlphpConfigError(
                f"vllm_xargs.plphp={value!r} is not JSON (allowed: true, false, "
                f"or an object with keys {list(OVERRIDABLE)})"
            ) from None
        return parse_override(base, value)
    if not isinstance(value, dict):
        raise PlphpConfigError(
            f"vllm_xargs.plphp={value!r} is not allowed (allowed: true, false, "
            f"or an object with keys {list(OVERRIDABLE)})"
        )
    unknown = sorted(set(value) - set(OVERRIDABLE))
    if unknown:
        raise PlphpConfigError(
            f"vllm_xargs.plphp has unknown key(s) {unknown} (allowed: {list(OVERRIDABLE)})"
        )
    try:
        return base.replace(**value)
    except PlphpConfigError as e:
        raise PlphpConfigError(f"vllm_xargs.{e}") from None


def config_for_request(base: PlphpConfig, sampling_params) -> PlphpConfig | None:
    extra = getattr(sampling_params, "extra_args", None) or {}
    return parse_override(base, extra.get("plphp"))
