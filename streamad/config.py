"""Configuration values of models and frame scores (plain frozen dataclasses, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from streamad.errors import ConfigError

MAX_INPUT_SIDE = 4096
VIDEO_SMOOTH_S = 0.1  # the frame-score filter of video models: 2-3 frames (docs/results.md, the ablation)
AUTO = "auto"  # --method and --motion left to the sources: video gets VIDEO_METHOD and VIDEO_MOTION
VIDEO_METHOD = "knn"  # position-free: judges things, not places (docs/results.md, the ablation)
VIDEO_MOTION = "feat,speed"
IMAGE_METHOD = "padim"
VIDEO_BANK_SIZE = 2500  # knn on video: as good as 10000 on UCSD Ped2, 2-3x cheaper (docs/methods.md)
IMAGE_BANK_SIZE = 10000  # knn on image sets: varied textures need it (magnetic tile: pixel AUROC 0.78 vs 0.74 at 2500)
# knn's patch grid, in input pixels: video judges things that span many patches, within a frame
# budget; image sets are judged on padim's grid (every tap, the finest at stride 4), whose finer
# maps localise small defects better, at 2x the fit time (docs/results.md).
VIDEO_PATCH_STRIDE = 8
IMAGE_PATCH_STRIDE = 4
MOTION_CUES = ("feat", "flow", "speed")


def motion_kinds(motion: str) -> tuple[str, ...]:
    """The cues a ``--motion`` value names: ``off``, one of :data:`MOTION_CUES`, several
    comma-separated, or ``both`` (``feat,flow``); in the order of :data:`MOTION_CUES`.

    Example:
        >>> motion_kinds("speed,feat"), motion_kinds("both"), motion_kinds("off")
        (('feat', 'speed'), ('feat', 'flow'), ())
    """
    named = {"off": [], "both": ["feat", "flow"]}.get(motion, [part.strip() for part in motion.split(",")])
    unknown = [part for part in named if part not in MOTION_CUES]
    if unknown or (motion != "off" and not named):
        raise ConfigError(f"expected --motion off, both, or cues among {MOTION_CUES} comma-separated, got {motion!r}")
    return tuple(cue for cue in MOTION_CUES if cue in named)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything that defines a model before it has seen data.

    Attributes:
        method: a registered scorer (:func:`streamad.scorers.registry.scorer_names`), or
            ``auto``: :data:`VIDEO_METHOD` for video, :data:`IMAGE_METHOD` for image sets
            (:meth:`for_sources`, when a fit starts).
        backbone: a name from :data:`streamad.features.backbones.SPECS`.
        input_hw: network input (height, width), multiples of 16; None picks it from the first
            frame (aspect ratio kept, short side near 256).
        k: projected dimension (Gaussian scorers).
        seed: seeds the scorer's random parts (the projection).
        eps: ridge added to every covariance (Gaussian scorers).
        sigma: Gaussian blur of the anomaly map, in input pixels.
        weights: weights file (required for torchvision backbones).
        motion: cues besides appearance, for video (:mod:`streamad.features.temporal`): ``"feat"`` (how
            the embeddings change over a lag), ``"flow"`` (optical flow per cell), ``"speed"``
            (moving things' speed, :mod:`streamad.scorers.speed`), several comma-separated,
            ``"both"`` (``feat,flow``); ``"off"``: appearance only; ``"auto"``: the method's
            video cues (:data:`VIDEO_MOTION` for :data:`VIDEO_METHOD`, else off). Image sets get
            appearance only whatever this says; which cues a method takes, its spec says.
        motion_lag_s: the motion lag in seconds; None picks one frame step (``--every`` over
            the first source's frame rate) when the fit starts.
        backbone_b: the second backbone of a feature-mapping method (``pfm``, ``pefm``); None:
            none, or for those methods the default pair (:func:`streamad.scorers.registry.resolve`).
        weights_b: the second backbone's weights file (torchvision backbones).
        bank_size: patches a memory bank keeps (``knn``), however long the stream; None:
            :data:`VIDEO_BANK_SIZE` for video (a camera's frames repeat themselves),
            :data:`IMAGE_BANK_SIZE` for image sets (:meth:`for_sources`).
        patch_stride: the stride in input pixels of the grid ``knn``'s patches live on (it uses
            the backbone's taps at that stride and coarser); None: :data:`VIDEO_PATCH_STRIDE`
            for video, :data:`IMAGE_PATCH_STRIDE` for image sets (:meth:`for_sources`; stores
            from before it was recorded: 8).
    """

    method: str = "padim"
    backbone: str = "lite0"
    input_hw: tuple[int, int] | None = None
    k: int = 100
    seed: int = 0
    eps: float = 0.01
    sigma: float = 4.0
    weights: str | None = None
    motion: str = "off"
    motion_lag_s: float | None = None
    backbone_b: str | None = None
    weights_b: str | None = None
    bank_size: int | None = None
    patch_stride: int | None = None

    def __post_init__(self) -> None:
        if self.motion != AUTO:
            motion_kinds(self.motion)
        if self.motion_lag_s is not None and not self.motion_lag_s > 0:
            raise ConfigError(f"expected a positive motion lag, got {self.motion_lag_s} s")
        if self.input_hw is not None and any(v < 32 or v % 16 for v in self.input_hw):
            raise ConfigError(f"expected an input size whose sides are multiples of 16 and >= 32, got {self.input_hw}")
        if self.input_hw is not None and max(self.input_hw) > MAX_INPUT_SIDE:
            raise ConfigError(f"expected an input size of at most {MAX_INPUT_SIDE} per side, got {self.input_hw}; hint: a side near 256 is usual")
        if self.k < 1:
            raise ConfigError(f"expected k >= 1, got {self.k}")
        if self.bank_size is not None and self.bank_size < 1:
            raise ConfigError(f"expected --bank-size >= 1, got {self.bank_size}")
        if self.patch_stride is not None and self.patch_stride < 1:
            raise ConfigError(f"expected --patch-stride >= 1, got {self.patch_stride}")
        if self.eps <= 0:
            raise ConfigError(f"expected eps > 0, got {self.eps}")
        if self.sigma < 0:
            raise ConfigError(f"expected sigma >= 0, got {self.sigma}")


    def for_sources(self, video: bool) -> ModelConfig:
        """``auto`` method and motion settled for video (or image sets: ``video`` False).

        Example:
            >>> auto = ModelConfig(method="auto", motion="auto")
            >>> (auto.for_sources(True).method, auto.for_sources(True).motion), auto.for_sources(False).motion
            (('knn', 'feat,speed'), 'off')
            >>> ModelConfig(method="knn").for_sources(True).bank_size, ModelConfig(method="knn").for_sources(False).bank_size
            (2500, 10000)
            >>> ModelConfig(method="knn").for_sources(True).patch_stride, ModelConfig(method="knn").for_sources(False).patch_stride
            (8, 4)
        """
        method = self.method if self.method != AUTO else VIDEO_METHOD if video else IMAGE_METHOD
        motion = self.motion if self.motion != AUTO else VIDEO_MOTION if video and method == VIDEO_METHOD else "off"
        bank_size = self.bank_size or (VIDEO_BANK_SIZE if video else IMAGE_BANK_SIZE)
        patch_stride = self.patch_stride or (VIDEO_PATCH_STRIDE if video else IMAGE_PATCH_STRIDE)
        return replace(self, method=method, motion=motion, bank_size=bank_size, patch_stride=patch_stride)


