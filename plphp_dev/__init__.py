"""Development code of vllm-plphp, kept out of the runtime package
`vllm_plphp` (what `vllm serve` runs): tiny locally built fixture models
(`fixtures`), the independent HF-transformers reference of PLPHP/FastV/VTW
(`reference`, the test oracle) and the procedural vision tasks of the quality
benchmark (`quality`). Installed by the same distribution so tests, benchmarks
and examples import it; nothing in `vllm_plphp` imports it."""
