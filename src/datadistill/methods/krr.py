"""Kernel-regression distillation: the inner training replaced by a closed-form solve.

The synthetic set's targets are regressed, by kernel ridge regression, onto a real batch:
predictions ``K_ts (K_ss + λ I)⁻¹ Y_s`` with ``λ = --ridge × tr(K_ss) / n``, and the meta-loss
is their squared error against the real one-hot targets (both sides centred by 1/K, as KIP
and FRePo centre theirs). The gradient flows through the solve to the images and learned
labels. The methods differ only in the kernel, an inner product of per-image features:

- ``krr``: the embedding (input of the last ``nn.Linear``) of nets drawn from p(θ0) — the
  conjugate kernel of random nets, new nets every meta-iteration;
- ``frepo`` (Zhou, Nezhadarya & Ba, NeurIPS 2022): the same embedding, of nets taken from an
  online pool trained on the synthetic set itself (``--online-models``, each replaced by a
  fresh net after ``--online-steps`` steps);
- ``kip`` (Nguyen, Chen & Lee, ICLR 2021, with the empirical kernel): the neural tangent
  kernel of nets drawn from p(θ0), ``Σ_c ⟨∂f_c(x)/∂θ, ∂f_c(x')/∂θ⟩``, from per-image
  Jacobians (``torch.func``); memory grows as images × classes × parameters, so it suits
  narrow nets.

With DSA every image (real and synthetic) gets its own transform each meta-iteration.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import jacrev, vmap

from ..data import Dataset
from ..distributed import current
from ..errors import DistillError
from ..functional import FunctionalModel, Params, num_nets
from ..inner_loop import momentum_step
from ..state import DistilledSteps
from .base import Method, augmented, draw_seed, refuse_unrolled_settings

REAL_CHUNK = 64  # real images whose features are held at once (the loss is built per chunk)
POOL_MOMENTUM = 0.9  # the pool nets' SGD momentum


def ridge_weights(support: Tensor, targets: Tensor, ridge: float) -> Tensor:
    """Kernel ridge regression of ``targets`` (N, n, K) on per-net features ``support``
    (N, n, D), as weights in feature space (N, D, K): a query's predictions are its features
    times them. The ridge is relative, λ = ``ridge`` × tr(K_ss) / n (plus the dtype's eps,
    so that all-zero features still solve). Solved in the n × n dual, Φᵀ (ΦΦᵀ + λ I)⁻¹ Y,
    or the D × D primal, (ΦᵀΦ + λ I)⁻¹ Φᵀ Y, whichever is smaller (the same weights)."""
    n, d = support.shape[1:]
    transposed = support.transpose(1, 2)
    gram = transposed @ support if d < n else support @ transposed
    shift = ridge * gram.diagonal(dim1=1, dim2=2).sum(-1) / n + torch.finfo(gram.dtype).eps
    regularised = gram + shift[:, None, None] * torch.eye(min(n, d), dtype=gram.dtype,
                                                           device=gram.device)
    if d < n:
        return torch.linalg.solve(regularised, transposed @ targets)
    return transposed @ torch.linalg.solve(regularised, targets)


def centred(targets: Tensor) -> Tensor:
    """Regression targets (…, K): class probabilities less 1/K."""
    return targets - 1.0 / targets.shape[-1]


class KernelRegression(Method):
    """The closed-form family: ``features`` of N nets give the kernel; ``nets`` says which."""

    name = "krr"
    summary = ("kernel ridge regression on random nets' embeddings (the conjugate kernel): "
               "the synthetic set regressed onto each real batch in closed form")
    inner_steps = False  # no learned lrs: its sets are for the converge protocol
    final_checks = "none"

    @classmethod
    def check(cls, config: Any) -> None:
        refuse_unrolled_settings(config, cls.name, "solves its inner problem in closed form",
                                 allowed=("labels",))

    def __init__(self, config: Any, fmodel: FunctionalModel, steps: DistilledSteps,
                 data: Dataset, probe: Params) -> None:
        super().__init__(config, fmodel, steps, data, probe)
        self.num_classes = data.num_classes

    def loss(self, params: Params, steps: DistilledSteps, real_images: Tensor,
             real_labels: Tensor, generator: torch.Generator) -> Tensor:
        nets = self.nets(params, steps, generator)
        images, targets, _ = steps.seen()
        synthetic = self._augmented(images.flatten(0, 1), steps, generator)
        weights = ridge_weights(self.features(nets, synthetic),
                                self._regression_targets(targets.flatten(0, 1), nets,
                                                         synthetic.dtype),
                                self.config.ridge)
        leaf = weights.detach().requires_grad_()
        losses = self._real_losses(nets, leaf, self._augmented(real_images, steps, generator),
                                   real_labels)
        weights.backward(leaf.grad)  # through the solve to the images and labels
        if torch.isfinite(losses).all():
            self.after_step(nets, steps, generator)
        return losses

    def _real_losses(self, nets: Params, weights: Tensor, real: Tensor,
                     labels: Tensor) -> Tensor:
        """Each net's mean squared error (N,) of the regression ``weights`` (a leaf) on the
        real batch, accumulating its gradient into ``weights.grad``; the real features are
        built ``REAL_CHUNK`` images at a time, so only one chunk's are ever held."""
        total = weights.new_zeros(weights.shape[0])
        for chunk, chunk_labels in zip(real.split(REAL_CHUNK), labels.split(REAL_CHUNK)):
            with torch.no_grad():
                query = self.features(nets, chunk)
            truth = centred(F.one_hot(chunk_labels, self.num_classes).to(weights.dtype))
            errors = (query @ weights - truth).pow(2).sum(-1).sum(-1)  # (N,)
            (errors.sum() / (len(real) * len(errors))).backward()
            total += errors.detach()
        return total / len(real)

    def nets(self, params: Params, steps: DistilledSteps, generator: torch.Generator) -> Params:
        """The N nets whose kernel this meta-iteration uses: those drawn from p(θ0)."""
        return {k: v.detach() for k, v in params.items()}

    def features(self, nets: Params, images: Tensor) -> Tensor:
        """(N, B, D): each net's embedding of ``images``."""
        return self.fmodel.features(nets, images, train=True)

    def after_step(self, nets: Params, steps: DistilledSteps, generator: torch.Generator) -> None:
        """What the method does after the meta-gradient (frepo trains its pool)."""

    def _regression_targets(self, targets: Tensor, nets: Params, dtype: torch.dtype) -> Tensor:
        """(N, n, K): the set's targets (classes one-hot, or their learned probabilities or
        vectors) less 1/K, for each net."""
        if targets.dim() == 1:
            targets = F.one_hot(targets, self.num_classes).to(dtype)
        return centred(targets).expand(num_nets(nets), -1, -1)

    @staticmethod
    def _augmented(images: Tensor, steps: DistilledSteps, generator: torch.Generator) -> Tensor:
        return augmented(images, steps, draw_seed(generator), siamese=False)


