"""Defenses from adversarial-robustness-toolbox (ART), each a thin adapter: ART does the work, the arena composes it.

Training-time: ART's adversarial trainers (Madry PGD, fast FGSM "FBF", TRADES) and the seed study's FGSM data
augmentation. Inference-time: ART preprocessors and postprocessors. ART trainers take NumPy arrays and do their own
batching, so the recipe's epochs, batch size and optimizer are used but its flip augmentation is not.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from arena import Param, Postprocessor, Preprocessor, Trainer, TrainingDefense, hookimpl

# ART is imported where a defense is built or run, never at the top: importing it takes about a second, and
# registering, listing and validating use none of it (startup time).
if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier

_EPOCHS = Param(int, None, nullable=True, ge=1, help="training epochs; the model's recipe when unset")
_STEP = Param(float, None, nullable=True, gt=0, help="attack step size; 2.5 * eps / max_iter when unset")
_TRAIN_EPS = Param(float, 0.1, "L∞ budget of the adversarial examples trained on", gt=0)
_MAX_ITER = Param(int, 7, "PGD steps per training example", ge=1)


def art_classifier(
    model: nn.Module, trainer: Trainer, optimizer: torch.optim.Optimizer | None = None,
    cls: type[PyTorchClassifier] | None = None,
) -> PyTorchClassifier:
    """``model`` as an ART estimator on [0, 1] CIFAR-shaped inputs, with the recipe's optimizer unless given one."""
    from art.estimators.classification import PyTorchClassifier

    return (cls or PyTorchClassifier)(
        model=model.to(trainer.device), loss=nn.CrossEntropyLoss(), optimizer=optimizer or trainer.optimizer(model),
        input_shape=(3, 32, 32), nb_classes=trainer.num_classes, clip_values=(0.0, 1.0),
        device_type="gpu" if trainer.device.type == "cuda" else "cpu",
    )


class _ArtTrainer(TrainingDefense):
    """Builds the ART trainer of ``art_trainer`` and fits it with the recipe's epochs (unless set) and batch size."""

    def art_trainer(self, classifier: PyTorchClassifier, trainer: Trainer) -> Any:
        raise NotImplementedError

    def classifier_class(self) -> type[PyTorchClassifier] | None:
        """The ART estimator class the model is wrapped in; None: ART's PyTorchClassifier."""
        return None

    def optimizer(self, model: nn.Module, trainer: Trainer) -> torch.optim.Optimizer:
        """The optimizer ART trains with; the recipe's by default."""
        return trainer.optimizer(model)

    def step(self, max_iter: int) -> float:
        """The PGD step size: as declared, else Madry et al.'s 2.5 * eps / steps."""
        return self.eps_step or 2.5 * self.eps / max_iter

    def train(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, trainer: Trainer) -> None:
        classifier = art_classifier(model, trainer, self.optimizer(model, trainer), self.classifier_class())
        one_hot = np.eye(trainer.num_classes, dtype=np.float32)[labels.numpy()]
        self.art_trainer(classifier, trainer).fit(
            images.numpy(), one_hot, nb_epochs=self.epochs or trainer.config.epochs,
            batch_size=trainer.config.batch_size,
        )
        model.eval()


class MadryPGD(_ArtTrainer):
    """PGD adversarial training (Madry et al.), ART's AdversarialTrainerMadryPGD."""

    name = "art.madry_pgd"
    params = {"eps": _TRAIN_EPS, "eps_step": _STEP, "max_iter": _MAX_ITER,
              "num_random_init": Param(int, 1, "random starts of each training PGD (0: start at the image)", ge=0),
              "epochs": _EPOCHS}

    def art_trainer(self, classifier: PyTorchClassifier, trainer: Trainer) -> Any:
        from art.defences.trainer import AdversarialTrainerMadryPGD

        art = AdversarialTrainerMadryPGD(
            classifier, eps=self.eps, eps_step=self.step(self.max_iter), max_iter=self.max_iter,
            num_random_init=self.num_random_init,
        )
        art.attack.set_params(batch_size=trainer.config.batch_size)
        return art


@cache
def _train_mode_classifier() -> type[PyTorchClassifier]:
    """ART's PyTorchClassifier with ``loss_gradient`` in train mode, defined on first use (ART's class is imported
    only then)."""
    from art.estimators.classification import PyTorchClassifier

    class TrainModeClassifier(PyTorchClassifier):
        """ART's FBF trainer takes its FGSM step with ``loss_gradient``, which leaves the model in eval mode, so the
        weight update after it would run on frozen BatchNorm statistics; FBF's reference code stays in train mode
        throughout."""

        def loss_gradient(self, x: np.ndarray, y: np.ndarray, training_mode: bool = True, **kwargs: Any) -> np.ndarray:
            return super().loss_gradient(x, y, training_mode=training_mode, **kwargs)

    return TrainModeClassifier


