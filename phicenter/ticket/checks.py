"""A compact network and an ONNX model are written only once their logits match the masked network's: on the
first test images, within TOLERANCE of the largest logit. A mismatch is a TicketError in one line."""

from __future__ import annotations

import torch

from phicenter.ticket import onnxfile
from phicenter.ticket.encoding import TicketError

CHECK_IMAGES = 256  # test images the compact network and the ONNX model are checked on
TOLERANCE = 1e-5  # the largest difference of a logit allowed in those checks, relative to the largest logit


def limit(logits: torch.Tensor) -> float:
    """The largest difference allowed from `logits`: TOLERANCE of the largest of them (at least TOLERANCE): float32
    sums taken in another order differ in their last bits, in proportion to the values summed."""
    return TOLERANCE * max(1.0, float(logits.abs().max()))


def first_test_images(splits) -> torch.Tensor:
    from phicenter import data

    b = data.Batches(splits.x_test[:CHECK_IMAGES], splits.y_test[:CHECK_IMAGES], splits.mean, splits.std, CHECK_IMAGES)
    return next(iter(b))[0]


def compact_checked(t, net, x: torch.Tensor, notes: list[str]):
    """The compact ticket and its network, checked against the masked network's logits on test images x."""
    from phicenter.ticket import compacted  # the package's, which imports this module's siblings

    t = compacted(t)
    model = t.network()
    with torch.no_grad():
        want = net(x)
        diff = float((model(x) - want).abs().max())
    if not diff <= limit(want):
        raise TicketError(
            f"the compact network's logits differ from the masked one's by {diff:.3g} (more than "
            f"{limit(want):.3g}, {TOLERANCE:g} of the largest logit)"
        )
    notes.append(
        f"compact: its logits are within {diff:.2g} of the masked network's on {len(x)} test images "
        f"(largest logit {float(want.abs().max()):.3g})"
    )
    return t, model


def onnx_checked(model, splits, notes: list[str]) -> bytes:
    """The network as an ONNX model, checked in onnxruntime against torch's logits on test images."""
    x = first_test_images(splits)
    blob = onnxfile.export(model, x[:1])
    with torch.no_grad():
        want = model(x)
    diff = onnxfile.max_difference(blob, model, x, limit(want))
    notes.append(
        f"onnxruntime: the ONNX model's logits are within {diff:.2g} of torch's on {len(x)} test "
        f"images (largest logit {float(want.abs().max()):.3g})"
    )
    return blob
