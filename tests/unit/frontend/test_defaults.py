"""PLPHP's CPU default KV block size: set only when the user gave none, only on
CPU, only for `--attention-backend plphp` (through the real, patched
`EngineArgs.create_engine_config`; no engine is started)."""

from types import SimpleNamespace

from vllm.engine.arg_utils import EngineArgs

from vllm_plphp.frontend.defaults import CPU_BLOCK_SIZE, choose_block_size

CPU = SimpleNamespace(is_cpu=lambda: True)
CUDA = SimpleNamespace(is_cpu=lambda: False)


def test_unset_block_size_becomes_the_cpu_default():
    args = EngineArgs(model="m", attention_backend="plphp")
    choose_block_size(args, CPU)
    assert args.block_size == CPU_BLOCK_SIZE == 32


def test_explicit_block_size_and_other_platforms_are_left_alone():
    args = EngineArgs(model="m", attention_backend="plphp", block_size=128)
    choose_block_size(args, CPU)
    assert args.block_size == 128
    args = EngineArgs(model="m", attention_backend="plphp")
    choose_block_size(args, CUDA)
    assert args.block_size is None


def block_size(llava_path, **kw) -> int:
    args = EngineArgs(model=llava_path, dtype="float32", max_model_len=2048,
                      kv_cache_memory_bytes=64 << 20, **kw)
    return args.create_engine_config().cache_config.block_size


def test_engine_config_gets_it_for_plphp_only(llava_path):
    assert block_size(llava_path, attention_backend="plphp") == 32
    assert block_size(llava_path, attention_backend="plphp", block_size=128) == 128
    assert block_size(llava_path) == 128  # stock keeps vLLM's CPU default