class FastFGSM(_ArtTrainer):
    """Fast FGSM training with random start ("fast is better than free"), ART's AdversarialTrainerFBFPyTorch.

    ART's cyclic schedule sets the learning rate itself (peak 0.21), so it trains with SGD as in the paper.
    """

    name = "art.fbf"
    params = {"eps": _TRAIN_EPS, "epochs": _EPOCHS}

    def classifier_class(self) -> type[PyTorchClassifier]:
        return _train_mode_classifier()

    def optimizer(self, model: nn.Module, trainer: Trainer) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)

    def art_trainer(self, classifier: PyTorchClassifier, trainer: Trainer) -> Any:
        from art.defences.trainer import AdversarialTrainerFBFPyTorch

        return AdversarialTrainerFBFPyTorch(classifier, eps=self.eps)


class Trades(_ArtTrainer):
    """TRADES (Zhang et al.): clean loss plus beta × the KL to PGD examples, ART's AdversarialTrainerTRADESPyTorch."""

    name = "art.trades"
    params = {"eps": _TRAIN_EPS, "eps_step": _STEP, "max_iter": _MAX_ITER,
              "beta": Param(float, 6.0, "weight of the KL term against the clean loss (robustness vs accuracy)", gt=0),
              "epochs": _EPOCHS}

    def art_trainer(self, classifier: PyTorchClassifier, trainer: Trainer) -> Any:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.defences.trainer import AdversarialTrainerTRADESPyTorch

        attack = ProjectedGradientDescent(
            classifier, eps=self.eps, eps_step=self.step(self.max_iter), max_iter=self.max_iter,
            batch_size=trainer.config.batch_size, verbose=False,
        )
        return AdversarialTrainerTRADESPyTorch(classifier, attack, beta=self.beta)


class FGSMAugmentation(_ArtTrainer):
    """The seed study's defense: FGSM examples at eps replace a share of every batch (ART's AdversarialTrainer).

    ``static``: crafted once on the undefended baseline, as the seed did; ``on_the_fly``: crafted on the model being
    trained, batch by batch.
    """

    name = "fgsm_augmentation"
    params = {"eps": Param(float, 0.2, "L∞ budget of the FGSM examples mixed into training", gt=0),
              "mode": Param(str, "static", "static: crafted once on the undefended model; on_the_fly: on the model "
                            "being trained", choices=("static", "on_the_fly")),
              "ratio": Param(float, 0.5, gt=0, le=1, help="share of each batch replaced by adversarial examples"),
              "epochs": _EPOCHS}

    def art_trainer(self, classifier: PyTorchClassifier, trainer: Trainer) -> Any:
        from art.attacks.evasion import FastGradientMethod
        from art.defences.trainer import AdversarialTrainer

        crafted_on = classifier if self.mode == "on_the_fly" else art_classifier(trainer.baseline(), trainer)
        fgsm = FastGradientMethod(crafted_on, norm=np.inf, eps=self.eps, batch_size=256)
        return AdversarialTrainer(classifier, fgsm, ratio=self.ratio)


