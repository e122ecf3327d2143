"""configs/*.yaml: every `vllm serve --config` file loads with vLLM's own
serve argument parser, selects the PLPHP backend and carries a valid plphp
section (the paper's settings); each names its model in its first line."""

from pathlib import Path

import pytest

from vllm_plphp.config import PlphpConfig, from_dict

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def serve_args(path: Path):
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))
    argv = ["serve", "--config", str(path)]
    if "model:" not in path.read_text():
        argv.insert(1, "/path/to/the/bundled/model")  # given on the command line
    return parser.parse_args(argv)


def test_there_is_a_config_per_verified_family_and_the_bundled_model():
    names = {p.stem for p in CONFIGS}
    assert len(CONFIGS) >= 10 and "cpu-bundled" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_with_vllms_parser(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and "PLPHP" in first
    args = serve_args(path)
    assert str(args.attention_backend).upper().endswith("PLPHP")
    config = from_dict(args.additional_config["plphp"], env={})
    assert config == PlphpConfig(r=0.4, delta_r=0.3, alpha=0.25, beta=0.1)
    assert args.model_tag or args.model
