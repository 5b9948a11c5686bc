"""A run's train, validation and test batches from its splits, through the pipeline it names."""

from __future__ import annotations

from phicenter.data.batches import Batches
from phicenter.data.errors import DataError
from phicenter.data.options import PIPELINES
from phicenter.data.splits import Splits
from phicenter.data.torchvision_pipeline import ImageDataset, LoaderBatches


def make_loaders(
    splits: Splits,
    batch_size: int,
    *,
    seed: int = 0,
    augment: bool = False,
    eval_batch_size: int | None = None,
    pipeline: str = "fast",
    num_workers: int = 0,
    group: int = 1,
):
    """(train, val, test) iterables of normalised float batches; only train is shuffled and augmented,
    and only train is grouped (lists of `group` batches, for CohortModule)."""
    eval_bs = eval_batch_size or batch_size
    s = splits
    if pipeline == "fast":
        return (
            Batches(
                s.x_train, s.y_train, s.mean, s.std, batch_size, shuffle=True, augment=augment, seed=seed, group=group
            ),
            Batches(s.x_val, s.y_val, s.mean, s.std, eval_bs),
            Batches(s.x_test, s.y_test, s.mean, s.std, eval_bs),
        )
    if pipeline == "torchvision":

        def dl(x, y, bs, train):
            ds = ImageDataset(x, y, s.mean, s.std, augment=augment and train, seed=seed)
            return LoaderBatches(ds, bs, shuffle=train, seed=seed, num_workers=num_workers, group=group if train else 1)

        return (
            dl(s.x_train, s.y_train, batch_size, True),
            dl(s.x_val, s.y_val, eval_bs, False),
            dl(s.x_test, s.y_test, eval_bs, False),
        )
    raise DataError(f"dataset.pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")


def library_versions(pipeline: str) -> dict:
    """What of a pipeline's making is not in the data, for the round key (engine.reuse): with torchvision, the
    versions of torchvision (its transforms) and Pillow (the images they crop, flip and convert), either of which
    can change the batches. Nothing for the fast pipeline, whose batches torch makes (its version is in the key's
    platform), so its keys stay what they were."""
    if pipeline != "torchvision":
        return {}
    import PIL
    import torchvision

    return {"data_libraries": {"torchvision": torchvision.__version__, "PIL": PIL.__version__}}


STEPS_PER_CALL = 64  # optimizer steps per Lightning training_step call (group) in the round loop


def eval_batch_size(s, batch_size: int) -> int:
    """The batch of validation and test: eval_batch_size, never below the training batch."""
    return max(batch_size, s.eval_batch_size)


def loaders(s, splits: Splits, batch_size: int, seed: int, group: int = 1):
    """make_loaders for a run's settings (phicenter.config.settings): dataset.pipeline (fast|torchvision),
    dataset.augment, dataset.num_workers (torchvision only), eval_batch_size; train grouped by `group`."""
    return make_loaders(
        splits,
        batch_size,
        seed=seed,
        augment=s.dataset.augment,
        eval_batch_size=eval_batch_size(s, batch_size),
        pipeline=s.dataset.pipeline,
        num_workers=s.dataset.num_workers,
        group=group,
    )


def path_batches(s, splits, split: str = "test", device="cpu"):
    """For the error on a linear path (method.linear_path): the batches the error is measured on (the split,
    in batches of `eval_batch_size`) and the training batches BatchNorm statistics are recomputed on (batches of
    batch_size, in an order seeded by the run's seed, not augmented, normalised as in training)."""
    x, y = getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}")
    eval_bs = eval_batch_size(s, s.batch_size)
    eval_b = Batches(x, y, splits.mean, splits.std, eval_bs).to(device)
    train_b = Batches(
        splits.x_train,
        splits.y_train,
        splits.mean,
        splits.std,
        s.batch_size,
        shuffle=True,
        seed=s.seed,
    ).to(device)
    return eval_b, train_b
