"""PLPHP settings (and the FastV / VTW baselines' ones, `policy`): one
validated dataclass, read once per process.

Sources, lowest to highest precedence:
  1. defaults below (the paper's: r=0.4, delta_r=0.3, alpha=0.25, beta=0.1);
  2. environment variables ``PLPHP_<FIELD>`` (e.g. ``PLPHP_R=0.3``; vLLM reserves
     ``VLLM_*`` and warns on names it does not know, so the old ``VLLM_PLPHP_<FIELD>``
     names are refused with the new name);
  3. ``additional_config={"plphp": {...}}`` / ``--additional-config '{"plphp": {...}}'``
     (a preset file name from ``vllm_plphp/configs/`` may be given as ``{"plphp": {"preset": "..."}}``).
A bad value raises ``PlphpConfigError`` naming the field, the value and the range.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

ENV_PREFIX = "PLPHP_"
OLD_ENV_PREFIX = "VLLM_PLPHP_"


class PlphpConfigError(ValueError):
    """Invalid PLPHP setting; the message names field, value and allowed range."""


@dataclass(frozen=True)
class PlphpConfig:
    r: float = 0.4  # base retention rate of a balanced layer
    delta_r: float = 0.3  # added for vision-attentive, removed for indifferent layers
    alpha: float = 0.25  # gamma_l >= alpha -> vision-attentive
    beta: float = 0.1  # gamma_l < beta -> vision-indifferent
    gqa_reduce: str = "mean"  # how a KV head scores a token from its query heads
    skip_first: int = 2  # leading decoder layers that keep everything
    skip_last: int = 1  # trailing decoder layers that keep everything
    policy: str = "plphp"  # "plphp" | "fastv" | "vtw" (vllm_plphp.core.policies)
    k: int = 2  # FastV / VTW: first layer without the dropped vision tokens
    fastv_r: float = 0.5  # FastV: fraction R of vision tokens dropped
    # PLPHP ablation (paper's per-head claim): False -> every KV head of a layer
    # keeps the same top K_j, ranked by the attention averaged over all query
    # heads (same counts as per-head). The layer-rule ablation needs no switch:
    # delta_r=0 gives every pruned layer the rate r.
    per_head: bool = True
    # Engine-wide (not per request): the stock attention backend PLPHP wraps,
    # "auto" = vLLM's own pick on the platform (vllm_plphp.selection), and the
    # pruning kernels: "auto" (fused Triton on CUDA, the C kernel of
    # core/cpu_kernel.py on CPU_ATTN float32 / bfloat16 caches, batched torch
    # ops elsewhere), "triton" (also on CPU tensors under TRITON_INTERPRET=1,
    # for tests), "torch" (batched torch ops everywhere).
    backend: str = "auto"
    kernels: str = "auto"

    def __post_init__(self) -> None:
        _check_range("r", self.r, 0.0, 1.0)
        _check_range("delta_r", self.delta_r, 0.0, 1.0)
        _check_range("alpha", self.alpha, 0.0, 1.0)
        _check_range("beta", self.beta, 0.0, 1.0)
        if self.delta_r > self.r:
            raise PlphpConfigError(
                f"plphp.delta_r={self.delta_r} must be <= plphp.r={self.r} "
                "(allowed: 0 <= delta_r <= r <= 1 - delta_r)"
            )
        if self.r > 1.0 - self.delta_r + 1e-12:
            raise PlphpConfigError(
                f"plphp.r={self.r} must be <= 1 - delta_r = {1.0 - self.delta_r:g} "
                "(allowed: 0 <= delta_r <= r <= 1 - delta_r)"
            )
        if self.beta > self.alpha:
            raise PlphpConfigError(
                f"plphp.beta={self.beta} must be <= plphp.alpha={self.alpha} "
                "(allowed: 0 <= beta <= alpha <= 1)"
            )
        if self.gqa_reduce not in ("mean", "max"):
            raise PlphpConfigError(
                f"plphp.gqa_reduce={self.gqa_reduce!r} is not allowed "
                "(allowed: 'mean', 'max')"
            )
        from vllm_plphp.core.policies import POLICIES

        if self.policy not in POLICIES:
            raise PlphpConfigError(
                f"plphp.policy={self.policy!r} is not allowed "
                f"(allowed: {', '.join(map(repr, POLICIES))})"
            )
        _check_range("fastv_r", self.fastv_r, 0.0, 1.0)
        if self.policy == "fastv" and isinstance(self.k, int) and self.k < 1:
            raise PlphpConfigError(
                f"plphp.k={self.k!r} is not allowed with policy 'fastv' "
                "(allowed: integer >= 1; layer k-1 ranks the vision tokens)"
            )
        if not isinstance(self.per_head, bool):
            raise PlphpConfigError(
                f"plphp.per_head={self.per_head!r} is not allowed (allowed: true, false)"
            )
        from vllm_plphp.selection import REFUSED, SUPPORTED, check

        if self.backend != "auto":
            if self.backend not in SUPPORTED and self.backend not in REFUSED:
                raise PlphpConfigError(
                    f"plphp.backend={self.backend!r} is not allowed "
                    f"(allowed: 'auto', {', '.join(map(repr, SUPPORTED))})")
            check(self.backend, "plphp.backend")
        if self.kernels not in ("auto", "triton", "torch"):
            raise PlphpConfigError(
                f"plphp.kernels={self.kernels!r} is not allowed (allowed: 'auto', 'triton', 'torch')")
        for name in ("skip_first", "skip_last", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PlphpConfigError(
                    f"plphp.{name}={value!r} is not allowed (allowed: integer >= 0)"
                )

    def category(self, gamma: float) -> str:
        """The paper's layer categories: "A" vision-attentive (gamma >= alpha),
        "I" vision-indifferent (gamma < beta), "B" balanced otherwise."""
        if gamma >= self.alpha:
            return "A"
        return "I" if gamma < self.beta else "B"

    def layer_rate(self, gamma: float) -> float:
        """Retention rate r_l of a layer whose vision attention score is gamma."""
        return {"A": self.r + self.delta_r, "I": self.r - self.delta_r, "B": self.r}[
            self.category(gamma)]

    def is_pruned_layer(self, layer_idx: int, num_layers: int) -> bool:
        """0-indexed decoder layer; the paper prunes layers 2 .. N-2."""
        return self.skip_first <= layer_idx < num_layers - self.skip_last

    def replace(self, **changes) -> "PlphpConfig":
        return dataclasses.replace(self, **changes)


def _check_range(name: str, value, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlphpConfigError(
            f"plphp.{name}={value!r} is not a number (allowed: {lo} <= {name} <= {hi})"
        )
    if not lo <= value <= hi:
        raise PlphpConfigError(
            f"plphp.{name}={value} is out of range (allowed: {lo} <= {name} <= {hi})"
        )


_FIELD_TYPES = {f.name: f.type for f in fields(PlphpConfig)}


def _coerce(name: str, raw: str):
    kind = _FIELD_TYPES[name]
    try:
        if kind == "float":
            return float(raw)
        if kind == "int":
            return int(raw)
        if kind == "bool":
            return {"1": True, "true": True, "0": False, "false": False}[raw.strip().lower()]
    except KeyError:
        raise PlphpConfigError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid bool (allowed: 1, 0, true, false)"
        ) from None
    except ValueError:
        raise PlphpConfigError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}"
        ) from None
    return raw


def preset_dir() -> Path:
    """The presets folder (``vllm_plphp/configs/``)."""
    import vllm_plphp.configs

    return Path(vllm_plphp.configs.__file__).parent


def load_preset(name: str) -> dict:
    path = preset_dir() / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in preset_dir().glob("*.json"))
        raise PlphpConfigError(f"plphp.preset={name!r} is unknown (allowed: {known})")
    return json.loads(path.read_text())


def from_dict(values: dict | None, env: dict | None = None) -> PlphpConfig:
    """Build the config from env vars and an ``additional_config["plphp"]`` dict."""
    env = os.environ if env is None else env
    old = sorted(k for k in env if k.startswith(OLD_ENV_PREFIX) and k[len(OLD_ENV_PREFIX):].lower()
                 in _FIELD_TYPES)
    if old:
        raise PlphpConfigError(
            f"{old[0]} is no longer read: PLPHP's environment variables are "
            f"{ENV_PREFIX}<KEY> (e.g. {ENV_PREFIX}{old[0][len(OLD_ENV_PREFIX):]})")
    merged: dict = {}
    for name in _FIELD_TYPES:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            merged[name] = _coerce(name, raw)
    values = dict(values or {})
    preset = values.pop("preset", None)
    if preset is not None:
        merged.update(load_preset(preset))
    unknown = sorted(set(values) - set(_FIELD_TYPES))
    if unknown:
        raise PlphpConfigError(
            f"unknown plphp setting(s) {unknown} (allowed: {sorted(_FIELD_TYPES)})"
        )
    merged.update(values)
    return PlphpConfig(**merged)


def from_vllm_config(vllm_config) -> PlphpConfig:
    additional = getattr(vllm_config, "additional_config", None) or {}
    section = additional.get("plphp") if isinstance(additional, dict) else None
    if section is not None and not isinstance(section, dict):
        raise PlphpConfigError(
            f"additional_config.plphp must be a JSON object, got {section!r}"
        )
    return from_dict(section)
