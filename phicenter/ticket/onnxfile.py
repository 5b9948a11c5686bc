"""A ticket's network as an ONNX model (torch.onnx), checked in onnxruntime on the CPU against torch's outputs.
onnx and onnxruntime are an optional extra (`pip install 'phicenter[onnx]'`); nothing here is imported
before it is asked for."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from phicenter.ticket.encoding import TicketError

INSTALL = "pip install 'phicenter[onnx]'"
OPSET = 17


def missing() -> str | None:
    """None when onnx and onnxruntime import, else the line that says what to install."""
    absent = []
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            absent.append(module)
    if not absent:
        return None
    return f"--onnx needs {' and '.join(absent)}, which {'is' if len(absent) == 1 else 'are'} not installed: {INSTALL}"


def export(net: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX model of `net` (eval mode, CPU) for float inputs shaped like `example`, any batch size (input
    `images`, output `logits`). TorchScript-based torch.onnx.export (dynamo=False): it needs only torch to
    write the file, and every layer of phicenter's models (Conv, Linear, BatchNorm, ReLU, pooling, flatten,
    addition) has an ONNX operator of opset 17."""
    net = net.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            net,
            (example,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


def max_difference(data: bytes, net: nn.Module, x: torch.Tensor, tolerance: float = 1e-5) -> float:
    """Run the ONNX model in onnxruntime (CPU) on x and compare with net(x): the largest absolute difference of
    the logits. TicketError when it exceeds `tolerance` or the model does not load."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(onnx.load_from_string(data))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(["logits"], {"images": x.detach().cpu().numpy()})[0])
    except Exception as e:
        raise TicketError(
            f"the ONNX model does not run in onnxruntime ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    with torch.no_grad():
        want = net.eval()(x)
    if got.shape != want.shape:
        raise TicketError(f"onnxruntime gives logits of shape {tuple(got.shape)}, torch {tuple(want.shape)}")
    diff = float((got - want).abs().max()) if got.numel() else 0.0
    if not diff <= tolerance:
        raise TicketError(f"onnxruntime's logits differ from torch's by {diff:.3g} (more than {tolerance:g})")
    return diff
