"""Pipeline 0, the course's first assignment: polynomial regression.

Noisy points (x, p(x) + noise) from a chosen polynomial p, split into train/validation/test; the
model is a linear layer on the features (1, x, ..., x^degree), trained with SGD on the mean
squared error. With the right degree the test loss approaches the noise variance, and the
learned weights approach p's coefficients. dll_ext has no fused linear layer, so --native builds
the same model.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dll_ext.training.data import split_dataset
from dll_ext.training.errors import TrainingError
from dll_ext.training.options import float_list, nonnegative_float, nonnegative_int, positive_int
from dll_ext.training.pipeline import BatchLoss, Pipeline, Task
from dll_ext.training.plots import figure


def polynomial(coefficients, x: torch.Tensor) -> torch.Tensor:
    """sum_i coefficients[i] * x^i (lowest degree first)."""
    return sum(c * x ** i for i, c in enumerate(coefficients))


class PolynomialRegression(nn.Module):
    """y = w . (1, x, x^2, ..., x^degree) for x of shape (N, 1); the constant feature's weight is
    the bias, so the weights are the fitted polynomial's coefficients."""

    def __init__(self, degree: int, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("powers", torch.arange(degree + 1, dtype=torch.float32), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(degree + 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x.pow(self.powers)))


class RegressionTask(Task):
    def __init__(self, args, dataset: TensorDataset, splits):
        degree = len(args.coefficients) - 1 if args.degree is None else args.degree
        model = PolynomialRegression(degree, args.dropout)
        config = {"coefficients": args.coefficients, "degree": degree}
        super().__init__(model, *splits, config=config)
        self.args, self.dataset, self.splits = args, dataset, splits

    def loss(self, model, batch) -> BatchLoss:
        x, y = batch
        return BatchLoss(F.mse_loss(model(x), y), len(x))

    def artefacts(self, model, out_dir: Path) -> dict:
        """fit.png: the data, the true polynomial and the fitted one; the learned coefficients."""
        args = self.args
        low, high = args.x_range
        grid = torch.linspace(low, high, 400).unsqueeze(1)
        model.eval()
        with torch.no_grad():
            fitted = model(grid.to(next(model.parameters()).device)).cpu()
        fig, (ax,) = figure()
        for name, subset in zip(("train", "validation", "test"), self.splits):
            x, y = self.dataset[subset.indices]
            ax.plot(x.squeeze(1), y.squeeze(1), ".", markersize=3, alpha=0.5, label=f"{name} data")
        true = polynomial(args.coefficients, grid)
        ax.plot(grid.squeeze(1), true.squeeze(1), "k--", label="true polynomial")
        ax.plot(grid.squeeze(1), fitted.squeeze(1), "r-", label=f"fitted, degree {self.config['degree']}")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.savefig(out_dir / "fit.png", dpi=120)
        return {"fit": {"coefficients": model.linear.weight.detach().cpu().squeeze(0).tolist(),
                        "true_coefficients": args.coefficients, "noise_variance": args.noise ** 2,
                        "least_squares": self._least_squares(model)}}

    def _least_squares(self, model) -> dict:
        """The exact minimiser of the training loss (what SGD approaches) and its test loss."""
        features = model.powers.cpu().double()
        train, test = (self.dataset[subset.indices] for subset in (self.splits[0], self.splits[2]))
        solution = torch.linalg.lstsq(train[0].double().pow(features), train[1].double()).solution
        test_loss = F.mse_loss(test[0].double().pow(features) @ solution, test[1].double())
        return {"coefficients": solution.squeeze(1).tolist(), "test_loss": test_loss.item()}


class RegressionPipeline(Pipeline):
    name = "regression"
    help = ("Polynomial regression (the course's first assignment): a linear model on polynomial "
            "features fitted with SGD to noisy samples of a chosen polynomial.")
    # Raw monomials up to x^4 on [-2, 2] make a badly conditioned problem: SGD needs a small
    # learning rate (the largest curvature is ~60), and its noise at that rate keeps the validation
    # loss bouncing unless the rate is annealed towards the end.
    defaults = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "scheduler": "cosine", "epochs": 100,
                "batch_size": 32}
    quick = {"epochs": 20, "points": 500}

    def add_arguments(self, parser) -> None:
        parser.add_argument("--coefficients", type=float_list, default=[0.0, -5.0, 2.0, 1.0, 0.05],
                            help="the true polynomial's coefficients, lowest degree first")
        parser.add_argument("--degree", type=nonnegative_int, default=None,
                            help="degree of the fitted polynomial (default: the true one's)")
        parser.add_argument("--noise", type=nonnegative_float, default=0.5,
                            help="standard deviation of the Gaussian noise on y")
        parser.add_argument("--points", type=positive_int, default=1000,
                            help="number of points, split 60/20/20 into train/validation/test")
        parser.add_argument("--x-range", type=float_list, default=[-2.0, 2.0], metavar="LOW,HIGH",
                            help="x is drawn uniformly from this interval")
        parser.add_argument("--data-seed", type=int, default=0,
                            help="seed of the data and of its split (--seed is the training's)")

    def build(self, args) -> RegressionTask:
        if len(args.x_range) != 2 or not args.x_range[0] < args.x_range[1]:
            raise TrainingError(f"--x-range must be LOW,HIGH with LOW < HIGH, got {args.x_range}")
        generator = torch.Generator().manual_seed(args.data_seed)
        low, high = args.x_range
        x = torch.rand(args.points, 1, generator=generator, dtype=torch.float64) * (high - low) + low
        y = polynomial(args.coefficients, x) + args.noise * torch.randn(
            args.points, 1, generator=generator, dtype=torch.float64)
        dataset = TensorDataset(x.float(), y.float())
        splits = split_dataset(dataset, (0.6, 0.2, 0.2), args.data_seed)
        return RegressionTask(args, dataset, splits)


PIPELINE = RegressionPipeline()
