"""`model=custom`: your own constructor, the callable `model._target_` names (phicenter.targets), called with
`in_shape` (the dataset's C×H×W), `num_classes` and every undeclared `model.KEY` as keywords. What it does not
build (it raises, or returns anything but an nn.Module) is a ConfigError in one line."""

from __future__ import annotations

from torch import nn

from phicenter import targets
from phicenter.spec import ConfigError


def make(target: str, input_shape, num_classes: int, kwargs: dict) -> nn.Module:
    """The target's network for this dataset."""
    fn = targets.resolve(target, "model")
    where = f"model._target_={target}"
    try:
        net = fn(in_shape=tuple(int(s) for s in input_shape), num_classes=int(num_classes), **kwargs)
    except Exception as e:  # the user's code: one line, with what it raised
        raise ConfigError(f"{where}: calling it failed ({targets.one_line(e)})") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{where}: returned {type(net).__name__!r}, not a torch.nn.Module")
    return net
