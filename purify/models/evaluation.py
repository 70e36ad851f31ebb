"""Top-1 accuracy of a classifier over a dataset split, in fixed-size batches.

An evaluation utility for tests and benchmarks: it runs under ``torch.inference_mode()``
because it returns a count, never a tensor that could need gradients.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from purify._checks import check_int
from purify.data import Dataset
from purify.errors import DTypeError

__all__ = ["count_correct"]


def count_correct(model: nn.Module, dataset: Dataset, *, batch_size: int = 500,
                  device: torch.device | str | None = None, progress: bool = False) -> int:
    """Number of images of ``dataset`` whose argmax logit equals the label.

    The model is called on float images in [0, 1] (see :meth:`purify.data.Dataset.tensors`) and is
    expected to be in eval mode; its mode is not changed here.

    Args:
        model: classifier taking (B, C, H, W) in [0, 1] and returning logits (B, K).
        dataset: the split to evaluate.
        batch_size: images per forward pass.
        device: where to run (default: the device of the model's first parameter, else CPU).
        progress: show a tqdm progress bar.

    Example:
        >>> from purify.models import create_model
        >>> from purify.data import load_dataset
        >>> count_correct(create_model("resnet20", pretrained=True), load_dataset("cifar10"))  # doctest: +SKIP
        9173
    """
    fn = "count_correct"
    if not isinstance(model, nn.Module):
        raise DTypeError(f"{fn}: expected model to be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dataset, Dataset):
        raise DTypeError(f"{fn}: expected dataset to be a purify.data.Dataset, got {type(dataset).__name__}; "
                         "load one with purify.data.load_dataset()")
    check_int(fn, batch_size, name="batch_size", low=1)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    correct = 0
    starts = range(0, len(dataset), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc=f"{dataset.name}/{dataset.split}", unit="batch", disable=not progress):
            x, y = dataset.tensors(slice(start, start + batch_size), device=device)
            correct += int((model(x).argmax(dim=1) == y).sum())
    return correct
