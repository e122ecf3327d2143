"""The PLPHP metadata builder under CUDA graphs: it declares the wrapped
backend's cudagraph support (its seq_lens live in a persistent buffer, so full
graphs may replay it) and hands the kernel that buffer, written in place."""

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from vllm_plphp.core.step import StepContext
from vllm_plphp.worker import backend


def test_declares_the_stock_cudagraph_support():
    assert backend.PlphpMetadataBuilder.get_cudagraph_support(None, None) == \
        backend._StockBuilder.get_cudagraph_support(None, None)


@dataclass
class Metadata:  # the CommonAttentionMetadata fields the builder reads
    num_reqs: int
    seq_lens: torch.Tensor


def test_seq_lens_written_in_place_into_one_buffer():
    builder = backend.PlphpMetadataBuilder.__new__(backend.PlphpMetadataBuilder)
    builder.layer_names = ["model.layers.4.self_attn.attn"]
    builder.seq_lens_buf = torch.zeros(8, dtype=torch.int32)
    builder.plphp = SimpleNamespace(step=None, layer_to_group={"model.layers.4.self_attn.attn": 1})
    address = builder.seq_lens_buf.data_ptr()
    cm = Metadata(num_reqs=3, seq_lens=torch.tensor([10, 20, 30], dtype=torch.int32))
    out = builder.layer_seq_lens(cm)  # no step (capture, dummy runs): the stock lengths
    assert out.seq_lens.tolist() == [10, 20, 30] and out.seq_lens.data_ptr() == address
    builder.plphp.step = StepContext(shift=torch.tensor([[0, 0, 0, 0], [4, 0, 9, 0]], dtype=torch.int32))
    out = builder.layer_seq_lens(cm)  # layer group 1: rows 0 and 2 pruned
    assert out.seq_lens.tolist() == [6, 20, 21] and out.seq_lens.data_ptr() == address
