"""purify: input purification for image classifiers.

Quickstart::

    >>> import torch
    >>> from purify import purify
    >>> x = torch.rand(4, 3, 32, 32)                       # images in [0, 1]
    >>> purify(x, "tvm", weight=0.1, drop_prob=0.3).shape   # masked TV minimization (the defaults)
    torch.Size([4, 3, 32, 32])
    >>> purify(x, ["tvm", ("dct", {"q": 10})]).shape        # a pipeline of stages
    torch.Size([4, 3, 32, 32])
"""

from purify.api import purify
from purify.dct import DCTQuantize, block_dct2d, block_idct2d, dct_matrix, dct_quantize
from purify.errors import (ChecksumError, DataNotFoundError, DeviceError, DTypeError, NonDifferentiableError,
                           PurifyError, RangeError, ShapeError, UnknownNameError)
from purify.gcln import GCLN, AttackDetector, CleaningGenerator, gcln_purify, load_generator
from purify.pipeline import DefendedClassifier, Pipeline, Stage, as_pipeline
from purify.registry import PurifierSpec, create_purifier, get_purifier_spec, list_purifiers
from purify.squeeze import BitDepthReduce, MedianSmooth, bit_depth_reduce, median_smooth
from purify.tv import DEFAULT_TV_ITERS, TVMinimize, bernoulli_mask, set_threads, tv_minimize
from purify.transforms import Purify
from purify.tv_reference import total_variation, tv_objective
from purify.wnll import TemplateSet, WNLLError, WNLLHead, wnll_interpolate

__version__ = "0.1.0"

__all__ = [
    "purify", "Purify",
    "tv_minimize", "TVMinimize", "bernoulli_mask", "DEFAULT_TV_ITERS", "tv_objective", "total_variation",
    "set_threads",
    "dct_quantize", "DCTQuantize", "dct_matrix", "block_dct2d", "block_idct2d",
    "bit_depth_reduce", "BitDepthReduce", "median_smooth", "MedianSmooth",
    "gcln_purify", "GCLN", "CleaningGenerator", "AttackDetector", "load_generator",
    "Pipeline", "Stage", "DefendedClassifier", "as_pipeline",
    "PurifierSpec", "create_purifier", "get_purifier_spec", "list_purifiers",
    "PurifyError", "ShapeError", "RangeError", "DTypeError", "UnknownNameError", "ChecksumError",
    "DataNotFoundError", "NonDifferentiableError", "DeviceError",
    "TemplateSet", "WNLLHead", "WNLLError", "wnll_interpolate",
]
