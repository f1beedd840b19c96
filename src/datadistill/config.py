"""The one source of configuration: dataclasses of settings, one per command that trains
or writes something, whose defaults are the paper's (or the published recipe's).

Every command's flags are generated from its dataclass's fields, ``--config FILE`` is read
back through it, and the settings are stored with what the command writes (a run's
meta.json, an evaluation record, a pool's manifest, experts.json).
"""
from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from functools import partial
from typing import Any, Callable, ClassVar, TypeVar

from .errors import DistillError

Settings = TypeVar("Settings")
CONVERGE_INIT = "default"  # the fresh nets of the published recipe start from PyTorch's init
BACKENDS = ("auto", "pytorch", "compiled")


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, *,
         kind: type | None = None, required: bool = False, section: str | None = None) -> Any:
    """A setting: its default, help, allowed values, type (``kind``, for a None default),
    whether the command needs it given, and the --help group that lists its flag."""
    return field(default=default, metadata={"help": help, "choices": choices,
                                            "kind": kind or type(default),
                                            "required": required, "section": section})


def _in(section: str) -> Callable[..., Any]:
    """``_opt`` for the fields of one section (a --help group)."""
    return partial(_opt, section=section)


DATA, INIT, METHOD = "data and model", "initial weights p(θ0)", "method and objective"
DISTILLED, OUTER, RUN = "distilled data", "outer optimization", "run"
_data, _init, _method, _distilled, _outer, _run = map(_in, (DATA, INIT, METHOD, DISTILLED, OUTER,
                                                           RUN))


def _data_root(default: str | None = "data", section: str | None = None) -> Any:
    return _opt(default, "torchvision data root for mnist / fashion-mnist / cifar10"
                + (" (default: the stored one)" if default is None else ""), kind=str,
                section=section)


def _device(section: str | None = None) -> Any:
    return _opt("auto", "cpu, cuda, cuda:N, or auto (CUDA when present)", section=section)


def _seed(section: str | None = None) -> Any:
    return _opt(0, "random seed (same seed -> same result on CPU)", section=section)


def _backend(section: str | None = None) -> Any:
    return _opt("auto", "where every net of the command runs: auto (compiled CPU kernels where "
                        "they apply: the LeNet kernel for the meta-gradient and held-out nets, "
                        "the fused ConvNet for the converge protocol; else PyTorch), pytorch "
                        "(no compiled code), compiled (insist on the LeNet kernel for the "
                        "meta-gradient)", BACKENDS, section=section)


def _dsa_ops(section: str | None = None) -> Any:
    return _opt("", "with --dsa: comma-separated DSA operations (default: color,crop,cutout,"
                    "flip,scale,rotate; no flip for digits)", section=section)


def _trained_dataset() -> Any:
    return _opt("", "registered dataset to train on", required=True)


def _arch() -> Any:
    return _opt("", "architecture (default: the dataset's)")


