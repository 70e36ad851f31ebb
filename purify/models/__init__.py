"""Classifiers with pretrained weights: CIFAR-10 ResNet-20 / ResNet-56, and the shipped small CNN.

Every model from :func:`create_model` takes images in [0, 1] (normalization is inside) and is
returned in eval mode::

    >>> from purify.models import create_model, list_models
    >>> list_models()
    ['cnn_cifar10_gda', 'cnn_cifar10_gda_brelu', 'cnn_mnist_gda', 'cnn_mnist_gda_brelu', 'convnet_cifar10_dd',
     'lenet5_mnist', 'lenet5_mnist_at', 'lenet5_mnist_fgsm_rs', 'lenet_mnist_dd', 'mlp_mnist_dd', 'resnet20',
     'resnet20_cifar10_at', 'resnet56', 'resnet56_tvm_aug', 'resnet56_tvm_data', 'resnet56_wnll_e2e',
     'resnet56_wnll_e2e_tvm_aug', 'resnet56_wnll_e2e_tvm_data', 'small_cnn_cifar10']
    >>> model = create_model("resnet20")  # pretrained=True loads the sha256-checked checkpoint
"""

from purify.models.evaluation import count_correct
from purify.models.factory import (ModelConfig, UserModel, create_model, get_model_config, list_models,
                                   register_model, unregister_model)
from purify.models.loading import load_checkpoint, resolve_weights
from purify.models.normalize import Normalized
from purify.models.resnet_cifar import BasicBlock, CifarResNet
from purify.models.small_cnn import PackagedConfig, SmallCNN, load_packaged

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "ModelConfig",
    "Normalized",
    "PackagedConfig",
    "SmallCNN",
    "UserModel",
    "count_correct",
    "create_model",
    "get_model_config",
    "list_models",
    "load_packaged",
    "load_checkpoint",
    "register_model",
    "resolve_weights",
    "unregister_model",
]