@dataclass(frozen=True, slots=True)
class FrameScoreConfig:
    """How a frame's score is derived from its anomaly map, causally.

    Attributes:
        normalised: divide each position's distance by its mean on held-out normal frames
            (``d / mean_p``), so maps read "times the normal distance here"; needs the
            normalisation stored by ``fit``. ``--raw`` turns it off.
        topk_fraction: frame score = mean of the top fraction of map pixels (0 = the maximum).
        window: causal moving average over the last ``window`` frames of the same source.
        smooth_s: time constant, in seconds of presentation time, of a causal exponential
            filter of each source's frame scores (0: none); None: the model's own, which a fit
            on video sets to :data:`VIDEO_SMOOTH_S` and on image sets to 0 (:meth:`settled`).
        branch: one cue of a model with several (gcad: ``local`` or ``global``) scored alone,
            the others counted at their normal level; ``both``: all cues (the default).
    """

    normalised: bool = True
    topk_fraction: float = 0.01
    window: int = 1
    branch: str = "both"
    smooth_s: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.topk_fraction <= 1:
            raise ConfigError(f"expected a top-k fraction in [0, 1], got {self.topk_fraction}")
        if self.window < 1:
            raise ConfigError(f"expected a temporal window >= 1, got {self.window}")
        if self.smooth_s is not None and not 0 <= self.smooth_s < float("inf"):
            raise ConfigError(f"expected --smooth in seconds >= 0, got {self.smooth_s}")

    def settled(self, model_s: float) -> FrameScoreConfig:
        """With the filter's time constant the model's (``model_s``) unless one was given."""
        return self if self.smooth_s is not None else replace(self, smooth_s=model_s)

    def attrs(self) -> dict[str, object]:
        """As stored with scores and thresholds (a threshold holds only for the same settings)."""
        chosen: dict[str, object] = {"branch": self.branch} if self.branch != "both" else {}  # stores from before --branch stay valid
        if self.smooth_s:  # and from before the filter
            chosen["smooth_s"] = self.smooth_s
        return {"normalised": self.normalised, "topk_fraction": self.topk_fraction, "window": self.window, **chosen}


SHARD_FRAMES = 2000  # at most this many frames a shard (a fit's checkpoint interval)


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """Where and how a job runs on Ray.

    Attributes:
        address: ``auto`` (the cluster this node joined), ``HOST:PORT``, or None (a new local
            cluster on this machine's cores, for the job).
        gpus_per_task: GPUs each shard or actor asks for (0: CPU workers).
        shard_frames: at most this many frames a shard; shards are as many as the cluster runs
            at once, or a multiple of that.
    """

    address: str | None = None
    gpus_per_task: float = 0.0
    shard_frames: int = SHARD_FRAMES

    def __post_init__(self) -> None:
        if self.gpus_per_task < 0 or self.shard_frames < 1:
            raise ConfigError(f"expected --ray-gpus-per-task >= 0 and --ray-shard-frames >= 1, got {self.gpus_per_task} and {self.shard_frames}")
