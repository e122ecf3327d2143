"""Offline batch inference with PLPHP: `LLM.generate` with raw prompts and
`LLM.chat` with OpenAI-style messages, on the bundled LLaVA fixture.

  .venv/bin/python examples/offline_generate_chat.py [--model PATH]
"""

import argparse

from vllm import LLM, SamplingParams

from plphp_dev.fixtures import build_fixture
from plphp_dev.fixtures.prompts import chat_messages, prompt_inputs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="model path (default: the LLaVA fixture)")
    args = ap.parse_args()
    llm = LLM(
        model=args.model or build_fixture("llava"),
        attention_backend="plphp",
        additional_config={"plphp": {"r": 0.4, "delta_r": 0.3}},
        dtype="float32", max_model_len=4096,
        kv_cache_memory_bytes=256 << 20, limit_mm_per_prompt={"image": 2},
    )
    params = SamplingParams(temperature=0, max_tokens=16)
    # raw prompts with images; the second request keeps everything (per-request override)
    outs = llm.generate(
        [prompt_inputs("llava", 1, 0), prompt_inputs("llava", 2, 3)],
        [params, SamplingParams(temperature=0, max_tokens=16, extra_args={"plphp": {"r": 1.0, "delta_r": 0.0}})],
    )
    for o in outs:
        print("generate:", repr(o.outputs[0].text))
    # chat messages with image data URLs, rendered by the model's chat template
    for o in llm.chat([chat_messages("llava", 1, seed=5), chat_messages("llava", 0)], params):
        print("chat    :", repr(o.outputs[0].text))


if __name__ == "__main__":
    main()