class _ArtPreprocessor(Preprocessor):
    """Runs an ART preprocessor: in torch when ART has a PyTorch version, else on NumPy copies (crossed with BPDA)."""

    _tool: Any = None

    def art(self) -> Any:
        """The ART preprocessor, built from this plugin's parameters."""
        raise NotImplementedError

    @property
    def tool(self) -> Any:
        if self._tool is None:
            self._tool = self.art()
        return self._tool

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from art.defences.preprocessor.preprocessor import PreprocessorPyTorch

        if isinstance(self.tool, PreprocessorPyTorch):
            return self.tool.forward(images)[0]
        return torch.from_numpy(self.tool(images.cpu().numpy())[0]).to(images.device)

    def estimate_gradient(self, images: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        estimate = self.tool.estimate_gradient(images.cpu().numpy(), grad.cpu().numpy())
        return torch.from_numpy(np.ascontiguousarray(estimate)).to(grad.device, grad.dtype)


class Jpeg(_ArtPreprocessor):
    """JPEG compression of the input (ART JpegCompression); not differentiable, attacked with BPDA."""

    name = "art.jpeg"
    differentiable = False
    params = {"quality": Param(int, 50, "JPEG quality: lower compresses more", ge=1, le=95)}

    def art(self) -> Any:
        from art.defences.preprocessor import JpegCompression

        return JpegCompression(clip_values=(0.0, 1.0), quality=self.quality, channels_first=True)


class SpatialSmoothing(_ArtPreprocessor):
    """Median filter over a window (ART SpatialSmoothingPyTorch); differentiable, attacked directly."""

    name = "art.spatial_smoothing"
    params = {"window_size": Param(int, 3, "side of the median filter's square window, in pixels", ge=1)}

    def art(self) -> Any:
        from art.defences.preprocessor import SpatialSmoothingPyTorch

        device = "gpu" if torch.cuda.is_available() else "cpu"
        return SpatialSmoothingPyTorch(window_size=self.window_size, channels_first=True, clip_values=(0.0, 1.0),
                                       device_type=device)


class Squeezing(_ArtPreprocessor):
    """Colour-depth reduction (ART FeatureSqueezing); not differentiable, attacked with BPDA."""

    name = "art.feature_squeezing"
    differentiable = False
    params = {"bit_depth": Param(int, 4, "bits kept per colour channel", ge=1, le=8)}

    def art(self) -> Any:
        from art.defences.preprocessor import FeatureSqueezing

        return FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=self.bit_depth)


class TotalVariation(_ArtPreprocessor):
    """Total-variance minimisation of randomly kept pixels (ART TotalVarMin); slow, randomized, attacked with BPDA."""

    name = "art.total_var_min"
    differentiable = False
    randomized = True
    params = {"prob": Param(float, 0.3, "share of pixels kept at random for the reconstruction", gt=0, le=1),
              "lamb": Param(float, 0.5, "weight of the total-variation term", gt=0),
              "max_iter": Param(int, 10, "optimiser iterations of the reconstruction", ge=1)}

    def art(self) -> Any:
        from art.defences.preprocessor import TotalVarMin

        return TotalVarMin(prob=self.prob, lamb=self.lamb, max_iter=self.max_iter, clip_values=(0.0, 1.0))


class GaussianNoise(_ArtPreprocessor):
    """Gaussian noise added at inference (ART GaussianAugmentation); randomized, attacked with EOT."""

    name = "art.gaussian_noise"
    differentiable = False
    randomized = True
    params = {"sigma": Param(float, 0.1, "standard deviation of the noise, on [0, 1] pixels", gt=0)}

    def art(self) -> Any:
        from art.defences.preprocessor import GaussianAugmentation

        return GaussianAugmentation(sigma=self.sigma, augmentation=False, apply_fit=False, apply_predict=True,
                                    clip_values=(0.0, 1.0))


class _ArtPostprocessor(Postprocessor):
    """Runs an ART postprocessor on NumPy copies of the probabilities."""

    #: The ART postprocessor's class name in ``art.defences.postprocessor``.
    tool_class: ClassVar[str]

    def __call__(self, probabilities: torch.Tensor) -> torch.Tensor:
        import art.defences.postprocessor

        tool = getattr(art.defences.postprocessor, self.tool_class)(**{key: getattr(self, key) for key in self.params})
        return torch.from_numpy(tool(probabilities.cpu().numpy())).to(probabilities.device, probabilities.dtype)


class ReverseSigmoidPost(_ArtPostprocessor):
    """Reverse sigmoid perturbation of the output probabilities (ART ReverseSigmoid); keeps the top class."""

    name = "art.reverse_sigmoid"
    tool_class = "ReverseSigmoid"
    params = {"beta": Param(float, 1.0, "magnitude of the reverse-sigmoid perturbation", gt=0),
              "gamma": Param(float, 0.1, "convergence parameter of the perturbation (data- and model-specific)", gt=0)}


class HighConfidencePost(_ArtPostprocessor):
    """Zeroes probabilities under a cutoff (ART HighConfidence)."""

    name = "art.high_confidence"
    tool_class = "HighConfidence"
    params = {"cutoff": Param(float, 0.25, "probabilities below it are set to zero", ge=0, le=1)}


@hookimpl
def arena_register_defenses(register) -> None:
    for cls in (MadryPGD, FastFGSM, Trades, FGSMAugmentation, Jpeg, SpatialSmoothing, Squeezing, TotalVariation,
                GaussianNoise, ReverseSigmoidPost, HighConfidencePost):
        register(cls)
