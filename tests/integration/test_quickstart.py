"""The quick start's client part against running servers of the bundled
trained model (PLPHP and stock): every figure it prints is there and comes
from the servers."""

import pytest

from plphp_dev.quality import MODEL_DIR
from tests.server import Server

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(),
                                reason="the trained model is not in this checkout")
ARGS = ("--max-model-len", "1024", "--served-model-name", "quality")


@pytest.fixture(scope="module")
def servers():
    plphp = Server(str(MODEL_DIR), *ARGS, plphp={})
    try:
        stock = Server(str(MODEL_DIR), *ARGS)
    except BaseException:
        plphp.stop()
        raise
    yield plphp, stock
    plphp.stop()
    stock.stop()


def test_client_prints_every_figure_from_the_servers(servers, tmp_path, capsys):
    import sys

    sys.path.insert(0, "examples")
    from quickstart_client import run

    plphp, stock = servers
    result = run(plphp.url + "/v1", stock.url + "/v1", str(tmp_path))
    printed = capsys.readouterr().out
    assert (tmp_path / "picture.png").is_file() and result["picture"] in printed
    assert result["plphp"].strip() and result["stock"].strip()
    for key in ("question", "expected", "plphp", "stock"):
        assert result[key] in printed
    assert result["requests_pruned"] == 1
    assert 0 < result["vision_tokens_kept"] <= result["vision_tokens_seen"]
    # this model: 144 vision tokens per image, layers 2..6 of 8 pruned
    assert result["vision_tokens_seen"] == 144 * 5
    assert result["kv_blocks_freed"] > 0
    assert f"{result['vision_tokens_kept']} of {result['vision_tokens_seen']}" in printed
