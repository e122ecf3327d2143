"""The package logger, under vLLM's logging configuration."""

from vllm.logger import init_logger

# under the "vllm" namespace so vLLM's logging config (level, format) applies
logger = init_logger("vllm.plphp")
