"""Per-request PLPHP settings from ``SamplingParams.extra_args``.

- ``"plphp"``: ``false`` (or ``"false"``, ``0``) skips pruning for the request;
  an object or its JSON string (``{"r": 0.3}``) overrides fields; ``true`` or
  absent uses the engine's settings.
- ``"plphp_<key>"`` (e.g. ``"plphp_r": 0.3``): one field each; handy with
  OpenAI clients, whose ``extra_body={"vllm_xargs": {...}}`` takes only
  strings and numbers.
"""

from __future__ import annotations

import json

from vllm_plphp.config import PlphpConfig, PlphpConfigError

OVERRIDABLE = ("r", "delta_r", "alpha", "beta", "gqa_reduce", "policy", "k", "fastv_r", "per_head")


def parse_override(base: PlphpConfig, value) -> PlphpConfig | None:
    """Returns the request's config, or None when it opts out of pruning."""
    if value is None or value is True or value == 1:
        return base
    if value is False or value == 0:
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
    if "per_head" in value:  # vllm_xargs carries numbers and strings only
        value = {**value, "per_head": _bool(value["per_head"])}
    try:
        return base.replace(**value)
    except PlphpConfigError as e:
        raise PlphpConfigError(f"vllm_xargs.{e}") from None


def _bool(value):
    """True / False from a bool, 0 / 1, or "true" / "false" / "0" / "1" (else unchanged:
    the config names the bad value)."""
    if isinstance(value, bool):
        return value
    return {0: False, 1: True, "0": False, "1": True, "false": False,
            "true": True}.get(value.lower() if isinstance(value, str) else value, value)


def config_for_request(base: PlphpConfig, sampling_params) -> PlphpConfig | None:
    return config_from_extra_args(base, getattr(sampling_params, "extra_args", None))


def has_plphp_args(extra: dict | None) -> bool:
    return bool(extra) and any(k == "plphp" or k.startswith("plphp_") for k in extra)


def config_from_extra_args(base: PlphpConfig, extra: dict | None) -> PlphpConfig | None:
    if not has_plphp_args(extra):
        return base
    config = parse_override(base, extra.get("plphp"))
    flat = {k[len("plphp_"):]: v for k, v in extra.items() if k.startswith("plphp_")}
    if config is None or not flat:
        return config
    return parse_override(config, flat)
