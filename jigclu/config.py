"""Typed, validated run configuration.

Configs are validated once, at the edge: a YAML file plus ``key=value`` dotted overrides
(``optim.lr=0.05 model.grid=3``). An unknown key or an out-of-range value is one clear
:class:`~jigclu.errors.ConfigError` naming the key, raised before anything starts. So is a
credential (an access key, a ``user:secret@`` URI, a private key; :func:`refuse_secrets`, the
scan cluster files get too): it names the field, never the value, since credentials belong in
the environment, not in a config that is copied into every run directory.

The same models serve every trainer; each reads only its own keys (:mod:`jigclu.task_keys`). Defaults are
the paper's (Chen, Liu, Jia, CVPR 2021): SGD 0.9 / 1e-4, lr 0.03 per 256 images, cosine, m = 2, T = 0.3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jigclu.errors import ConfigError
from jigclu.secrets import comment_secrets, format_key_path, redact, scan_secrets

_CREDENTIALS_ADVICE = ("credentials belong in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                       "GOOGLE_APPLICATION_CREDENTIALS, PGPASSWORD) or a cloud role, never in a config")


class _Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    dataset: str = Field("digits", description="source spec: digits, fashion_mnist[:DIR], mnist:DIR, "
                         "cifar10:DIR, cifar100:DIR, folder:DIR, parquet:URI")
    image_size: int | None = Field(None, ge=8, le=1024, description="resize source images to this side")
    batch_size: int = Field(256, ge=2, description="global batch (all workers together)")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes per trainer")
    on_corrupt: Literal["skip", "fail"] = "skip"
    limit: int | None = Field(None, ge=1, description="use only the first N training images")
    val_size: float | None = Field(None, gt=0, description="a seeded, class-balanced validation split carved "
                                   "from the training images (a count, or a fraction < 1): excluded from "
                                   "training, it is what the monitor and the downstream trainers score; "
                                   "None = score on the test split")
    val_seed: int = Field(0, description="seeds the validation split and the monitor's image subsets; apart from "
                          "seed, so runs of different seeds are scored on the same images")
    loader: Literal["auto", "memory", "ray_data"] = Field(
        "auto", description="memory: read the split into every process; ray_data: stream a parquet: source "
        "through Ray Data into the Ray Train workers (decoded in Ray Data tasks, bounded memory; every trainer); "
        "auto: stream parquet sources of at least data.stream_min_images under Ray Train, else memory")
    stream_min_images: int = Field(200_000, ge=1, description="loader=auto streams parquet sources this large "
                                   "(counted from Parquet metadata)")
    shuffle_buffer: int = Field(1024, ge=0, description="ray_data: rows in each worker's local shuffle buffer "
                                "(seeded per epoch and rank; filled before the epoch's first step, so it costs "
                                "start-up time and memory); 0 = no local shuffle")
    decode_cpus: float = Field(0.5, gt=0.0, le=64.0, description="ray_data: CPUs each Ray Data decode task "
                               "reserves")
    decode: Literal["tasks", "device"] = Field(
        "tasks", description="ray_data: where the images are decoded: in Ray Data tasks on CPUs (tasks), or "
        "batched in each training worker on its device (device: torchvision's decode_jpeg on the GPU with "
        "scaling.gpu, the same code on the worker's CPU without; Ray Data tasks then only read the bytes)")

    @field_validator("val_size")
    @classmethod
    def _check_val_size(cls, v: float | None) -> float | None:
        if v is not None and v >= 1 and not float(v).is_integer():
            raise ValueError(f"val_size is a count of images (a whole number) or a fraction below 1, got {v}")
        return v


class ModelConfig(_Section):
    arch: Literal["resnet18", "resnet50", "resnet18_small", "resnet50_small"] = "resnet18_small"
    width: int = Field(64, ge=4, le=256, description="channels of the first stage (64 = torchvision)")
    grid: int = Field(2, ge=2, le=8, description="m: montages hold m x m patches")
    proj_dim: int = Field(128, ge=2, le=4096, description="clustering embedding size")


class JigsawConfig(_Section):
    crop_size: int = Field(224, ge=8, le=2048, description="montage side; each patch is crop_size / m")
    cross_ratio: float = Field(0.3, ge=0.0, lt=0.5, description="overlap of the crops at m = 2")
    augment: bool = True
    crop_scale: float = Field(0.2, gt=0.0, le=1.0, description="per-patch random-resized crop: smallest area "
                              "fraction of the patch's box (the paper's 0.2; 0.5 suits 28-32 px images)")
    blur_p: float = Field(0.5, ge=0.0, le=1.0, description="probability of Gaussian blur per patch (the paper's "
                          "0.5; blur wipes out 16 px patches)")
    montage_scope: Literal["global", "local"] = "global"


class LossConfig(_Section):
    w_clu: float = Field(1.0, ge=0.0)
    w_loc: float = Field(1.0, ge=0.0)
    temperature: float = Field(0.3, gt=0.0, le=10.0, description="SupClu's temperature (method jigclu), "
                               "NT-Xent's (method simclr)")

    @model_validator(mode="after")
    def _some_weight(self) -> "LossConfig":
        if self.w_clu == 0 and self.w_loc == 0:
            raise ValueError("loss.w_clu and loss.w_loc are both 0: nothing to train")
        return self


class OptimConfig(_Section):
    lr: float = Field(0.03, gt=0.0, le=100.0, description="learning rate for a batch of 256")
    scale_lr: bool = Field(True, description="lr = optim.lr * data.batch_size / 256")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    warmup_epochs: float = Field(0.0, ge=0.0)


class TrainConfig(_Section):
    epochs: int = Field(200, ge=1, le=100000)
    steps_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (short runs)")
    epoch_s: float | None = Field(
        None, gt=0.0, le=1e6, description="pretrain: end each epoch after this many seconds of training (or at "
        "the end of its pass over the data, whichever comes first) and run the lr schedule on training time: a "
        "fixed wall-clock budget of train.epochs x epoch_s, in which a slower recipe sees fewer images")
    amp: Literal["none", "bf16"] = "none"
    progress: bool = True
    keep_checkpoints: int = Field(2, ge=1, le=1000, description="newest checkpoints kept (a corrupt newest "
                                  "one falls back to the previous)")
    checkpoint_every_s: float | None = Field(
        None, gt=0.0, le=1e6, description="also checkpoint mid-epoch (with the data position) when this many "
        "seconds have passed since the last checkpoint; null: only at epoch ends and on SIGTERM (a sweep's "
        "in-process trials checkpoint per epoch only)")


class MonitorConfig(_Section):
    """kNN monitor: a cheap, honest per-epoch quality metric on a held-out labeled split
    (``data.val_size``'s validation split when set, else the test split)."""

    knn: bool = True
    k: int = Field(20, ge=1, le=1000)
    knn_temperature: float = Field(0.07, gt=0.0)
    train_limit: int | None = Field(5000, ge=10, description="labeled bank size (None = all)")
    test_limit: int | None = Field(2000, ge=10, description="held-out queries (None = all)")
    every: int = Field(1, ge=1, description="run the monitor every N epochs (and at the last)")
    image_size: int | None = Field(None, ge=8, le=2048, description="side of the images the monitor (and the "
                                   "test score after a sweep) feeds the backbone; null: jigsaw.crop_size, the "
                                   "montage side (e.g. 32 to score 64 px montages of 32 px patches at 32 px)")
    probe: bool = Field(False, description="also fit a linear probe (logistic regression on standardised "
                        "pooled features of the bank) and score it on the queries: probe_top1")
    collapse_std: float = Field(0.02, ge=0.0, description="collapsed when the per-dimension std of the "
                                "L2-normalised features (times sqrt(dim)) falls below this")
    collapse_patience: int = Field(2, ge=1, description="collapsed after this many evaluations in a row "
                                   "with kNN at chance (<= 1.5 x 100/classes)")


class EvalConfig(_Section):
    """Downstream trainers (linear, semi, finetune). ``None`` means the protocol's paper default
    (the paper's supplementary section 3), resolved by the trainer and written to the run's config.

    The downstream trainers read ``eval.*`` for the recipe, ``data.*`` for the data (but
    ``eval.batch_size``, not ``data.batch_size``) and ``train.steps_per_epoch``/``amp``/
    ``progress``; ``train.epochs`` and ``optim.*`` belong to pretraining.
    """

    pretrained: str | None = Field(None, description="checkpoint (.pt, run dir or export); None = random init")
    protocol: Literal["linear", "finetune"] | None = Field(None, description="finetune command: which protocol")
    labels: str = Field("10%", description="semi: 1%, 10%, a fraction in (0, 1], or a file list")
    label_seed: int = 0
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0.0, description="classifier lr (linear) / backbone lr (semi, finetune)")
    classifier_lr: float | None = Field(None, gt=0.0, description="semi, finetune: the classifier's own lr "
                                        "(ignored when the backbone is frozen)")
    milestones: list[int] | None = Field(None, description="epochs where the lr is multiplied by gamma; "
                                         "None = the paper's, scaled to eval.epochs")
    gamma: float | None = Field(None, gt=0.0, le=1.0)
    weight_decay: float | None = Field(None, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    batch_size: int | None = Field(None, ge=2, description="global batch; None = protocol default")
    image_size: int | None = Field(None, ge=8, description="input side; None = jigsaw.crop_size")
    crop_scale: float = Field(0.08, gt=0.0, le=1.0, description="linear/semi: smallest area fraction "
                              "of the random-resized crop (torchvision's 0.08)")
    val_limit: int | None = Field(None, ge=10, description="score on a seeded subset of the test split "
                                  "(None = all of it)")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, v: Any) -> Any:
        # YAML and key=value overrides turn 0.1 into a float: keep one spelling (a string)
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, v: str) -> str:
        fraction = label_fraction(v)
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"label fraction must lie in (0, 1] (or 0%-100%), got {v!r}")
        if fraction is None and not v.strip():
            raise ValueError("labels must be 1%, 10%, a fraction in (0, 1] or a file list")
        return v.strip()

    @field_validator("milestones")
    @classmethod
    def _check_milestones(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (any(m < 1 for m in v) or sorted(set(v)) != list(v)):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {v}")
        return v


def label_fraction(spec: str) -> float | None:
    """``"10%"`` -> 0.1, ``"0.1"`` -> 0.1; None when ``spec`` is not a number (a file list)."""
    text = spec.strip()
    try:
        return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


class ScalingSection(_Section):
    workers: int | tuple[int, int] = Field(0, description="0: in-process; N; or [min, max] (elastic)")
    gpu: bool = False
    max_failures: int = Field(3, ge=-1)
    cpus_per_worker: float = Field(1.0, gt=0.0)

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        if isinstance(v, tuple):
            lo, hi = v
            if lo < 1 or hi < lo:
                raise ValueError("workers as [min, max] needs 1 <= min <= max")
        elif v < 0:
            raise ValueError("workers must be >= 0")
        return v


class RunConfig(_Section):
    """Everything one training run needs. Trainers read the sections they use."""

    name: str | None = Field(None, description="run name; default: <task>-<timestamp>")
    output_dir: str = "runs"
    storage: str | None = Field(None, description="Ray Train storage (local dir, s3://, gs://)")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    method: Literal["jigclu", "simclr"] = Field(
        "jigclu", description="pretraining method (jigclu/methods/): jigclu, or simclr, the contrastive baseline "
        "(two views per image, NT-Xent at loss.temperature; reads no model.grid, jigsaw.cross_ratio, "
        "jigsaw.montage_scope, loss.w_clu, loss.w_loc)")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    jigsaw: JigsawConfig = JigsawConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    monitor: MonitorConfig = MonitorConfig()
    eval: EvalConfig = EvalConfig()
    scaling: ScalingSection = ScalingSection()

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _check_grid(self) -> "RunConfig":
        m, crop = self.model.grid, self.jigsaw.crop_size
        if crop % m:
            raise ValueError(f"jigsaw.crop_size={crop} cannot be split into a {m}x{m} grid "
                             f"(model.grid={m} must divide it)")
        if crop // m < 4:
            raise ValueError(f"patches of jigsaw.crop_size/model.grid = {crop // m} px are too small (min 4)")
        return self

    @property
    def patch_size(self) -> int:
        return self.jigsaw.crop_size // self.model.grid

    @property
    def monitor_size(self) -> int:
        """The side the kNN monitor and a sweep's test score feed the backbone."""
        return self.monitor.image_size or self.jigsaw.crop_size

    def effective_lr(self) -> float:
        scale = self.data.batch_size / 256 if self.optim.scale_lr else 1.0
        return self.optim.lr * scale


# ---------------------------------------------------------------------------------------------
# loading, overrides, error formatting


def refuse_secrets(doc: Any, source: str, text: str | None = None) -> None:
    """Refuse ``doc`` (and the raw ``text`` it was parsed from) when it carries a credential:
    one :class:`ConfigError` naming the field or line, never the value."""
    problems, hits = scan_secrets(doc, kind=None)
    if problems:
        path, what = problems[0]
        field = redact(format_key_path(path), hits)  # a key that is itself a secret is not echoed either
        raise ConfigError(f"{source}: '{field}' {what}; {_CREDENTIALS_ADVICE}")
    for line_no, what in comment_secrets(text or "", hits)[:1]:
        raise ConfigError(f"{source}: line {line_no} {what}; {_CREDENTIALS_ADVICE}")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[2, 3]"]`` into a nested dict; values are parsed as YAML scalars.
    An override that carries a credential is refused (:func:`refuse_secrets`)."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        name, _, scanned = pair.partition("=")
        for part in reversed(name.strip().split(".")):  # the raw text nested: a YAML comment is scanned too
            scanned = {part: scanned}
        refuse_secrets(scanned, "override")
        if "=" not in pair:
            raise ConfigError(f"override '{pair}' is not key=value")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{pair}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{pair}': '{part}' is not a section")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``extra`` wins."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for missing or malformed files."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, not {type(data).__name__}")
    refuse_secrets(data, f"config file {p}", text)
    return data


def format_validation_error(exc: ValidationError) -> str:
    """First problem of a pydantic error as ``config: key.path: message``."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"config: unknown key '{loc}'"
    msg = err["msg"].removeprefix("Value error, ")
    if loc:
        return f"config: {loc}: {msg} (got {err.get('input')!r})" if err["type"] != "value_error" \
            else f"config: {loc}: {msg}"
    return f"config: {msg}"


def build_config(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                model: type[BaseModel] = RunConfig) -> Any:
    """Load ``path`` (optional), apply ``key=value`` overrides, validate into ``model``."""
    data = read_yaml(path) if path else {}
    data = deep_merge(data, parse_overrides(overrides or []))
    return build_config(model, data)


def save_config(cfg: BaseModel, location: str | Path) -> None:
    """Write the resolved config as YAML (atomically, to a path or a storage URI) so the run can
    be repeated from it."""
    from jigclu.storage import write_atomic

    write_atomic(location, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
