"""Model kinds refused at start (vllm_plphp/frontend/models.py), each named
with its model type and reason, read from real transformers config classes
(no engine, no weights); the supported families pass."""

from types import SimpleNamespace

import pytest
import transformers as tf

from vllm_plphp.frontend.models import model_refusals
from vllm_plphp.frontend.validate import PlphpUnsupportedError, validate_engine_config


def model(hf_config, **kw):
    return SimpleNamespace(hf_config=hf_config, hf_text_config=hf_config.get_text_config(), **kw)


REFUSED = {
    "mllama": (lambda: tf.MllamaConfig(), "'mllama': cross-attention vision models"),
    "jamba": (lambda: tf.JambaConfig(), "'jamba': hybrid models with recurrent"),
    "qwen3_next": (lambda: tf.Qwen3NextConfig(), "'qwen3_next': hybrid models with recurrent (Mamba / linear-attention) layers ['linear_attention']"),
    "deepseek_v3": (lambda: tf.DeepseekV3Config(), "'deepseek_v3': MLA models"),
    "llama4": (lambda: tf.Llama4Config(), "'llama4': chunked-local attention (attention_chunk_size=8192"),
    "gemma3": (lambda: tf.Gemma3Config(), "'gemma3': sliding-window attention layers"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_model_kinds_name_type_and_reason(name):
    make, expected = REFUSED[name]
    refusals = model_refusals(model(make()))
    assert any(expected in r for r in refusals), refusals


def test_vllm_hybrid_flag_alone_is_refused():
    refusals = model_refusals(model(tf.LlamaConfig(), is_hybrid=True))
    assert refusals and "hybrid" in refusals[0]


SUPPORTED = {
    "llava": lambda: tf.LlavaConfig(),
    "qwen2_vl": lambda: tf.Qwen2VLConfig(),
    "qwen2_5_vl": lambda: tf.Qwen2_5_VLConfig(),
    "llava_onevision": lambda: tf.LlavaOnevisionConfig(),
    "idefics3": lambda: tf.Idefics3Config(),
    "mistral3": lambda: tf.Mistral3Config(),
}


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_full_attention_vlms_pass(name):
    assert model_refusals(model(SUPPORTED[name]())) == []


def test_validate_engine_config_raises_with_the_model_reason():
    from tests.unit.frontend.test_validate import config

    c = config(model_config=SimpleNamespace(use_mla=False, dtype=None, **vars(model(tf.MllamaConfig()))))
    with pytest.raises(PlphpUnsupportedError, match="'mllama': cross-attention"):
        validate_engine_config(c)
