"""The token check of the GPU check (run.py): vLLM's greedy tokens, stock and
PLPHP, against the HF reference (plphp_dev/reference.py), and PLPHP's kept
counts per layer against the reference's."""

from __future__ import annotations

import os
import time

from report import SUMMARY, Phase, log

CASES = [(1, 0), (2, 3), (0, 0), (1, 5), (4, 7)]  # (num_images, seed): the tests' + a 4-image one


def reference_tokens(ref, tokens: int) -> dict:
    """{("stock" | "plphp", case): (token ids, per-layer records)}."""
    from plphp_dev.fixtures.prompts import get_prompt
    from vllm_plphp.config import PlphpConfig

    t = time.perf_counter()
    out = {}
    for i, (n, seed) in enumerate(CASES):
        text, images = get_prompt("llava", n, seed)
        out[("stock", i)] = ref.generate(text, images, tokens, None)
        out[("plphp", i)] = ref.generate(text, images, tokens, PlphpConfig())
    log(f"HF reference computed in {time.perf_counter() - t:.1f} s")
    return out


class Reference:
    """The HF reference (float32 on CPU: the oracle, as in the test suite). Loaded
    here, so that every import happens in the main thread; its tokens are computed
    in a thread while the first engines start (their start is spent in the engine
    processes); `get` waits for them."""

    def __init__(self, model: str, tokens: int):
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from plphp_dev.fixtures.prompts import get_prompt
        from plphp_dev.reference import ReferenceModel

        torch.set_num_threads(min(8, os.cpu_count() or 1))
        ref = ReferenceModel(model)
        text, images = get_prompt("llava", 1, 0)
        ref.processor(text=[text], images=images, return_tensors="pt")  # its lazy imports
        self.future = ThreadPoolExecutor(1).submit(reference_tokens, ref, tokens)
        self.result = None

    def get(self) -> dict:
        if self.result is None:
            with Phase("reference (HF, float32, CPU; wait for the thread)", fatal=True):
                self.result = self.future.result()
        return self.result


def correctness(mode: str, stock, plphp, reference: Reference, tokens: int) -> None:
    """Greedy tokens of each engine against the reference's, per case; PLPHP's
    kept counts per layer against the reference's (plphp may be None)."""
    from vllm import SamplingParams

    from plphp_dev.fixtures.prompts import prompt_inputs

    prompts = [prompt_inputs("llava", n, seed) for n, seed in CASES]
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    engines = {"stock": stock, "plphp": plphp} if plphp is not None else {"stock": stock}
    got = {}
    for name, llm in engines.items():
        outs = llm.generate(prompts, params, use_tqdm=False)
        got[name] = [list(o.outputs[0].token_ids) for o in outs]
        if name == "plphp":
            try:
                records = llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))[0]
                got["records"] = [records.get(o.request_id) for o in outs]
            except Exception as e:
                log(f"plphp_records failed: {e!r}")
                got["records"] = [None] * len(outs)
    ref = reference.get()
    parts = []
    for name in engines:
        equal = 0
        for i, case in enumerate(CASES):
            want, mine = ref[(name, i)][0], got[name][i]
            equal += want == mine
            first = next((j for j, (a, b) in enumerate(zip(want, mine)) if a != b), None)
            log(f"{mode} {name} case {case}: {'EQUAL' if want == mine else f'differs from token {first}'}"
                f" vllm {mine} ref {want}")
        parts.append(f"{name} {equal}/{len(CASES)}")
    line = f"{mode} tokens equal to HF reference: {', '.join(parts)}"
    if plphp is not None:
        images = [i for i, (n, _) in enumerate(CASES) if n]
        kept_equal = pruned = 0
        for i in images:
            rec, ref_rec = got["records"][i], ref[("plphp", i)][1]
            if rec is None:
                continue
            mine = {int(layer): r["kept"] for layer, r in rec.items()}
            theirs = {int(layer): r["kept"] for layer, r in ref_rec.items()}
            kept_equal += mine == theirs
            pruned += any(r["kept"] < r["total"] for r in rec.values())
            if mine != theirs:
                log(f"{mode} plphp case {CASES[i]} kept per layer {mine} ref {theirs}")
        differ = sum(got["plphp"][i] != got["stock"][i] for i in images)
        line += (f"; plphp kept counts equal {kept_equal}/{len(images)}, pruned "
                 f"{pruned}/{len(images)}; plphp differs from stock on {differ}/{len(images)} "
                 "image prompts")
    log(line)
    SUMMARY.append(line)
