"""Send one chat completion with an image (data URL) to a PLPHP server and
print the answer and the server's PLPHP metrics.

  .venv/bin/python examples/openai_chat_image.py --base-url http://127.0.0.1:8000/v1
"""

import argparse
import urllib.request

from openai import OpenAI

from plphp_dev.fixtures.prompts import image_to_data_url, make_image
from plphp_dev.serving import wait_ready


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", default="fixture")
    ap.add_argument("--wait", type=float, default=0, help="seconds to wait for the server")
    args = ap.parse_args()
    if args.wait:
        wait_ready(args.base_url, args.wait)
    client = OpenAI(base_url=args.base_url, api_key="EMPTY")
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_to_data_url(make_image(0, 336))}},
        {"type": "text", "text": "Describe the image in detail."},
    ]}]
    resp = client.chat.completions.create(model=args.model, messages=messages, max_tokens=24, temperature=0)
    print(f"answer: {resp.choices[0].message.content!r}")
    print(f"usage : {resp.usage.prompt_tokens} prompt tokens, {resp.usage.completion_tokens} completion tokens")
    metrics_url = args.base_url.rsplit("/v1", 1)[0] + "/metrics"
    with urllib.request.urlopen(metrics_url) as r:
        lines = [l for l in r.read().decode().splitlines() if l.startswith("vllm:plphp")]
    for line in lines:
        print("metric:", line)


if __name__ == "__main__":
    main()
