"""Posterior-mean classification accuracy: how much label information the codes carry.

Classifiers are fitted on the posterior means E_q[z | x] of the training images and scored
on those of the evaluation images. The choice of classifier changes the numbers (PAPER.md
§3), so every result names its classifier and settings. :data:`CLASSIFIERS` is a registry of
factories returning an unfitted scikit-learn estimator, whose docstring describes it; add
your own with ``@CLASSIFIERS.register("name")``.
"""

import math

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry

CLASSIFIERS = Registry("classifier")


@CLASSIFIERS.register("logistic")
def logistic_regression():
    """multinomial logistic regression (scikit-learn LogisticRegression, lbfgs, L2 C=1.0,
    max_iter=2000) on standardised posterior means"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Standardising only changes how the L2 penalty weighs the dimensions; it makes lbfgs
    # converge within max_iter on codes of very different scales (collapsed vs active units).
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


@CLASSIFIERS.register("knn")
def nearest_neighbours():
    """k-nearest neighbours (scikit-learn KNeighborsClassifier, k=5, Euclidean, uniform
    weights) on raw posterior means"""
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=5)


def describe(name: str) -> str:
    """The one-line description, with settings, of classifier ``name`` (its docstring)."""
    return " ".join(CLASSIFIERS.get(name).__doc__.split())


def classification_accuracy(
    train_codes, train_labels, test_codes, test_labels, *, classifiers=None
) -> dict:
    """Fit each classifier on ``(train_codes, train_labels)``, score it on the test codes.

    :param train_codes: ``(N_train, D)`` posterior means (tensor or array).
    :param train_labels: ``(N_train,)`` integer labels.
    :param test_codes: ``(N_test, D)``.
    :param test_labels: ``(N_test,)``.
    :param classifiers: names in :data:`CLASSIFIERS` (default: all of them).
    :returns: ``{name: {"accuracy": float in [0, 1], "accuracy_se": binomial standard error
        √(a(1−a)/N_test), "classifier": description, "num_train": int, "num_test": int}}``.
    """
    names = CLASSIFIERS.names() if classifiers is None else list(classifiers)
    for name in names:
        CLASSIFIERS.get(name)  # an unknown name is a ConfigError listing the valid ones
    xs = [_numpy(a) for a in (train_codes, train_labels, test_codes, test_labels)]
    x_train, y_train, x_test, y_test = xs
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DataError(
            f"codes and labels differ in length: train {len(x_train)} vs {len(y_train)}, "
            f"test {len(x_test)} vs {len(y_test)}"
        )
    if len(np.unique(y_train)) < 2:
        raise DataError(
            f"need at least 2 classes among the training labels, found {np.unique(y_train).tolist()}"
        )
    results = {}
    for name in names:
        classifier = CLASSIFIERS.build(name).fit(x_train, y_train)
        accuracy = float((classifier.predict(x_test) == y_test).mean())
        results[name] = {
            "accuracy": accuracy,
            "accuracy_se": math.sqrt(accuracy * (1 - accuracy) / len(y_test)),
            "classifier": describe(name),
            "num_train": int(len(y_train)),
            "num_test": int(len(y_test)),
        }
    return results


def accuracy_metrics(results: dict, fitted_on: str = "training points") -> tuple[dict, dict]:
    """The metrics (``accuracy`` for logistic regression, ``accuracy_<name>`` for the others,
    each with ``_se``) and the estimator descriptions of
    :func:`classification_accuracy`'s ``results``."""
    values, described = {}, {}
    for name, r in results.items():
        key = "accuracy" if name == "logistic" else f"accuracy_{name}"
        values.update({key: r["accuracy"], f"{key}_se": r["accuracy_se"]})
        described[key] = f"{r['classifier']}; fitted on {r['num_train']} {fitted_on}"
    return values, described


def _numpy(a):
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        a = a.double() if a.is_floating_point() else a
        return a.numpy()
    return np.asarray(a)
