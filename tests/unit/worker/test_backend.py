"""The PLPHP metadata builder under CUDA graphs: it declares the wrapped
backend's cudagraph support (its seq_lens live in a persistent buffer, so full
graphs may replay it) and hands the kernel that buffer, written in place."""

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from vllm_plphp.core.step import StepContext
from vllm_plphp.worker import backend


@pytest.mark.parametrize("name", ["CPU_ATTN", "FLASH_ATTN", "TRITON_ATTN"])
def test_wraps_the_named_stock_backend(name):
    """Each wrapper subclasses the stock backend's own classes (the stock
    kernels and cudagraph support declaration stay), reads its KV layout, and
    is importable by the path the platform patch returns (and picklable)."""
    import pickle

    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    stock = AttentionBackendEnum[name].get_class()
    cls = resolve_obj_by_qualname(backend.PATH_PREFIX + name)
    assert cls is backend.wrap(name) and issubclass(cls, stock) and cls.get_name() == "PLPHP"
    impl, builder = cls.get_impl_cls(), cls.get_builder_cls()
    assert issubclass(impl, stock.get_impl_cls()) and issubclass(impl, backend.PlphpImplMixin)
    assert issubclass(builder, stock.get_builder_cls())
    assert impl.kv_layout == ("cpu" if name == "CPU_ATTN" else "split")
    assert builder.get_cudagraph_support(None, None) == \
        stock.get_builder_cls().get_cudagraph_support(None, None)
    assert pickle.loads(pickle.dumps(impl)) is impl


def test_refuses_to_wrap_other_backends():
    with pytest.raises(ValueError, match="cannot wrap FLASHINFER"):
        backend.wrap("FLASHINFER")


@dataclass
class Metadata:  # the CommonAttentionMetadata fields the builder reads
    num_reqs: int
    seq_lens: torch.Tensor


def test_seq_lens_written_in_place_into_one_buffer():
    cls = backend.wrap("CPU_ATTN").get_builder_cls()
    builder = cls.__new__(cls)
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
