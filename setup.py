"""vllm-plphp: PLPHP (Per-Layer Per-Head vision token pruning) as a vLLM plugin."""

from setuptools import find_packages, setup

setup(
    name="vllm-plphp",
    version="0.1.0",
    description="PLPHP per-layer per-head vision token pruning for vLLM (v1 engine)",
    python_requires=">=3.10",
    packages=find_packages(include=["vllm_plphp", "vllm_plphp.*", "plphp_dev", "plphp_dev.*"]),
    package_data={"vllm_plphp.configs": ["*.json"], "vllm_plphp.patches": ["README.md"],
                  "vllm_plphp.core": ["csrc/*.c"],  # the CPU pruning kernel, built on first use
                  # the trained quality model the quick start serves (11 MB)
                  "plphp_dev.quality": ["model/*"]},
    install_requires=["vllm>=0.32,<0.33"],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout", "openai>=1.0", "matplotlib"],
        "ray": ["ray[default]"],
    },
    entry_points={
        "vllm.general_plugins": ["plphp = vllm_plphp:register"],
        # PLPHP's counters on /metrics (vllm_plphp/frontend/metrics.py)
        "vllm.stat_logger_plugins": ["plphp = vllm_plphp.frontend.metrics:PlphpStatLogger"],
        "console_scripts": ["vllm-plphp = vllm_plphp.cli:main"],
    },
)
