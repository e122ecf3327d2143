"""The soak's traffic (`benchmarks/soak.py`): a seeded, bounded mix of
replayable chat requests with faults, sent through the `openai` client."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

from plphp_dev.fixtures.prompts import chat_messages

TEXT_QUESTIONS = [
    "Write a short story about a red circle and a blue square.",
    "Tell me about the weather in a small town by the sea.",
    "List some colours and shapes.",
    "What is the difference between a circle and a square?",
]
# name: (vllm_xargs, valid); valid ones are drawn with the weights below
OVERRIDES = {
    "default": (None, True),
    "r=0.3": ({"plphp_r": 0.3}, True),
    "balanced r=0.5": ({"plphp": json.dumps({"r": 0.5, "alpha": 1.0, "beta": 0.0})}, True),
    "fastv": ({"plphp": json.dumps({"policy": "fastv", "k": 2, "fastv_r": 0.75})}, True),
    "skip": ({"plphp": "false"}, True),
    "bad r": ({"plphp_r": 1.5}, False),
    "bad key": ({"plphp": json.dumps({"bogus": 1})}, False),
    "bad beta>alpha": ({"plphp_alpha": 0.05}, False),
}
OVERRIDE_WEIGHTS = {"default": 10, "r=0.3": 2, "balanced r=0.5": 2, "fastv": 2, "skip": 2,
                    "bad r": 1, "bad key": 1, "bad beta>alpha": 1}
IMAGE_WEIGHTS = {0: 3, 1: 4, 2: 2, 3: 2}
OUTPUT_LENGTHS = (24, 80, 160)  # with ignore_eos: long enough to cross KV blocks in decode


@dataclass(frozen=True)
class Prompt:
    """One replayable request: the same Prompt always gets the same greedy answer."""
    images: int
    seed: int  # image seed, or text question index
    override: str
    max_tokens: int

    def messages(self) -> list[dict]:
        if self.images == 0:
            return chat_messages("llava", 0, question=TEXT_QUESTIONS[self.seed])
        return chat_messages("llava", self.images, seed=10 * self.seed)

    def extra_body(self, with_override: bool = True) -> dict:
        xargs = OVERRIDES[self.override][0] if with_override else None
        return {"ignore_eos": True, **({"vllm_xargs": xargs} if xargs else {})}


@dataclass
class Request:
    id: int
    prompt: Prompt
    stream: bool
    sampled: bool = False
    disconnect_after: int | None = None  # chunks read before the client hangs up
    timeout: float | None = None  # client gives up on a non-streaming answer
    outcome: str = ""
    text: str = ""
    detail: str = ""
    response_id: str = ""
    prunes: int = 0  # prefills PLPHP pruned (2+: preempted and re-prefilled), from the server log


def draw(rng: random.Random, i: int, prompts: int) -> Request:
    images = rng.choices(list(IMAGE_WEIGHTS), weights=list(IMAGE_WEIGHTS.values()))[0]
    seed = rng.randrange(len(TEXT_QUESTIONS) if images == 0 else prompts)
    override = rng.choices(list(OVERRIDE_WEIGHTS), weights=list(OVERRIDE_WEIGHTS.values()))[0]
    if images == 0 and OVERRIDES[override][1]:
        override = "default"  # text is never pruned: one replayable text answer per question
    prompt = Prompt(images, seed, override, OUTPUT_LENGTHS[(images + seed) % len(OUTPUT_LENGTHS)])
    req = Request(i, prompt, stream=rng.random() < 0.5, sampled=rng.random() < 0.1)
    fault = rng.random()
    if fault < 0.12 and prompt.max_tokens > 24:
        req.stream, req.disconnect_after = True, rng.randint(1, 8)
    elif fault < 0.17 and prompt.max_tokens == OUTPUT_LENGTHS[-1]:
        req.stream, req.timeout = False, rng.uniform(0.5, 2.0)
    return req


async def send(client, req: Request) -> None:
    import openai

    p = req.prompt
    kw = dict(model="fixture", messages=p.messages(), max_tokens=p.max_tokens,
              temperature=1.0 if req.sampled else 0.0, extra_body=p.extra_body())
    # sampled requests carry no `seed`: vLLM 0.32 on CPU kills the engine when a seeded request's
    # prefill is chunked (gpu_model_runner._bookkeeping_sync rewinds its generator: "CPU Generator
    # does not use offset"), with or without PLPHP; found by this soak
    try:
        if req.stream:
            stream = await client.chat.completions.create(
                **kw, stream=True, stream_options={"include_usage": True})
            parts, chunks, tokens = [], 0, None
            async for chunk in stream:
                req.response_id = chunk.id
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                    chunks += 1
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                if req.disconnect_after is not None and chunks >= req.disconnect_after:
                    await stream.close()
                    req.outcome = "disconnect"
                    return
            req.text = "".join(parts)
        else:
            resp = await client.chat.completions.create(**kw, timeout=req.timeout or 900)
            req.text, tokens = resp.choices[0].message.content or "", resp.usage.completion_tokens
            req.response_id = resp.id
        req.outcome = "ok" if tokens == p.max_tokens else "error"
        req.detail = "" if req.outcome == "ok" else f"{tokens} tokens instead of {p.max_tokens}"
    except openai.BadRequestError as e:
        req.outcome, req.detail = "400", str(e)[:300]
    except openai.APITimeoutError:
        req.outcome = "timeout"
    except Exception as e:  # noqa: BLE001 (any other failure is a loss, reported below)
        req.outcome, req.detail = "error", f"{type(e).__name__}: {str(e)[:300]}"


async def traffic(url: str, args) -> list[Request]:
    from openai import AsyncOpenAI

    rng = random.Random(args.seed)
    slots = asyncio.Semaphore(args.max_inflight)
    done: list[Request] = []

    async def one(req: Request):
        try:
            await send(client, req)
        finally:
            slots.release()
        done.append(req)

    async with AsyncOpenAI(base_url=url + "/v1", api_key="EMPTY", max_retries=0, timeout=900) as client:
        tasks, start, i = [], time.monotonic(), 0
        while time.monotonic() - start < args.duration:
            await asyncio.sleep(rng.expovariate(args.rate))
            await slots.acquire()
            tasks.append(asyncio.create_task(one(draw(rng, i, args.prompts))))
            i += 1
        print(f"[soak] {i} requests sent in {time.monotonic() - start:.0f} s; draining", flush=True)
        await asyncio.wait(tasks, timeout=args.drain_timeout)
    return done + [Request(-1, Prompt(0, 0, "default", 0), False, outcome="error",
                           detail="not finished after the drain timeout")] * (i - len(done))
