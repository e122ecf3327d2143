"""The package logger, under vLLM's logging configuration."""

from vllm.logger import init_logger

logger = init_logger("vllm_plphp")
