"""`GridConfig`: the settings a command was given (where things are, how runs execute, the numeric options).

`GridConfig` is read only by the planner (`cqd_port.experiments.plan`), which
resolves it into `RunJob`s (what changes the numbers) and a `Workspace`
(where runs live and how they execute); the data settings become a
`DataCatalog` (`catalog()`). Executing a run never reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cqd_port.data import PREPARED_DEFAULT
from cqd_port.data.catalog import DataCatalog, DatasetSource
from cqd_port.errors import CqdError
from cqd_port.experiments.networks import NetworkSpec, imagenet_model_path

# Seconds between a run's checkpoints: a crash loses at most this much training (a resume is bit-identical from any
# epoch); a GPU epoch of a few seconds does not wait on a 0.8 GB VGG-M checkpoint each time; the demo's runs of a few
# seconds write their final one only.
CHECKPOINT_INTERVAL = 60.0


@dataclass
class GridConfig:
    """Where data, models and runs live, and how runs execute.

    `pretrained` maps a network ("vgg-m", "vgg-vd-16") to the model file that
    stands in for the ImageNet model (the demo's pretrained stand-in); when
    absent the file is looked up in `models`. `lr_scale` multiplies the
    released schedule (the demo's short runs); the input size and average
    image come from the model's meta (`average_image` "stored": subtracted as
    stored, as the release; "colour": its mean colour); `domain_a` "native"
    reads domain A and the full images at native resolution, resized on the fly
    in single precision, as the release ("prepared": their 224 JPEGs); a missing
    data variant is prepared from `cub_root` / `cars_root` by `workers` processes
    (None: one per usable CPU; with `prepare_config` as extra `DegradationConfig` fields).
    `lowres_kernel` makes the low-resolution variants with "bilinear" (the
    user's specification, default) or "bicubic" (the release; its own
    prepared folders, `lowres-bicubic`). `checkpoint_interval`: seconds
    between a run's checkpoints (always one after its last epoch; 0: every
    epoch).
    """

    out: Path
    prepared: Path = PREPARED_DEFAULT
    models: Path = Path("models")
    cub_root: Path | None = None
    cars_root: Path | None = None
    sed_model: Path | None = None
    device: str = "auto"
    gpus: tuple[int, ...] = ()  # launcher slots: one job at a time per entry (a GPU listed twice runs two)
    tf32: bool = False
    workers: int | None = None  # processes preparing a missing variant (None: one per usable CPU)
    seed: int = 0
    lrn_mode: str = "exact"
    pretrained: dict[str, Path] = field(default_factory=dict)
    lr_scale: float = 1.0
    progress: bool = True
    synthetic: bool = False
    edges_method: str | None = None  # what `edges` variants are made with; None: `edges`, the paper's SED (needs sed_model)
    prepare_config: dict | None = None  # extra DegradationConfig fields
    batch_size: int | None = None  # overrides the paper's batch size (the demo's small data)
    average_image: str = "stored"  # "colour": the mean colour of averageImage (cqd-port's old behaviour)
    domain_a: str = "native"  # "prepared": domain A from its prepared 224 JPEGs (cqd-port's old behaviour)
    lowres_kernel: str = "bilinear"  # low-res variants: "bilinear" (the user's specification) or "bicubic" (the release)
    evaluate_every_epoch: bool = True  # False: the test set after the last epoch only (same accuracy; the demo, for time)
    checkpoint_interval: float = CHECKPOINT_INTERVAL  # seconds between a run's checkpoints (0: every epoch); changes no number
    # `cqd-port train` (one run on the user's data; cqd_port.experiments.custom):
    networks: dict[str, NetworkSpec] = field(default_factory=dict)  # RunSpec.arch -> the network; else the ImageNet VGG of `models`
    datasets: dict[str, DatasetSource] = field(default_factory=dict)  # dataset name -> where and how to read it
    plugin_params: dict[str, dict] = field(default_factory=dict)  # `module:function` degradation -> its keyword arguments
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "matconvnet"  # or "torch" (torch.optim.SGD)

    def __post_init__(self) -> None:
        from cqd_port.data.degrade import LOWRES_KERNELS
        from cqd_port.train.trainer import check_checkpoint_interval

        check_checkpoint_interval(self.checkpoint_interval, "--checkpoint-every")
        if self.lowres_kernel not in LOWRES_KERNELS:
            raise CqdError(f"--lowres-kernel {self.lowres_kernel}: use bilinear (the specification) or bicubic (the release)")
        if self.batch_size is not None and self.batch_size < 1:
            raise CqdError(f"batch size {self.batch_size}: must be at least 1")

    def catalog(self) -> DataCatalog:
        """The data settings as the `DataCatalog` every data question goes to."""
        return DataCatalog(
            prepared=Path(self.prepared),
            cub_root=self.cub_root,
            cars_root=self.cars_root,
            sources=dict(self.datasets),
            sed_model=self.sed_model,
            edges_method=self.edges_method,
            lowres_kernel=self.lowres_kernel,
            prepare_config=self.prepare_config,
            plugin_params=dict(self.plugin_params),
            workers=self.workers,
        )

    def network(self, arch: str) -> NetworkSpec:
        """The network a run of `arch` starting from 'imagenet' begins with: `networks[arch]`, else the ImageNet VGG."""
        return self.networks.get(arch) or NetworkSpec(arch, str(self.model_file(arch)))

    def model_file(self, arch: str) -> Path:
        """The ImageNet (or stand-in) model for `arch`; CqdError naming the file and convert-weights when missing."""
        if arch in self.networks:
            weights = self.networks[arch].weights
            return Path(weights) if weights is not None else Path("random-init")
        if arch in self.pretrained:
            path = Path(self.pretrained[arch])
            if not path.is_file():
                raise CqdError(f"pretrained model for {arch} missing: {path}")
            return path
        return imagenet_model_path(self.models, arch)
