"""A GPyTorch deep Gaussian process: the reference model for the Bayesian reading.

Built from GPyTorch's parts (``models`` / ``likelihoods`` / ``mlls`` / ``variational``), subclassing
only what GPyTorch asks to be subclassed:

* :class:`DGPHiddenLayer` -- a :class:`gpytorch.models.deep_gps.DeepGPLayer` holding a batch of
  ``output_dims`` independent GPs (``output_dims=None``: one GP, for the regression output layer),
  each with ``num_inducing`` variational inducing points (``VariationalStrategy`` over a
  ``CholeskyVariationalDistribution``), a ScaleKernel'd ARD Matern-5/2 (or RBF) kernel and a
  linear or constant mean.
* :class:`DeepGPModel` -- a :class:`gpytorch.models.deep_gps.DeepGP`: the hidden layers and the last
  layer, whose outputs feed a ``GaussianLikelihood`` (regression, 1 output) or a
  ``SoftmaxLikelihood(num_features=num_latent, num_classes=K)`` (classification).

:func:`fit_deep_gp` trains one with mini-batch Adam on
``DeepApproximateMLL(VariationalELBO(likelihood, model, num_data=N))`` under a rich progress bar and
returns a :class:`FittedDGP`, whose :meth:`FittedDGP.predict` averages over the deep GP's samples
(``gpytorch.settings.num_likelihood_samples``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

import gpytorch
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from gpytorch.kernels import MaternKernel, RBFKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood, Likelihood, SoftmaxLikelihood
from gpytorch.means import ConstantMean, LinearMean
from gpytorch.mlls import DeepApproximateMLL, VariationalELBO
from gpytorch.models.deep_gps import DeepGP, DeepGPLayer
from gpytorch.variational import CholeskyVariationalDistribution, VariationalStrategy

__all__ = ["DGPConfig", "DGPHiddenLayer", "DeepGPModel", "FittedDGP", "fit_deep_gp"]

TASKS = ("regression", "classification")
KERNELS = ("matern", "rbf")
MEANS = ("linear", "constant")
DEFAULT_EPOCHS = {"regression": 200, "classification": 100}
MIN_DEFAULT_STEPS = 2000  # small data: default epochs grow until this many optimiser steps


# --------------------------------------------------------------------------------------------- model


class DGPHiddenLayer(DeepGPLayer):
    """One deep-GP layer: ``output_dims`` independent variational GPs over ``input_dims`` inputs.

    ``output_dims=None`` gives a single GP (a ``MultivariateNormal`` output, as GaussianLikelihood
    wants); an int gives a batch of GPs (a ``MultitaskMultivariateNormal`` with that many tasks).
    ``inducing_points`` (``(M, input_dims)`` or ``(output_dims, M, input_dims)``) sets their initial
    locations; without it they start as ``randn`` (hidden-layer outputs are roughly standard).
    """

    def __init__(
        self,
        input_dims: int,
        output_dims: int | None,
        num_inducing: int = 64,
        *,
        inducing_points: torch.Tensor | None = None,
        kernel: str = "matern",
        mean: str = "linear",
        learn_inducing_locations: bool = True,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if mean not in MEANS:
            raise ValueError(f"mean must be one of {MEANS}, got {mean!r}")
        batch_shape = torch.Size([]) if output_dims is None else torch.Size([output_dims])
        if inducing_points is None:
            inducing_points = torch.randn(*batch_shape, num_inducing, input_dims)
        else:
            inducing_points = inducing_points.detach().clone()
            if inducing_points.dim() == 2:
                inducing_points = inducing_points.expand(*batch_shape, *inducing_points.shape).clone()
            if inducing_points.shape[-1] != input_dims:
                raise ValueError(f"inducing points have {inducing_points.shape[-1]} dims, expected {input_dims}")
        num_inducing = inducing_points.shape[-2]

        variational_distribution = CholeskyVariationalDistribution(num_inducing_points=num_inducing, batch_shape=batch_shape)
        variational_strategy = VariationalStrategy(
            self, inducing_points, variational_distribution, learn_inducing_locations=learn_inducing_locations
        )
        super().__init__(variational_strategy, input_dims, output_dims)

        self.mean_module = LinearMean(input_dims, batch_shape=batch_shape) if mean == "linear" else ConstantMean(batch_shape=batch_shape)
        base = (
            MaternKernel(nu=2.5, batch_shape=batch_shape, ard_num_dims=input_dims)
            if kernel == "matern"
            else RBFKernel(batch_shape=batch_shape, ard_num_dims=input_dims)
        )
        self.covar_module = ScaleKernel(base, batch_shape=batch_shape)

    def forward(self, x: torch.Tensor) -> MultivariateNormal:
        return MultivariateNormal(self.mean_module(x), self.covar_module(x))


class DeepGPModel(DeepGP):
    """Hidden :class:`DGPHiddenLayer` s followed by the last layer (``output_dims`` outputs).

    ``output_dims=None``: one output GP (regression with a GaussianLikelihood);
    ``output_dims=L``: ``L`` latent functions (classification with a SoftmaxLikelihood).
    Calling the model on ``(N, D)`` inputs gives a distribution with a leading batch of
    ``num_likelihood_samples`` samples (the deep GP's propagated samples).
    """

    def __init__(
        self,
        input_dims: int,
        hidden_dims: Sequence[int] = (4,),
        output_dims: int | None = None,
        num_inducing: int = 64,
        *,
        inducing_points: torch.Tensor | None = None,
        kernel: str = "matern",
        hidden_mean: str = "linear",
        output_mean: str = "constant",
    ) -> None:
        super().__init__()
        layers = []
        in_dims = input_dims
        for i, width in enumerate(hidden_dims):
            layers.append(
                DGPHiddenLayer(
                    in_dims,
                    int(width),
                    num_inducing,
                    inducing_points=inducing_points if i == 0 else None,
                    kernel=kernel,
                    mean=hidden_mean,
                )
            )
            in_dims = int(width)
        self.hidden_layers = torch.nn.ModuleList(layers)
        self.last_layer = DGPHiddenLayer(
            in_dims,
            output_dims,
            num_inducing,
            inducing_points=inducing_points if not layers else None,
            kernel=kernel,
            mean=output_mean,
        )

    def forward(self, x: torch.Tensor) -> MultivariateNormal | MultitaskMultivariateNormal:
        h = x
        for layer in self.hidden_layers:
            h = layer(h)
        return self.last_layer(h)


# -------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DGPConfig:
    """How to build and train a deep GP; ``None`` fields take task-dependent defaults.

    ``epochs``: 200 for regression, 100 for classification, or more on small data (at least 2000
    optimiser steps in all). ``num_latent``: the number of latent GPs
    feeding the softmax (default: the number of classes). ``num_classes``: default ``max(y) + 1``.
    ``device``: ``None``/"auto" picks CUDA when available. ``standardize_x`` / ``standardize_y``
    train on z-scored inputs / regression targets (predictions come back in the original units).
    """

    task: str = "regression"
    hidden_dims: tuple[int, ...] = (4,)
    num_inducing: int = 64
    epochs: int | None = None
    lr: float = 0.01
    batch_size: int = 256
    num_likelihood_samples: int = 8
    num_predict_samples: int = 32
    num_latent: int | None = None
    num_classes: int | None = None
    kernel: str = "matern"
    hidden_mean: str = "linear"
    standardize_x: bool = True
    standardize_y: bool = True
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if any((not isinstance(w, (int, np.integer))) or w < 1 for w in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive ints, got {self.hidden_dims!r}")
        for name in ("num_inducing", "batch_size", "num_likelihood_samples", "num_predict_samples"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.epochs is not None and (not isinstance(self.epochs, (int, np.integer)) or self.epochs < 1):
            raise ValueError(f"epochs must be a positive int (or None for the task default), got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.num_latent is not None and (not isinstance(self.num_latent, (int, np.integer)) or self.num_latent < 1):
            raise ValueError(f"num_latent must be a positive int or None, got {self.num_latent!r}")
        if self.num_classes is not None and (not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 2):
            raise ValueError(f"num_classes must be an int >= 2 or None, got {self.num_classes!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.hidden_mean not in MEANS:
            raise ValueError(f"hidden_mean must be one of {MEANS}, got {self.hidden_mean!r}")
        if self.device not in (None, "auto", "cpu") and not str(self.device).startswith("cuda"):
            raise ValueError(f"device must be None, 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")

    def num_epochs(self, num_data: int) -> int:
        """``epochs``, or the task default raised to at least ``MIN_DEFAULT_STEPS`` steps on ``num_data`` points."""
        if self.epochs is not None:
            return int(self.epochs)
        steps_per_epoch = math.ceil(num_data / self.batch_size)
        return max(DEFAULT_EPOCHS[self.task], math.ceil(MIN_DEFAULT_STEPS / steps_per_epoch))

    def torch_device(self) -> torch.device:
        if self.device in (None, "auto"):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def with_(self, **changes: Any) -> "DGPConfig":
        return replace(self, **changes)


# ------------------------------------------------------------------------------------------- fitting


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.as_tensor(np.asarray(x))


def _flatten(x: Any) -> torch.Tensor:
    t = _as_tensor(x).to(torch.float32)
    if t.dim() == 0:
        raise ValueError("inputs must have at least one dimension")
    return t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)


@dataclass
class FittedDGP:
    """A trained deep GP with its likelihood, the data scalings and the training-loss history."""

    model: DeepGPModel
    likelihood: Likelihood
    config: DGPConfig
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: float = 0.0
    y_std: float = 1.0
    num_classes: int | None = None
    losses: list[float] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.x_mean.device

    def _prepare(self, x: Any) -> torch.Tensor:
        t = _flatten(x)
        if t.shape[1] != self.x_mean.shape[-1]:
            raise ValueError(f"inputs have {t.shape[1]} features, the model was trained on {self.x_mean.shape[-1]}")
        return (t.to(self.device) - self.x_mean) / self.x_std

    @torch.no_grad()
    def predict(self, x: Any, *, num_samples: int | None = None, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Predictive summaries averaged over ``num_samples`` deep-GP samples (default: config's 32).

        Regression: ``mean`` (N,), ``variance`` (N,) of the Gaussian mixture (mean of the sample
        variances + variance of the sample means, observation noise included), ``sample_means`` and
        ``sample_variances`` (S, N). Classification: ``probs`` (N, K) averaged over samples and
        ``sample_probs`` (S, N, K). Points are predicted ``batch_size`` (default 128) at a time; a
        batch is sampled jointly (cost ~ batch³), which leaves each point's marginal unchanged.
        """
        samples = int(num_samples or self.config.num_predict_samples)
        batch = int(batch_size or 128)  # points in a batch are sampled jointly: cost ~ batch^3
        xs = self._prepare(x)
        self.model.eval()
        self.likelihood.eval()
        means, variances, probs = [], [], []
        with gpytorch.settings.num_likelihood_samples(samples):
            for start in range(0, xs.shape[0], batch):
                out = self.model(xs[start : start + batch])
                if self.config.task == "regression":
                    pred = self.likelihood(out)
                    means.append(pred.mean.cpu())
                    variances.append(pred.variance.cpu())
                else:
                    f = out.rsample()  # one latent draw per propagated sample: (S, n, L)
                    probs.append(self.likelihood(f).probs.cpu())
        if self.config.task == "regression":
            m = torch.cat(means, dim=-1).double() * self.y_std + self.y_mean
            v = torch.cat(variances, dim=-1).double() * self.y_std**2
            mean = m.mean(0)
            variance = v.mean(0) + m.var(0, unbiased=False)
            return {
                "mean": mean.numpy(),
                "variance": variance.numpy(),
                "sample_means": m.numpy(),
                "sample_variances": v.numpy(),
            }
        p = torch.cat(probs, dim=-2).double()
        return {"probs": p.mean(0).numpy(), "sample_probs": p.numpy()}

    def log_predictive_density(self, x: Any, y: Any, **kwargs: Any) -> np.ndarray:
        """Per-point log predictive density: the log of the sample mixture at the targets (N,)."""
        pred = self.predict(x, **kwargs)
        if self.config.task == "regression":
            yt = torch.as_tensor(np.asarray(y, dtype=np.float64).reshape(-1))
            m = torch.as_tensor(pred["sample_means"])
            v = torch.as_tensor(pred["sample_variances"])
            log_n = -0.5 * (torch.log(2 * math.pi * v) + (yt - m) ** 2 / v)
            return (torch.logsumexp(log_n, dim=0) - math.log(m.shape[0])).numpy()
        labels = np.asarray(y).reshape(-1).astype(np.int64)
        return np.log(np.clip(pred["probs"][np.arange(labels.size), labels], 1e-300, None))


def fit_deep_gp(x_train: Any, y_train: Any, config: DGPConfig | None = None, progress: bool = True) -> FittedDGP:
    """Train a deep GP on ``(x_train, y_train)`` (inputs flattened to ``(N, D)``) and return it.

    Mini-batch Adam on the negative ``DeepApproximateMLL(VariationalELBO(likelihood, model,
    num_data=N))`` with ``config.num_likelihood_samples`` samples per step, ``config.num_epochs(N)``
    epochs, and a rich progress bar (``progress=False`` to silence it).
    """
    config = config or DGPConfig()
    device = config.torch_device()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    x = _flatten(x_train)
    n, d = x.shape
    y_raw = _as_tensor(y_train).reshape(-1)
    if y_raw.shape[0] != n:
        raise ValueError(f"x_train has {n} rows but y_train has {y_raw.shape[0]}")
    if n < 2:
        raise ValueError("need at least two training points")
    if not torch.isfinite(x).all():
        raise ValueError("x_train contains non-finite values")

    x_mean = x.mean(0) if config.standardize_x else torch.zeros(d)
    x_std = x.std(0).clamp_min(1e-8) if config.standardize_x else torch.ones(d)
    xs = (x - x_mean) / x_std

    y_mean, y_std, num_classes = 0.0, 1.0, None
    if config.task == "regression":
        y = y_raw.to(torch.float32)
        if not torch.isfinite(y).all():
            raise ValueError("y_train contains non-finite values")
        if config.standardize_y:
            y_mean, y_std = float(y.mean()), float(y.std().clamp_min(1e-8))
        y = (y - y_mean) / y_std
        output_dims = None
        likelihood: Likelihood = GaussianLikelihood()
    else:
        if y_raw.is_floating_point() and not torch.equal(y_raw, y_raw.round()):
            raise ValueError("classification labels must be integers")
        y = y_raw.to(torch.long)
        if int(y.min()) < 0:
            raise ValueError("classification labels must be non-negative")
        num_classes = config.num_classes or int(y.max()) + 1
        if num_classes < 2:
            raise ValueError("classification needs at least two classes")
        if int(y.max()) >= num_classes:
            raise ValueError(f"label {int(y.max())} out of range for num_classes={num_classes}")
        output_dims = config.num_latent or num_classes
        likelihood = SoftmaxLikelihood(num_features=output_dims, num_classes=num_classes)

    m = min(config.num_inducing, n)
    inducing = xs[torch.randperm(n, generator=generator)[:m]]
    model = DeepGPModel(
        d,
        config.hidden_dims,
        output_dims,
        m,
        inducing_points=inducing,
        kernel=config.kernel,
        hidden_mean=config.hidden_mean,
    )
    model, likelihood = model.to(device), likelihood.to(device)
    xs, y = xs.to(device), y.to(device)

    mll = DeepApproximateMLL(VariationalELBO(likelihood, model, num_data=n))
    optimizer = torch.optim.Adam([*model.parameters(), *likelihood.parameters()], lr=config.lr)
    model.train()
    likelihood.train()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    epochs = config.num_epochs(n)
    losses: list[float] = []
    columns = (
        TextColumn("[bold]deep GP[/bold] {task.fields[kind]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=False) as bar:
        task_id = bar.add_task("fit", total=epochs, kind=config.task, loss=float("nan"))
        with gpytorch.settings.num_likelihood_samples(config.num_likelihood_samples):
            for _ in range(epochs):
                order = torch.randperm(n, generator=generator).to(device)
                total = 0.0
                for start in range(0, n, config.batch_size):
                    idx = order[start : start + config.batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    loss = -mll(model(xs[idx]), y[idx])
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * idx.numel()
                losses.append(total / n)
                bar.update(task_id, advance=1, loss=losses[-1])

    model.eval()
    likelihood.eval()
    return FittedDGP(
        model=model,
        likelihood=likelihood,
        config=config,
        x_mean=x_mean.to(device),
        x_std=x_std.to(device),
        y_mean=y_mean,
        y_std=y_std,
        num_classes=num_classes,
        losses=losses,
    )