@dataclass
class DistillConfig:
    """Settings of one distillation run (defaults: the paper's MNIST setting)."""

    stored_file: ClassVar[str] = "meta.json"  # where a run folder keeps them, under "config"
    stored_key: ClassVar[str] = "config"
    dataset: str = _data("mnist-5k", "registered dataset name")
    data_root: str = _data_root(section=DATA)
    download: bool = _data(False, "let torchvision download missing files (needs the internet)")
    model: str = _data("", "architecture (default: the dataset's, e.g. lenet for MNIST)")
    init: str = _init("random", "distribution of initial weights",
                      ("random", "fixed", "pretrained-random", "pretrained-fixed"))
    init_scheme: str = _init("xavier-normal", "weight initialization scheme (biases are zero)")
    pool: str = _init("", "pool folder of trained models, for the pretrained-* inits")
    weights: str = _init("", "pretrained-fixed: a state dict file instead of a pool (e.g. "
                             "torchvision's AlexNet); a last layer of another size starts at 0, "
                             "bias 1")
    nets_per_iteration: int = _init(
        0, "initial weights sampled per meta-iteration, averaged (0: one per process, and at "
           "least 4 for pretrained-random)")
    method: str = _method("unroll", "distillation method (`datadistill list`): unroll (the "
                                    "paper's unrolled inner steps), dm (distribution matching), "
                                    "dc or dsa (gradient matching), mtt (trajectory "
                                    "matching), krr, frepo or kip (kernel regression)")
    match_outer_loop: int = _method(0, "dc/dsa: matches per net drawn, the net trained on the "
                                       "synthetic set between them (0: DC's for --images-per-class"
                                       " 1, 10, 20, 30, 40, 50: 1, 10, 20, 30, 40, 50)")
    match_inner_loop: int = _method(0, "dc/dsa: epochs of SGD on the synthetic set between two "
                                       "matches (0: DC's: 1, 50, 25, 20, 15, 10)")
    match_net_lr: float = _method(0.01, "dc/dsa: SGD lr of the net trained between matches; "
                                        "frepo: of the pool's nets")
    experts: str = _method("", "mtt: folder of expert trajectories (`datadistill experts`)")
    expert_epochs: int = _method(2, "mtt: M, the expert epochs the N synthetic steps should match")
    max_start_epoch: int = _method(20, "mtt: the expert epoch t an unroll starts at is drawn "
                                       "below this")
    ridge: float = _method(1e-6, "krr/frepo/kip: the kernel ridge, a fraction of the synthetic "
                                 "kernel's mean diagonal")
    online_models: int = _method(10, "frepo: nets in the online pool whose embeddings give the "
                                     "kernel")
    online_steps: int = _method(100, "frepo: SGD steps a pool net takes on the synthetic set "
                                     "(one per use, at --match-net-lr) before a fresh net "
                                     "replaces it")
    objective: str = _method("task", "final loss: the task's labels, or an attack (class K -> T)",
                             ("task", "attack"))
    attack_class: int = _method(-1, "attack: the class K whose images should be misclassified")
    target_class: int = _method(-1, "attack: the class T they should be classified as")
    steps: int = _distilled(10, "distilled GD steps, each with its own batch of images")
    distill_epochs: int = _distilled(3, "passes over the distilled steps (inner steps = steps x "
                                        "epochs)")
    images_per_class: int = _distilled(1, "distilled images per class in each step")
    images_per_step: int = _distilled(0, "images in each step, their classes going round from step "
                                         "to step; may be fewer than the classes (0: classes x "
                                         "--images-per-class)")
    downscale: int = _distilled(1, "store each distilled image at 1/F of the images' side, F x F "
                                   "as many per class (the same pixels), each enlarged bilinearly "
                                   "to full size whenever a net trains on it (IDC's "
                                   "multi-formation); 1: full-size images")
    labels: str = _distilled(
        "fixed", "labels of the distilled images: fixed classes (the paper), learned soft labels "
                 "(label logits trained with the images, targets their softmax) or direct "
                 "(learned label vectors used as the targets themselves, unconstrained, starting "
                 "one-hot)", ("fixed", "learned", "direct"))
    distill_lr: float = _distilled(0.02, "initial value of every learned inner learning rate")
    lr_per_step: bool = _distilled(True, "one learned inner lr per inner step (the paper); "
                                         "--no-lr-per-step: one learned lr for all steps (as "
                                         "RaT-BPTT)")
    image_init: str = _distilled(
        "noise", "starting images: standard-normal noise (the paper), random real training "
                 "images, k-means centroids or herded real images of each slot's class",
        ("noise", "real", "kmeans", "herding"))
    init_from: str = _distilled("", "start the learned images, labels and lrs from another run's "
                                    "last iterate (its folder, with checkpoint.safetensors) "
                                    "instead of --image-init, e.g. to go on with another --model "
                                    "or --window; the layout must match theirs")
    epochs: int = _outer(400, "passes over the real training set")
    iterations: int = _outer(0, "meta-iterations to run in all, whatever the data's size, in "
                                "place of --epochs (0: --epochs passes)")
    batch_size: int = _outer(1024, "real images per meta-iteration")
    lr: float = _outer(0.01, "learning rate of the outer optimiser (images, learning rates)")
    optimizer: str = _outer("adam", "outer optimiser: adam (betas 0.5, 0.999) or sgd "
                                    "(momentum 0.5, as DC, DSA and DM optimise their images)",
                            ("adam", "sgd"))
    label_lr: float = _outer(0.0, "outer learning rate of learned or direct labels (0: --lr)")
    lr_lr: float = _outer(0.0, "outer learning rate of the learned inner lrs (0: --lr), e.g. "
                               "MTT's 1e-5 beside an image lr of 100 or more")
    label_confidence: float = _outer(0.9, "learned labels start with this probability on their "
                                          "class, the rest spread evenly")
    decay_epochs: int = _outer(40, "multiply the Adam lr by --decay-factor every this many epochs")
    decay_factor: float = _outer(0.5, "lr decay factor")
    backward: str = _outer("full", "reverse pass through the inner steps", ("full", "backgrad"))
    momentum: float = _outer(0.0, "heavy-ball momentum of the inner steps, in distillation and "
                                  "evaluation alike (torch.optim.SGD's; 0: plain GD, the paper)")
    minibatch: int = _outer(0, "images per inner step drawn anew from its batch each "
                               "meta-iteration (a flat set: --steps 1); 0: the whole batch")
    window: int = _outer(0, "truncated backpropagation: only this many consecutive inner steps "
                            "keep a graph, the steps before run without one (0: all steps)")
    window_at_end: bool = _outer(False, "end the window at the last step instead of at a step "
                                        "drawn uniformly each meta-iteration (random-start "
                                        "truncation, RaT-BPTT)")
    dsa: bool = _outer(False, "augment the distilled images at every inner step of distillation "
                              "with DSA, differentiably, a new draw each meta-iteration (as DC/DSA "
                              "and RaT-BPTT distil); evaluations stay unaugmented")
    dsa_ops: str = _dsa_ops(section=OUTER)
    clip: float = _outer(0.0, "clip the meta-gradient's norm to this multiple of its running "
                              "mean (0: no clipping)")
    ema: float = _outer(0.0, "evaluate and save an exponential moving average of the distilled "
                             "tensors over the meta-iterations, from their start, with this "
                             "decay (e.g. 0.99); 0: the last iterate")
    validation: int = _outer(0, "hold this many random training images out of distillation, "
                                "score the distilled set on them at every --eval-every "
                                "evaluation, and save the best-scoring iterate instead of the "
                                "last (0: the last)")
    backend: str = _backend(section=OUTER)
    backgrad_keep_every: int = _outer(
        1, "backgrad: keep every k-th weight and recompute the rest (0: k = ceil(sqrt(T)))")
    outer_chunk: int = _outer(512, "real images per chunk of the outer gradient (memory/speed)")
    seed: int = _seed(section=RUN)
    device: str = _device(section=RUN)
    eval_every: int = _run(0, "evaluate fresh nets every this many epochs (0: only at the end)")
    eval_nets: int = _run(20, "fresh nets trained on the distilled data per evaluation")
    stop_accuracy: float = _run(0.0, "stop at the first --eval-every evaluation whose mean "
                                     "accuracy (with --validation: on the held-out images) "
                                     "reaches this fraction (0: run every epoch)")
    checkpoint_every: int = _run(1, "write a checkpoint every this many epochs")
    progress: bool = _run(True, "show a progress bar, the meta-iterations to run and an "
                                "estimate of their time")
    final_checks: str = _run("auto", "after the run: few-step (--eval-nets fresh nets on the "
                                     "set's steps and lrs, and as many random real images on "
                                     "the lr grid), converge (--eval-nets fresh nets of the "
                                     "run's model trained to convergence on the set, the "
                                     "protocol's 1000 epochs, DSA with --dsa), none, or auto "
                                     "(few-step for unroll, none for the matching methods)",
                             ("auto", "few-step", "converge", "none"))
    log_dir: str = _run("", "write TensorBoard scalars and image grids to this folder "
                            "(meta-loss, lrs, meta-gradient norm, evaluations; off when empty)")

    def validate(self) -> None:
        """Raise a one-line DistillError for a setting that cannot work."""
        check_choices(self)
        positive = ["steps", "distill_epochs", "images_per_class", "downscale", "epochs",
                    "batch_size", "decay_epochs", "outer_chunk",
                    "eval_nets", "checkpoint_every", "expert_epochs", "max_start_epoch",
                    "online_models", "online_steps"]
        for name in positive:
            if getattr(self, name) < 1:
                raise DistillError(f"--{name.replace('_', '-')} must be at least 1, "
                                   f"got {getattr(self, name)}")
        for name in ("minibatch", "window", "match_outer_loop", "match_inner_loop",
                     "iterations"):
            if getattr(self, name) < 0:
                raise DistillError(f"--{name.replace('_', '-')} must be 0 (off or the "
                                   f"default) or more, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise DistillError(f"--momentum must lie in [0, 1), got {self.momentum}")
        if self.clip < 0:
            raise DistillError(f"--clip must be 0 (off) or positive, got {self.clip}")
        if not 0 <= self.ema < 1:
            raise DistillError(f"--ema must lie in [0, 1) (0: off), got {self.ema}")
        if self.validation < 0:
            raise DistillError(f"--validation must be 0 (off) or more, got {self.validation}")
        if self.validation and not 0 < self.eval_every <= self.epochs:
            raise DistillError("--validation picks among the periodic evaluations: add "
                               "--eval-every N, N at most --epochs")
        if self.validation and self.objective == "attack":
            raise DistillError("--validation picks by clean accuracy, not an attack's success: "
                               "drop it for --objective attack")
        if self.dsa_ops and not self.dsa:
            raise DistillError("--dsa-ops chooses the operations of --dsa; add --dsa (or drop "
                               "them with --dsa-ops '')")
        if self.images_per_step < 0:
            raise DistillError(f"--images-per-step must be 0 (classes x --images-per-class) or "
                               f"more, got {self.images_per_step}")
        if self.nets_per_iteration < 0:
            raise DistillError(f"--nets-per-iteration must be 0 (auto) or more, "
                               f"got {self.nets_per_iteration}")
        if self.init.startswith("pretrained") and not self.pool and not (
                self.init == "pretrained-fixed" and self.weights):
            raise DistillError(f"--init {self.init} needs --pool POOL (make one with "
                               "`datadistill pretrain`)"
                               + (" or --weights FILE" if self.init == "pretrained-fixed" else ""))
        if self.init in ("fixed", "pretrained-fixed") and self.nets_per_iteration > 1:
            raise DistillError(f"--init {self.init} has one initial net; drop --nets-per-iteration")
        if self.objective == "attack" and (
                min(self.attack_class, self.target_class) < 0 or self.attack_class == self.target_class):
            raise DistillError("--objective attack needs two different classes: "
                               "--attack-class K --target-class T")
        if self.backgrad_keep_every < 0:
            raise DistillError(f"--backgrad-keep-every must be 0 (auto) or more, "
                               f"got {self.backgrad_keep_every}")
        if not 0 <= self.stop_accuracy <= 1:
            raise DistillError(f"--stop-accuracy is a fraction in [0, 1], got {self.stop_accuracy}")
        if self.stop_accuracy and not self.eval_every:
            raise DistillError("--stop-accuracy is checked at the periodic evaluations: "
                               "add --eval-every N")
        for name in ("label_lr", "lr_lr"):
            if getattr(self, name) < 0:
                raise DistillError(f"--{name.replace('_', '-')} must be 0 (--lr) or positive, "
                                   f"got {getattr(self, name)}")
        if not 0 < self.label_confidence < 1:
            raise DistillError(f"--label-confidence is a probability in (0, 1), got "
                               f"{self.label_confidence}")
        for name in ("distill_lr", "lr", "decay_factor", "ridge"):
            if not getattr(self, name) > 0:
                raise DistillError(f"--{name.replace('_', '-')} must be positive, "
                                   f"got {getattr(self, name)}")

    def nets_per_draw(self, processes: int = 1) -> int:
        """Initial weights per meta-iteration, with 0 resolved for this many processes."""
        if self.init in ("fixed", "pretrained-fixed"):
            return 1
        least = 4 if self.init == "pretrained-random" else 1
        return self.nets_per_iteration or max(least, processes)

    @property
    def attack(self) -> tuple[int, int] | None:
        """(K, T) for the attack objective, else None."""
        return (self.attack_class, self.target_class) if self.objective == "attack" else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DistillConfig":
        check_known(values)
        return cls(**values)


@dataclass(frozen=True)
class ConvergeSettings:
    """Training of the held-out nets (defaults: the published recipe)."""

    epochs: int = 1000  # passes over the flat set
    lr: float = 0.01  # SGD lr, multiplied by 0.1 after half the epochs
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256  # images per minibatch (the whole set when it is smaller)
    nets_per_batch: int = 0  # nets trained together on stacked parameters (0: auto)
    test_every: int = 0  # test accuracy on the learning curve every this many epochs (0: end)
    channels_last: bool = False  # memory format of conv inputs (measured in benchmarks/)
    bfloat16: bool = False  # convolutions and matmuls under bfloat16 autocast (benchmarks/)

    def check(self) -> None:
        """One-line errors for settings that cannot work."""
        if self.nets_per_batch < 0:
            raise DistillError(f"--nets-per-batch must be 0 (auto) or more, "
                               f"got {self.nets_per_batch}")
        if self.bfloat16 and self.nets_per_batch > 1:  # vmap's batched ops ignore autocast
            raise DistillError("--bf16 trains one net at a time (autocast does not reach "
                               "stacked nets); drop --nets-per-batch or --bf16")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise DistillError(f"--{name.replace('_', '-')} must be at least 1, "
                                   f"got {getattr(self, name)}")
        if not self.lr > 0:
            raise DistillError(f"--lr must be positive, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise DistillError(f"--{name.replace('_', '-')} must be 0 or more, "
                                   f"got {getattr(self, name)}")
        if self.test_every < 0:
            raise DistillError(f"--test-every must be 0 (at the end) or more, "
                               f"got {self.test_every}")


@dataclass(frozen=True)
class ExpertSchedule:
    """How an expert trains (defaults: MTT's for MNIST-sized data)."""

    epochs: int = 50  # passes over the real training set, weights kept after each
    lr: float = 0.01  # plain SGD, no momentum, no weight decay
    batch_size: int = 256
    dsa: bool = True  # DSA on every real minibatch

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise DistillError(f"--epochs and --batch-size must be at least 1 and --lr positive, "
                               f"got {self.epochs}, {self.batch_size}, {self.lr}")


RECIPE = ConvergeSettings()
CONVERGE = "converge protocol"  # the --help group of its flags


@dataclass
class ConvergeTraining:
    """The converge protocol's training flags, shared by evaluate and baseline (defaults: the
    published recipe); --epochs, --lr and --model are each command's own."""

    momentum: float = _opt(RECIPE.momentum, "SGD momentum", section=CONVERGE)
    weight_decay: float = _opt(RECIPE.weight_decay, "SGD weight decay", section=CONVERGE)
    batch_size: int = _opt(RECIPE.batch_size, "images per minibatch", section=CONVERGE)
    nets_per_batch: int = _opt(RECIPE.nets_per_batch, "nets trained together on stacked "
                               "parameters (0: 10 on CUDA, 1 on the CPU, where batching convs "
                               "does not pay)", section=CONVERGE)
    test_every: int = _opt(RECIPE.test_every, "test accuracy on the learning curve every this "
                           "many epochs (0: at the end only)", section=CONVERGE)
    channels_last: bool = _opt(RECIPE.channels_last, "channels-last conv inputs",
                               section=CONVERGE)
    bf16: bool = _opt(RECIPE.bfloat16, "convolutions and matmuls under bfloat16 autocast, one "
                      "net at a time: faster on CPUs with AVX512-BF16, much slower where "
                      "bfloat16 is emulated (docs/performance.md)", section=CONVERGE)
    dsa: bool = _opt(False, "differentiable siamese augmentation of the images (DSA)",
                     section=CONVERGE)
    dsa_ops: str = _dsa_ops(CONVERGE)
    curve: str | None = _opt(None, "write the learning curve picture here (a .png path)",
                             kind=str, section=CONVERGE)

    def converge_settings(self, epochs: int | None, lr: float | None) -> ConvergeSettings:
        """The protocol's training, ``epochs`` and ``lr`` (None: the recipe's) added."""
        return ConvergeSettings(
            RECIPE.epochs if epochs is None else epochs, RECIPE.lr if lr is None else lr,
            self.momentum, self.weight_decay, self.batch_size, self.nets_per_batch,
            self.test_every, self.channels_last, self.bf16)


SCORES = "scores beside the accuracy"
PROTOCOLS = ("few-step", "converge")


@dataclass
class EvaluateConfig(ConvergeTraining):
    """Settings of `evaluate`, stored in each saved evaluation (RUN/evaluations/NAME.json)."""

    stored_file: ClassVar[str] = ""  # a saved evaluation is a file, under "config"
    stored_key: ClassVar[str] = "config"
    protocol: str = _opt("few-step", "few-step: the paper's GD steps with the learned lrs; "
                         "converge: minibatch SGD to convergence on the images as a flat set",
                         PROTOCOLS)
    nets: int | None = _opt(None, "held-out nets (default: 200 few-step, 5 converge)", kind=int)
    lr: float | None = _opt(None, "few-step: constant lr instead of the learned ones; "
                            "converge: SGD lr (default: 0.01, x0.1 halfway)", kind=float)
    epochs: int | None = _opt(None, "passes over the steps (default: as distilled) or the "
                              "flat set (converge, default: 1000)", kind=int)
    data_root: str | None = _data_root(None)
    pool: str | None = _opt(None, "the pool folder instead of the stored one "
                            "(pretrained-random)", kind=str)
    device: str = _device()
    backend: str = _backend()
    model: str | None = _opt(None, "converge: architecture of the fresh nets (default: the "
                             "artifact's); e.g. convnet, resnet18, vgg11 (`datadistill list`)",
                             kind=str)
    init_scheme: str = _opt(CONVERGE_INIT, "converge: initialization of the fresh nets "
                            "(`default`: PyTorch's own, as published)")
    plain: bool = _opt(False, "only the accuracy and the majority-class rate: skip the "
                       "hard-label, other-augmentation and random-real runs and the scores",
                       section=SCORES)
    full_data_accuracy: float | None = _opt(
        None, "the whole training set's accuracy (a fraction) under this evaluation, for "
              "DD-Ranking's HLR and LRS (e.g. from `datadistill baseline --method full "
              "--protocol converge`)", kind=float, section=SCORES)
    full_data: bool = _opt(False, "converge: compute that accuracy here (the same nets trained "
                           "on the whole training set; costly)", section=SCORES)
    lr_search: bool = _opt(False, "converge: pick the lr from 0.25x-4x the lr by accuracy on "
                           "held-out training images (never the test split)", section=SCORES)


BASELINE_METHODS = ("random", "optimized", "kmeans", "average", "herding", "knn-random",
                    "knn-kmeans")
NOT_LIKE = "the setting when not --like a run"  # the --help group of a baseline's own setting


def _as_distill(name: str) -> Any:
    """A baseline's setting: DistillConfig's field ``name``, its default and help."""
    f = DistillConfig.__dataclass_fields__[name]
    return _opt(f.default, f.metadata["help"], f.metadata["choices"], section=NOT_LIKE)


@dataclass
class BaselineConfig(ConvergeTraining):
    """Settings of `baseline`, stored in its meta.json under "baseline_config"."""

    stored_file: ClassVar[str] = "meta.json"
    stored_key: ClassVar[str] = "baseline_config"
    method: str = _opt("", "full: the whole training set (--protocol converge)",
                       (*BASELINE_METHODS, "full"), required=True)
    like: str | None = _opt(None, "a distill run folder: take its dataset, model, init, steps "
                            "and learned lrs", kind=str)
    protocol: str = _opt("few-step", "few-step: the paper's lr x epochs grid; converge: fresh "
                         "nets trained to convergence on the steps x images-per-class images "
                         "per class as one flat set (method full: the whole training set)",
                         PROTOCOLS)
    nets: int | None = _opt(None, "held-out nets for the final figure (default: 200 few-step, "
                            "5 converge)", kind=int)
    epochs: int | None = _opt(None, "converge: passes (default: 1000)", kind=int)
    lr: float | None = _opt(None, "converge: SGD lr (default: 0.01)", kind=float)
    search_nets: int = _opt(20, "held-out nets per grid cell")
    sets: int = _opt(10, "random draws (optimized real, k-NN)")
    dataset: str = _as_distill("dataset")
    data_root: str = _as_distill("data_root")
    model: str = _as_distill("model")
    init_scheme: str | None = _opt(None, f"default: {DistillConfig.init_scheme}; converge: "
                                   f"{CONVERGE_INIT}", kind=str, section=NOT_LIKE)
    pool: str = _as_distill("pool")
    steps: int = _as_distill("steps")
    distill_epochs: int = _as_distill("distill_epochs")
    images_per_class: int = _as_distill("images_per_class")
    downscale: int = _as_distill("downscale")
    minibatch: int = _as_distill("minibatch")
    seed: int = _as_distill("seed")
    device: str = _as_distill("device")
    backend: str = _backend()


@dataclass
class PretrainConfig:
    """Settings of `pretrain`, stored in the pool's manifest.json under "config"."""

    stored_file: ClassVar[str] = "manifest.json"
    stored_key: ClassVar[str] = "config"
    dataset: str = _trained_dataset()
    arch: str = _arch()
    models: int = _opt(0, "models in the pool", required=True)
    held_out: int | None = _opt(None, "models kept for evaluation only (default: 1 in 11, as "
                                "the paper's 2000+200)", kind=int)
    epochs: int | None = _opt(None, "default: the dataset's recommended schedule", kind=int)
    lr: float | None = _opt(None, "Adam lr (default: recommended)", kind=float)
    decay_epochs: int | None = _opt(None, "lr x0.1 every this many epochs (default: "
                                    "recommended)", kind=int)
    batch_size: int = _opt(128, "images per minibatch")
    group: int = _opt(10, "models trained together in one batch")
    init_scheme: str = _opt("xavier-normal", "weight initialization scheme")
    seed: int = _seed()
    data_root: str = _data_root()
    device: str = _device()
    backend: str = _backend()


@dataclass
class PoolImportConfig:
    """Settings of `pool-import`, stored in the pool's manifest.json under "config"."""

    stored_file: ClassVar[str] = "manifest.json"
    stored_key: ClassVar[str] = "config"
    dataset: str = _opt("", "dataset the models classify", required=True)
    arch: str = _arch()
    held_out: int | None = _opt(None, "models kept for evaluation only (default: 1 in 11)",
                                kind=int)
    data_root: str = _data_root()
    device: str = _device()
    backend: str = _backend()


EXPERT = ExpertSchedule()


@dataclass
class ExpertsConfig:
    """Settings of `experts`, stored in experts.json under "config"."""

    stored_file: ClassVar[str] = "experts.json"
    stored_key: ClassVar[str] = "config"
    dataset: str = _trained_dataset()
    arch: str = _arch()
    experts: int = _opt(0, "nets to train", required=True)
    epochs: int = _opt(EXPERT.epochs, "epochs each, weights kept after every one")
    lr: float = _opt(EXPERT.lr, "plain SGD lr")
    batch_size: int = _opt(EXPERT.batch_size, "images per minibatch")
    dsa: bool = _opt(EXPERT.dsa, "DSA on every real minibatch (as MTT)")
    init_scheme: str = _opt(CONVERGE_INIT, "weight initialization scheme")
    seed: int = _seed()
    data_root: str = _data_root()
    device: str = _device()
    backend: str = _backend()

    @property
    def schedule(self) -> ExpertSchedule:
        return ExpertSchedule(self.epochs, self.lr, self.batch_size, self.dsa)


def flag(name: str) -> str:
    """The command-line flag of a setting: ``images_per_class`` -> ``--images-per-class``."""
    return "--" + name.replace("_", "-")


def check_choices(settings: Any) -> None:
    """Refuse a setting outside its field's choices, naming them."""
    for f in fields(settings):
        choices, value = f.metadata.get("choices"), getattr(settings, f.name)
        if choices and value not in choices:
            raise DistillError(f"{flag(f.name)} must be one of {', '.join(choices)}, "
                               f"got {value!r}")


def settings_of(cls: type[Settings], values: dict[str, Any]) -> Settings:
    """``cls`` of ``values`` (a file's settings and the flags given), refusing unknown names,
    values outside the choices and a required setting not given."""
    check_known(values, cls)
    settings = cls(**values)
    for f in fields(cls):
        if f.metadata.get("required") and f.name not in values:
            raise DistillError(f"{flag(f.name)} is required (or --config FILE of stored "
                               "settings)")
    check_choices(settings)
    return settings


def read_config_file(path: str | Path, cls: type = DistillConfig) -> dict[str, Any]:
    """Settings of ``cls`` from a file: where its command stores them (``cls.stored_key`` of
    a JSON file such as a run's meta.json; a folder means its ``cls.stored_file``), or a
    JSON, TOML or YAML (with PyYAML) table of ``cls``'s fields."""
    path = Path(path)
    if path.is_dir() and cls.stored_file:
        path = path / cls.stored_file
    if not path.is_file():
        raise DistillError(f"--config {path}: no such file; pass the file a command stored "
                           "its settings in or a .toml / .yaml / .json file of settings")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            values = json.loads(path.read_text())
            if isinstance(values, dict) and isinstance(values.get(cls.stored_key), dict):
                values = values[cls.stored_key]  # a stored file: meta.json, a manifest, ...
            elif isinstance(values, dict) and any(isinstance(v, dict) for v in values.values()):
                raise DistillError(f"--config {path} holds no {cls.__name__} settings (a file "
                                   "of another command, or written before they were stored); "
                                   "give them as flags")
        elif suffix == ".toml":
            values = tomllib.loads(path.read_text())
        elif suffix in (".yaml", ".yml"):
            values = _read_yaml(path)
        else:
            raise DistillError(f"--config {path}: unknown format {suffix or '(no suffix)'!r}; "
                               "use .json (e.g. a run's meta.json), .toml or .yaml")
    except (ValueError, OSError) as exc:  # JSON and TOML errors are ValueErrors
        raise DistillError(f"--config {path} cannot be read: {_one_line(exc)}") from None
    if not isinstance(values, dict):
        raise DistillError(f"--config {path} must hold a table of settings "
                           f"({cls.__name__} field = value), got {type(values).__name__}")
    values = {str(name): value for name, value in values.items()}
    try:
        check_known(values, cls)
    except DistillError as exc:
        raise DistillError(f"--config {path}: {exc}") from None
    return {name: _typed(cls, name, value, path) for name, value in values.items()}


def _read_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise DistillError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml), "
                           "which is not installed; use a .toml or .json file") from None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DistillError(f"--config {path} cannot be read: {_one_line(exc)}") from None


def _typed(cls: type, name: str, value: Any, path: Path) -> Any:
    """``value`` as the field's type (an int is a fine float; None where None is the
    default)."""
    f = cls.__dataclass_fields__[name]
    kind = f.metadata["kind"]
    if value is None and f.default is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise DistillError(f"--config {path}: {name} must be {kinds.get(kind, kind.__name__)}, "
                       f"got {value!r}")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def check_known(settings: dict[str, Any], cls: type = DistillConfig) -> None:
    """Refuse a setting that is not a field of ``cls``, naming the closest one."""
    known = [f.name for f in fields(cls)]
    for name in sorted(settings):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            raise DistillError(f"unknown setting {name!r}; {hint}")
