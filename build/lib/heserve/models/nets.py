"""Recipes for the shipped networks, trained deterministically on scikit-learn's digits (torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from heserve.models.recipes import RANDOM_STATE, TEST_SIZE

DIGIT_SCALE = 16.0  # pixel values are 0..16


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = load_digits()
    return train_test_split(data.data, data.target, test_size=TEST_SIZE, random_state=RANDOM_STATE,
                            stratify=data.target)


def upsample_28(x: np.ndarray) -> np.ndarray:
    """8x8 digits to 28x28 by bilinear interpolation (MNIST's size), flattened to 784 columns."""
    from scipy.ndimage import zoom

    images = x.reshape(-1, 8, 8)
    return np.stack([zoom(img, 3.5, order=1) for img in images]).reshape(len(x), 784).clip(0, DIGIT_SCALE)


def mnist_size_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_train, x_test, y_train, y_test = digits_split()
    return upsample_28(x_train), upsample_28(x_test), y_train, y_test


def _train(model, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, weight_decay: float = 1e-4) -> None:
    import torch

    torch.manual_seed(RANDOM_STATE)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(RANDOM_STATE)
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), 64):
            idx = order[start : start + 64]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy() == y).mean())


def _build(name: str, make_model, split, input_shape, directory: Path, description: str, epochs: int,
           lr: float) -> dict:
    import torch

    from heserve.models.export import torch_to_artifact

    torch.manual_seed(RANDOM_STATE)
    torch.set_num_threads(1)  # bitwise-reproducible training
    x_train, x_test, y_train, y_test = split()
    x_train, x_test = x_train / DIGIT_SCALE, x_test / DIGIT_SCALE
    model = make_model()
    _train(model, x_train.reshape(len(x_train), *input_shape), y_train, epochs, lr)
    model.eval()
    accuracy = _accuracy(model, x_test.reshape(len(x_test), *input_shape), y_test)
    n_in = int(np.prod(input_shape))
    torch_to_artifact(
        model, input_shape, directory, name, x_sample=x_train.reshape(len(x_train), -1), description=description,
        preprocess={"type": "standardize", "mean": [0.0] * n_in, "scale": [DIGIT_SCALE] * n_in},
        postprocess={"type": "softmax", "classes": list(range(10))},
        input_names=[f"pixel_{i}" for i in range(n_in)],
        training={"dataset": "sklearn.datasets.load_digits", "test_size": TEST_SIZE, "random_state": RANDOM_STATE,
                  "epochs": epochs, "test_accuracy": round(accuracy, 4)},
    )
    return {"name": name, "test_accuracy": accuracy}


def build_digits_mlp(directory: Path) -> dict:
    from torch import nn

    from heserve.models.nn import Square

    return _build("digits-mlp", lambda: nn.Sequential(nn.Linear(64, 32), Square(), nn.Linear(32, 10)),
                  digits_split, (64,), directory, "MLP 64-32-square-10 on 8x8 digits.", epochs=60, lr=3e-3)


def build_digits_cnn(directory: Path) -> dict:
    from torch import nn

    from heserve.models.nn import Square

    return _build(
        "digits-cnn",
        lambda: nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), Square(), nn.Flatten(), nn.Linear(128, 10)),
        digits_split, (1, 8, 8), directory,
        "CryptoNets-style CNN on 8x8 digits: conv 8x3x3 stride 2, square, dense 128-10.", epochs=60, lr=3e-3,
    )


def build_mnist_size_mlp(directory: Path) -> dict:
    from torch import nn

    from heserve.models.nn import Square

    return _build("mnist-size-mlp", lambda: nn.Sequential(nn.Linear(784, 128), Square(), nn.Linear(128, 10)),
                  mnist_size_split, (784,), directory,
                  "MLP 784-128-square-10 on digits upsampled to 28x28 (CryptoNets-scale layers).", epochs=40, lr=1e-3)


NETWORK_RECIPES = {
    "digits-mlp": build_digits_mlp,
    "digits-cnn": build_digits_cnn,
    "mnist-size-mlp": build_mnist_size_mlp,
}