class NeuralTangentKernel(KernelRegression):
    name = "kip"
    summary = ("kernel inducing points (KIP, Nguyen et al. 2021) with the empirical neural "
               "tangent kernel of random nets (torch.func Jacobians; narrow nets)")

    def features(self, nets: Params, images: Tensor) -> Tensor:
        """(N, B, classes × parameters): each image's Jacobian of the logits with respect
        to the weights, flattened (their inner products are the trace NTK)."""
        per_net = []
        for i in range(num_nets(nets)):
            weights = {k: v[i] for k, v in nets.items()}
            jacobians = vmap(jacrev(self._logits_of_one), in_dims=(None, 0))(weights, images)
            per_net.append(torch.cat([j.flatten(1) for j in jacobians.values()], dim=1))
        return torch.stack(per_net)

    def _logits_of_one(self, weights: Params, image: Tensor) -> Tensor:
        return self.fmodel.logits({k: v.unsqueeze(0) for k, v in weights.items()},
                                  image.unsqueeze(0), train=True)[0, 0]


class FeatureRegressionPool(KernelRegression):
    name = "frepo"
    summary = ("neural feature regression with pooling (FRePo, Zhou et al. 2022): embeddings "
               "of nets from an online pool trained on the synthetic set")

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if not config.match_net_lr > 0:
            raise DistillError(f"--match-net-lr must be positive, got {config.match_net_lr}")
        if config.nets_per_draw() > config.online_models:
            raise DistillError(f"--nets-per-iteration {config.nets_per_draw()} exceeds the "
                               f"pool (--online-models {config.online_models}): each net "
                               "used is a different pool net; raise --online-models")
        if current().size > 1:
            raise DistillError("--method frepo keeps its pool of nets in one process; run it "
                               "without torchrun (krr and kip run under it)")

    def __init__(self, config: Any, fmodel: FunctionalModel, steps: DistilledSteps,
                 data: Dataset, probe: Params) -> None:
        super().__init__(config, fmodel, steps, data, probe)
        size = config.online_models
        self.pool = {k: torch.zeros(size, *v.shape[1:], dtype=v.dtype, device=v.device)
                     for k, v in probe.items()}
        self.velocity = {k: torch.zeros_like(v) for k, v in self.pool.items()}
        self.age = torch.full((size,), -1)  # steps each pool net has taken; -1: none yet
        self.picked = torch.zeros(0, dtype=torch.long)

    def nets(self, params: Params, steps: DistilledSteps, generator: torch.Generator) -> Params:
        """N pool nets drawn without replacement; one that is new, or has taken
        ``--online-steps`` steps, starts afresh from a net drawn from p(θ0)."""
        size = self.age.shape[0]
        self.picked = torch.randperm(size, generator=generator)[:num_nets(params)]
        for slot, index in enumerate(self.picked.tolist()):
            if self.age[index] < 0 or self.age[index] >= self.config.online_steps:
                for k in self.pool:
                    self.pool[k][index] = params[k][slot].detach()
                    self.velocity[k][index] = 0
                self.age[index] = 0
        return {k: v[self.picked.to(v.device)] for k, v in self.pool.items()}

    def after_step(self, nets: Params, steps: DistilledSteps, generator: torch.Generator) -> None:
        """The nets used take one SGD step (momentum 0.9, ``--match-net-lr``) on the whole
        synthetic set as it is now, with its targets, no graph."""
        images = self._augmented(steps.full_images().flatten(0, 1), steps, generator)
        targets = steps.all_targets().flatten(0, 1)
        index = self.picked.to(images.device)
        velocity = {k: v[index] for k, v in self.velocity.items()}
        lr = torch.tensor(self.config.match_net_lr, dtype=images.dtype, device=images.device)
        with torch.enable_grad():
            trained, velocity = momentum_step(self.fmodel, dict(nets), velocity, images,
                                              targets, lr, POOL_MOMENTUM, create_graph=False)
        for k in self.pool:
            self.pool[k][index] = trained[k].detach()
            self.velocity[k][index] = velocity[k].detach()
        self.age[self.picked] += 1

    def state(self) -> dict[str, Tensor]:
        """The pool: its nets, their momenta and ages."""
        return {"age": self.age, **{f"pool.{k}": v for k, v in self.pool.items()},
                **{f"velocity.{k}": v for k, v in self.velocity.items()}}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        self.age = tensors["age"].clone()
        for k in self.pool:
            self.pool[k] = tensors[f"pool.{k}"].to(self.pool[k].device).clone()
            self.velocity[k] = tensors[f"velocity.{k}"].to(self.pool[k].device).clone()
