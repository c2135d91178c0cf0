"""The ``streamad`` command line: click options mapped one-to-one onto the pipelines' jobs.

Each command imports its job only when it runs, so ``streamad --help`` loads neither torch nor
zarr nor PyAV.
"""

from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from streamad.errors import StreamadError

if TYPE_CHECKING:
    from streamad.config import FrameScoreConfig

F = TypeVar("F", bound=Callable[..., Any])
BACKBONES = ["lite0", "lite1", "lite2", "resnet18", "wide_resnet50_2"]


class ClickProgress:
    """Progress bars on stderr (a :class:`streamad.engine.progress.Progress`)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()  # bars in a log file are noise
        self._bar: Any = None
        self._label = ""

    def start(self, label: str, total: int | None) -> None:
        self.finish()
        if self.enabled:
            self._label = label
            self._bar = click.progressbar(length=total or None, label=f"{label:<12}", file=sys.stderr, show_pos=True, show_eta=True, width=30)
            self._bar.__enter__()

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.label = f"{self._label:<12} {text}"

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def one_line(exc: BaseException) -> str:
    """An exception as one line for the user: streamad's own message, or what happened to which
    path (file system), memory, or an unexpected error with the hint to rerun with --debug."""
    if isinstance(exc, StreamadError):
        text = str(exc)
    elif isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc) or "not enough memory" in str(exc):
        text = "expected the work to fit in memory, got an allocation failure; hint: lower --input-size or --batch-size, or use a machine with more memory"
    elif isinstance(exc, OSError):
        where = " ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "a file"
        hint = {errno.ENOSPC: "free space on that disk or write elsewhere", errno.EACCES: "check the permissions", errno.EROFS: "write elsewhere"}
        reason = exc.strerror or str(exc)
        text = f"could not use {where}: {reason}; hint: {hint.get(exc.errno or 0, 'check the path')}"
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        text = f"unexpected {type(exc).__name__}: {first}; hint: rerun with --debug for the traceback and report it"
    return " ".join(text.split())


def friendly_errors(func: F) -> F:
    """Turn any error into a one-line message and exit status 1, without a traceback (the
    top-level ``--debug`` shows it)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            context = click.get_current_context(silent=True)
            if context is not None and (context.find_root().obj or {}).get("debug"):
                raise
            raise click.ClickException(one_line(exc)) from None

    return wrapper  # type: ignore[return-value]


def parse_hw(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        height, width = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HEIGHTxWIDTH such as 256x384, got {value!r}") from None
    return height, width


def setup(threads: int | None, verbose: bool) -> None:
    """Logging, glibc's allocator (see tune_allocator) and threads."""
    from streamad.engine.runtime import set_threads, tune_allocator

    if threads is not None and threads < 1:
        raise click.BadParameter(f"expected a thread count >= 1, got {threads}; hint: leave it out for torch's choice", param_hint="--threads")

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tune_allocator()
    set_threads(threads)


def report_drops(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Apply option decorators in the order written."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


with_common = options(
    click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto."),
    click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's choice)."),
    click.option("--workers", type=click.IntRange(min=1), default=None, help="Backbone passes at once (default: 2 on a multi-core CPU, 1 on CUDA)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Frames per backbone pass."),
    click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, help="Use every N-th frame."),
    click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First frame index of each source."),
    click.option("--stop", type=click.IntRange(min=1), default=None, help="Stop before this frame index of each source."),
    click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
    click.option("--verbose", "-v", is_flag=True, help="Log what happens."),
)

with_ray = options(
    click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="local",
        default=None,
        metavar="[ADDRESS]",
        help="Run on Ray: alone (put it last) or local, a local cluster here; auto, the cluster this node joined; or HOST:PORT (pip install 'streamad[ray]').",
    ),
    click.option(
        "--ray-gpus-per-task", type=click.FloatRange(min=0), default=0.0, show_default=True, help="GPUs each Ray task or actor asks for (0: CPU workers)."
    ),
    click.option("--ray-shard-frames", type=click.IntRange(min=1), default=2000, show_default=True, help="fit --ray: at most this many frames a shard."),
)


def cluster_options(kw: dict[str, Any]) -> Any:
    """The --ray options, or None when the job runs here."""
    if kw["ray_address"] is None:
        return None
    from streamad.pipelines.distributed import ClusterOptions

    address = None if kw["ray_address"] == "local" else kw["ray_address"]
    return ClusterOptions(address=address, gpus_per_task=kw["ray_gpus_per_task"], shard_frames=kw["ray_shard_frames"])


with_frame_score = options(
    click.option("--raw", is_flag=True, help="Frame scores from distances not normalised per position."),
    click.option(
        "--topk", type=click.FloatRange(0, 1), default=0.01, show_default=True, help="Frame score = mean of the top fraction of map pixels (0 = max)."
    ),
    click.option("--window", type=click.IntRange(min=1), default=1, show_default=True, help="Causal moving average over this many frames per source (camera)."),
    click.option("--branch", type=click.Choice(["local", "global", "both"]), default="both", show_default=True, help="gcad: score one branch alone."),
)


def frame_score_config(kw: dict[str, Any]) -> FrameScoreConfig:
    """The frame-score options as a config (torch is imported only when a command runs)."""
    from streamad.config import FrameScoreConfig

    return FrameScoreConfig(normalised=not kw["raw"], topk_fraction=kw["topk"], window=kw["window"], branch=kw["branch"])


def score_options(kw: dict[str, Any], **extra: Any) -> Any:
    """The common and frame-score options of score, eval and calibrate as ScoreOptions."""
    from streamad.engine.scoring import ScoreOptions

    picked = {k: kw[k] for k in ("every", "start", "stop", "batch_size", "device", "workers") if k in kw}
    return ScoreOptions(frame_score=frame_score_config(kw), **picked, **extra)


class OneLineErrors(click.Group):
    """A usage error (a bad option value, an unknown command) is one line, with where to look,
    instead of click's usage block."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise self.short(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise self.short(exc) from None

    @staticmethod
    def short(exc: click.UsageError) -> click.UsageError:
        if exc.ctx is None:
            return exc
        return click.UsageError(f"{exc.format_message()} (see `{exc.ctx.command_path} --help`)")


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamad")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")
@click.pass_context
def main(context: click.Context, debug: bool) -> None:
    """Find and localise anomalies in videos, frame folders and image sets, without labels."""
    context.obj = {"debug": debug}


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--model", "-m", "model_path", default="model.zarr", show_default=True, help="Model store to write.")
@click.option("--method", default=None, help="Scorer: padim, soe, pfm, pefm, ae-l2, ae-ssim, or any registered method (default padim).")
@click.option("--backbone", type=click.Choice(BACKBONES), default=None, help="Backbone (default lite0).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="State dict file for torchvision backbones.")
@click.option("--input-size", default=None, help="HEIGHTxWIDTH (multiples of 16); default keeps the aspect ratio, short side ~256.")
@click.option("-k", "k", type=click.IntRange(min=1), default=None, help="Projected dimension (default 100).")
@click.option("--seed", type=int, default=None, help="Projection seed (default 0).")
@click.option("--eps", type=float, default=None, help="Covariance ridge (default 0.01).")
@click.option("--motion", type=click.Choice(["off", "feat", "flow", "both"]), default=None, help="Motion cues for video (see README); default off.")
@click.option("--backbone-b", type=click.Choice(BACKBONES), default=None, help="Second backbone of pfm/pefm (default lite2).")
@click.option("--weights-b", type=click.Path(dir_okay=False), default=None, help="State dict file for a torchvision --backbone-b.")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Training epochs of trained scorers (pfm, pefm, ae-*; default: the papers' schedule scaled to the data).",
)
@click.option("--cache-frames", type=click.IntRange(min=1), default=None, help="Trained scorers: frames kept (reservoir-sampled) to train on (default 1000).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=2000, show_default=True, help="Frames between checkpoints.")
@click.option(
    "--calibration-frames", type=click.IntRange(min=1), default=500, show_default=True, help="At most this many held-out frames normalise the distances."
)
@click.option(
    "--holdout-every",
    type=click.IntRange(min=2),
    default=None,
    help="Every N-th frame is held out of the fit to normalise on (default 10; a resumed fit: its own).",
)
@click.option("--resume", is_flag=True, help="Continue the store; frames already counted are skipped.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@with_ray
@with_common
@friendly_errors
def fit(sources: tuple[str, ...], model_path: str, **kw: Any) -> None:
    """Fit a model on normal frames of SOURCES (videos, frame folders, clip folders, image globs).

    Example: streamad fit data/ucsd_ped2/training/frames -m ped2.zarr
    """
    setup(kw["threads"], kw["verbose"])
    from streamad.config import ModelConfig
    from streamad.engine.fitting import FitOptions
    from streamad.pipelines.fit import fit as run_fit

    given = {"method": kw["method"], "backbone": kw["backbone"], "input_hw": parse_hw(kw["input_size"]), "k": kw["k"], "seed": kw["seed"]}
    given.update(eps=kw["eps"], weights=kw["weights"], motion=kw["motion"], backbone_b=kw["backbone_b"], weights_b=kw["weights_b"])
    config = None
    if not kw["resume"] or any(v is not None for v in given.values()):
        defaults = ModelConfig()
        config = ModelConfig(**{name: (value if value is not None else getattr(defaults, name)) for name, value in given.items()})
    names = ("every", "start", "stop", "batch_size", "checkpoint_every", "calibration_frames", "holdout_every", "device", "workers", "epochs", "cache_frames")
    progress = ClickProgress(not kw["quiet"])
    on = cluster_options(kw)
    fit_options = FitOptions(**{n: kw[n] for n in names})
    if on is not None:
        from streamad.pipelines.distributed import fit_on_cluster

        run_fit = functools.partial(fit_on_cluster, on=on)
    summary = run_fit(list(sources), model_path, config, options=fit_options, resume=kw["resume"], overwrite=kw["overwrite"], progress=progress)
    progress.finish()
    report_drops(summary.drop_report)
    if summary.interrupted:
        click.echo(f"interrupted: {summary.frames_seen} frames are in {model_path}; continue with `streamad fit ... -m {model_path} --resume`")
        return
    trained = f"; trained {summary.epochs} epochs (loss {summary.loss:.4g})" if summary.loss is not None else ""
    click.echo(f"fitted {model_path}: {summary.frames_added} new frames, {summary.frames_seen} in all{trained}; normalised on {summary.calibrated_on} frames")
    rate = summary.frames_read / summary.seconds if summary.seconds else 0.0
    click.echo(f"  read {summary.frames_read} frames (fitted and held out) in {summary.seconds:.1f} s: {rate:.1f} frames/s")


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--model", "-m", "model_path", default="model.zarr", show_default=True, help="Fitted model store.")
@click.option("--out", "-o", "out_dir", default="scores", show_default=True, help="Folder for scores.csv and scores.zarr.")
@click.option("--overlay", type=click.Path(dir_okay=False), default=None, help="Write a heatmap overlay video (one per source when several).")
@click.option(
    "--overlay-layers",
    default="combined",
    show_default=True,
    help="Overlay panels side by side: combined and the model's cues (appearance, motion, flow; gcad: local, global), comma-separated.",
)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a score timeline PNG.")
@with_frame_score
@click.option("--no-maps", is_flag=True, help="Do not store anomaly maps.")
@click.option("--threshold", type=float, default=None, help="Decide frames above it anomalous (default: the model's stored threshold, if any).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="State dict file for torchvision backbones.")
@click.option("--weights-b", type=click.Path(dir_okay=False), default=None, help="State dict file of a torchvision second backbone (pfm/pefm).")
@with_ray
@with_common
@friendly_errors
def score(sources: tuple[str, ...], model_path: str, out_dir: str, **kw: Any) -> None:
    """Score every frame of SOURCES: per-frame scores (CSV, zarr), anomaly maps, overlays.

    Example: streamad score clip.mp4 -m model.zarr -o out --overlay out/overlay.mp4 --plot out/timeline.png
    """
    setup(kw["threads"], kw["verbose"])
    from streamad.pipelines.score import score as run_score

    options = score_options(kw, write_maps=not kw["no_maps"], threshold=kw["threshold"])
    progress = ClickProgress(not kw["quiet"])
    layers = tuple(name.strip() for name in kw["overlay_layers"].split(",") if name.strip())
    outputs = {"overlay": kw["overlay"], "overlay_layers": layers, "plot": kw["plot"]}
    on = cluster_options(kw)
    if on is not None:
        from streamad.pipelines.cluster_score import score_on_cluster

        run_score = functools.partial(score_on_cluster, on=on)
    summary = run_score(list(sources), model_path, out_dir, options=options, **outputs, weights=kw["weights"], weights_b=kw["weights_b"], progress=progress)
    progress.finish()
    report_drops(summary.drop_report)
    frames, dropped = sum(summary.frames.values()), sum(sum(r.values()) for r in summary.dropped.values())
    if frames == 0 and not summary.interrupted:
        raise click.ClickException(f"expected frames to score, got none ({dropped} dropped); hint: check the sources and --start/--stop")
    click.echo(f"scored {frames} frames from {len(summary.frames)} source(s), {dropped} dropped" + (" (interrupted)" if summary.interrupted else ""))
    if summary.decisions:
        click.echo(f"  {sum(summary.anomalous.values())} frame(s) above the threshold {summary.threshold:.4g} (CSV column decision, zarr decision/mask)")
    click.echo(f"  scores:  {summary.csv}\n  maps:    {summary.store}")
    for path in summary.overlays:
        click.echo(f"  overlay: {path}")
    if summary.plot:
        click.echo(f"  plot:    {summary.plot}")


@main.command()
@click.option("--model", "-m", "model_path", default="model.zarr", show_default=True, help="Model store to calibrate.")
@click.option("--quantile", type=click.FloatRange(0, 1, min_open=True), default=None, help="Threshold = this quantile of normal frame scores (default 0.99).")
@click.option("--on", "normal", multiple=True, help="Normal SOURCE to take the quantile on (repeatable; default: the frames fit held out).")
@click.option("--f1", "f1_testset", default=None, help="Labelled TESTSET (as for eval): the F1-optimal threshold on it.")
@click.option("--predictions", default=None, help="With --f1: read that test set's scores from this score store instead of scoring it.")
@click.option("--fixed", type=float, default=None, help="Store this threshold as it is.")
@with_frame_score
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
@friendly_errors
def calibrate(model_path: str, **kw: Any) -> None:
    """Store a decision threshold in the model; `score` then writes decisions and masks.

    Examples: streamad calibrate -m model.zarr (99th percentile of held-out normal frames);
    streamad calibrate -m model.zarr --f1 data/ucsd_ped2; streamad calibrate -m model.zarr --fixed 2.5
    """
    setup(None, False)
    from streamad.evaluation.ground_truth import load_ground_truth
    from streamad.pipelines.calibrate import calibrate as run_calibrate

    labelled = load_ground_truth(kw["f1_testset"]) if kw["f1_testset"] else None
    threshold = run_calibrate(
        model_path,
        quantile=kw["quantile"],
        normal=kw["normal"],
        labelled=labelled,
        predictions=kw["predictions"],
        fixed=kw["fixed"],
        options=score_options(kw),
        progress=ClickProgress(not kw["quiet"]),
    )
    click.echo(f"threshold {threshold.value:.6g} ({threshold.method}, {threshold.detail}) stored in {model_path}")


@main.command()
@click.argument("urls", nargs=-1, required=True)
@click.option("--model", "-m", "models", multiple=True, required=True, help="Model store, for every camera, or NAME=PATH per camera (repeatable).")
@click.option("--out", "-o", "out_dir", default="watch", show_default=True, help="Folder for scores.csv, events.jsonl and snapshots.")
@click.option("--stats-every", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True, help="Seconds between stats lines.")
@click.option("--stats-json", default=None, help="Also append the stats as JSON lines to this file.")
@click.option("--threshold", type=float, default=None, help="Alert threshold (default: the model's stored or calibrated one).")
@click.option("--min-frames", type=click.IntRange(min=1), default=3, show_default=True, help="Frames above (below) the threshold that open (close) an alert.")
@click.option("--learn-for", default=None, help="Learn a camera without a model for this long first (90s, 5m, 2h).")
@click.option("--learn-motion", type=click.Choice(["off", "feat", "flow", "both"]), default="off", show_default=True, help="Motion cues to learn.")
@click.option("--adapt", is_flag=True, help="Keep updating the statistics with frames below the threshold.")
@click.option("--refresh-every", type=click.IntRange(min=1), default=500, show_default=True, help="With --adapt: refinalise the model every N frames.")
@click.option("--checkpoint-every", default="5m", show_default=True, help="With --adapt: save the store this often.")
@click.option(
    "--stall-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True, help="Seconds without a frame before reconnecting."
)
@click.option("--open-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True, help="Seconds to open a stream.")
@click.option("--max-retries", type=click.IntRange(min=0), default=None, help="Give a camera up after this many failed reconnects (default: never).")
@click.option("--realtime", is_flag=True, help="Play files at their native frame rate (as if live; drops when behind).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True, help="Frames (of all cameras) per backbone pass.")
@click.option("--max-wait", type=click.FloatRange(min=0), default=0.05, show_default=True, help="Seconds a batch waits to fill.")
@click.option("--queue-size", type=click.IntRange(min=1), default=4, show_default=True, help="Frames buffered per camera before the oldest is dropped.")
@click.option("--duration", default=None, help="Stop after this long (default: until Ctrl-C or every stream ended).")
@with_frame_score
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--verbose", "-v", is_flag=True)
@friendly_errors
def watch(urls: tuple[str, ...], models: tuple[str, ...], out_dir: str, **kw: Any) -> None:
    """Score live cameras (rtsp://, http/hls, /dev/videoN, or files with --realtime), alert on anomalies.

    Examples: streamad watch rtsp://user:pass@10.0.0.5/stream1 -m door.zarr;
    streamad watch door=rtsp://a/s gate=rtsp://b/s -m door=door.zarr -m gate=gate.zarr --stats-json stats.jsonl;
    streamad watch rtsp://a/s -m new.zarr --learn-for 10m --adapt
    """
    setup(kw["threads"], kw["verbose"])
    from streamad.config import ModelConfig
    from streamad.io.cameras import cameras_from, parse_duration
    from streamad.io.live import LiveOptions
    from streamad.pipelines.watch import WatchOptions
    from streamad.pipelines.watch import watch as run_watch

    live = LiveOptions(open_timeout_s=kw["open_timeout"], stall_timeout_s=kw["stall_timeout"], max_retries=kw["max_retries"], realtime=kw["realtime"])
    options = WatchOptions(
        max_batch=kw["max_batch"],
        max_wait_s=kw["max_wait"],
        queue_size=kw["queue_size"],
        stats_every_s=kw["stats_every"],
        threshold=kw["threshold"],
        min_frames=kw["min_frames"],
        learn_for_s=parse_duration(kw["learn_for"]) if kw["learn_for"] else None,
        learn_config=ModelConfig(motion=kw["learn_motion"]),
        adapt=kw["adapt"],
        refresh_every=kw["refresh_every"],
        checkpoint_every_s=parse_duration(kw["checkpoint_every"]),
        frame_score=frame_score_config(kw),
        live=live,
        device=kw["device"],
        duration_s=parse_duration(kw["duration"]) if kw["duration"] else None,
    )
    summary = run_watch(cameras_from(urls, models), out_dir, options=options, stats_json=kw["stats_json"], print_stats=lambda line: click.echo(line, err=True))
    click.echo("summary" + (" (interrupted)" if summary.interrupted else "") + ":")
    for line in summary.lines():
        click.echo("  " + line)
    click.echo(f"  {len(summary.events)} event(s) in {summary.out_dir}/events.jsonl; scores in {summary.out_dir}/scores.csv")
    if summary.gave_up and len(summary.gave_up) == len(summary.streams):
        raise click.ClickException(f"expected a camera to stream, got all {len(summary.gave_up)} giving up; hint: check the URLs, credentials and network")


@main.command(name="eval")
@click.argument("testset", required=False)
@click.option("--ground-truth", "ground_truth", default=None, help="The labelled test set (same as the TESTSET argument).")
@click.option("--model", "-m", "model_path", default=None, help="Fitted model store; with --categories a template such as 'models/{category}.zarr'.")
@click.option("--predictions", default=None, help="Evaluate this score store (streamad's format) instead of running a model.")
@click.option("--out", "-o", "out_dir", default="eval", show_default=True, help="Folder for the scores written while evaluating a model.")
@click.option("--report", "report_dir", default=None, help="Write metrics.json, metrics.md, curves, a histogram and the worst cases here.")
@click.option("--categories", multiple=True, help="Evaluate these categories (subfolders of TESTSET), each with its own model (repeatable).")
@click.option("--masks", default=None, help="Generic layout: a folder of masks for the images in TESTSET.")
@click.option("--labels", default=None, help="Generic layout: a JSON file {image name: 0 or 1} (image level only).")
@click.option(
    "--max-fpr",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Integration limit of AUPRO (default 0.3) or, for MVTec LOCO, of sPRO (default 0.05).",
)
@click.option(
    "--folds", type=click.IntRange(min=2), default=None, help="KolektorSDD fold protocol: fit on the defect-free parts of the other folds, test each fold."
)
@click.option("--method", default=None, help="With --folds: the scorer to fit (default padim).")
@click.option("--backbone", type=click.Choice(BACKBONES), default=None, help="With --folds: the backbone (default lite0).")
@click.option("--input-size", default=None, help="With --folds: HEIGHTxWIDTH of the fitted models.")
@click.option("-k", "k", type=click.IntRange(min=1), default=None, help="With --folds: projected dimension (default 100).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="With --folds: training epochs of trained scorers.")
@with_frame_score
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="State dict file for torchvision backbones.")
@click.option("--weights-b", type=click.Path(dir_okay=False), default=None, help="State dict file of a torchvision second backbone (pfm/pefm).")
@with_common
@friendly_errors
def evaluate(testset: str | None, ground_truth: str | None, **kw: Any) -> None:
    """Evaluate a model (or saved predictions) on a labelled TESTSET: MVTec AD category, UCSD or
    ShanghaiTech (mSTC) layout, or images with --masks / --labels.

    Examples: streamad eval data/ucsd_ped2 -m ped2.zarr --report report/;
    streamad eval mvtec --categories bottle --categories cable -m 'models/{category}.zarr';
    streamad eval --predictions other-method/scores.zarr --ground-truth data/hazelnut
    """
    setup(kw["threads"], kw["verbose"])
    from streamad.pipelines.evaluate import evaluate as run_evaluate

    if (testset is None) == (ground_truth is None):
        raise click.UsageError("expected the labelled test set once: as TESTSET or as --ground-truth DIR")
    progress = ClickProgress(not kw["quiet"])
    if kw["folds"] is not None:
        run = _evaluate_folds(testset or ground_truth or "", kw, progress)
    else:
        fold_only = [f"--{n.replace('_', '-')}" for n in ("method", "backbone", "input_size", "epochs") if kw[n] is not None] + (["-k"] if kw["k"] else [])
        if fold_only:
            raise click.UsageError(f"expected {fold_only[0]} only with --folds (a model store already fixes it)")
        names = ("out_dir", "report_dir", "categories", "masks", "labels", "max_fpr", "weights", "weights_b")
        run = run_evaluate(
            testset or ground_truth or "",
            model=kw["model_path"],
            predictions=kw["predictions"],
            options=score_options(kw),
            progress=progress,
            **{n: kw[n] for n in names},
        )
    progress.finish()
    for name, table in run.tables.items():
        click.echo((f"\n## {name}\n\n" if name else "") + table)
    if run.summary:
        click.echo("\n" + run.summary)
    if run.reports:
        click.echo("report: " + ", ".join(run.reports))


def _evaluate_folds(testset: str, kw: dict[str, Any], progress: ClickProgress) -> Any:
    """``eval --folds K``: fit and evaluate each fold (the models go under --out)."""
    from streamad.config import ModelConfig
    from streamad.engine.fitting import FitOptions
    from streamad.pipelines.folds import evaluate_folds

    if kw["model_path"] or kw["predictions"] or kw["categories"] or kw["masks"] or kw["labels"]:
        raise click.UsageError("expected --folds alone: it fits its own models (leave out --model, --predictions, --categories, --masks, --labels)")
    given = {"method": kw["method"], "backbone": kw["backbone"], "input_hw": parse_hw(kw["input_size"]), "k": kw["k"]}
    config = ModelConfig(**{name: value for name, value in given.items() if value is not None})
    fit_options = FitOptions(batch_size=kw["batch_size"], device=kw["device"], workers=kw["workers"], epochs=kw["epochs"])
    names = ("out_dir", "report_dir", "max_fpr", "weights", "weights_b")
    return evaluate_folds(
        testset, kw["folds"], config=config, fit_options=fit_options, options=score_options(kw), progress=progress, **{n: kw[n] for n in names}
    )


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True, help="Store to write.")
@click.option("--calibrate-on", multiple=True, help="Normal SOURCE to normalise the merged model on (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output store.")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
@friendly_errors
def merge(inputs: tuple[str, ...], output: str, calibrate_on: tuple[str, ...], overwrite: bool, device: str, quiet: bool) -> None:
    """Merge partial fits of the same model exactly: streamad merge a.zarr b.zarr -o c.zarr"""
    setup(None, False)
    from streamad.pipelines.merge import merge as run_merge

    summary = run_merge(list(inputs), output, overwrite=overwrite, calibrate_on=calibrate_on, device=device, progress=ClickProgress(not quiet))
    note = f"normalised on {summary.calibrated_on} frames" if summary.calibrated_on else "not normalised: score it with --raw, or pass --calibrate-on SOURCE"
    click.echo(f"merged {summary.inputs} stores into {summary.output}: {summary.frames_seen} frames; {note}")


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
@friendly_errors
def info(store: str, as_json: bool) -> None:
    """Print a model or score store's metadata."""
    from streamad.pipelines.info import describe_store

    for line in describe_store(store, as_json=as_json):
        click.echo(line)


@main.command()
@click.option("--out", "-o", "out_dir", default="demo-output", show_default=True, help="Folder for every output.")
@click.option("--video", default=None, help="Use this clip instead of a generated one.")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
@friendly_errors
def demo(out_dir: str, video: str | None, device: str, quiet: bool) -> None:
    """Fit on the first 60% of a clip, score the rest, write scores, maps, overlay and plot."""
    setup(None, False)
    from streamad.pipelines.demo import demo as run_demo

    summary = run_demo(out_dir, video=video, device=device, progress=ClickProgress(not quiet))
    click.echo(f"clip:     {summary.clip} (fit on frames 0-{summary.split - 1}, scored from {summary.split})")
    if summary.anomaly_frames:
        click.echo(f"anomaly:  a red cart crosses in frames {summary.anomaly_frames[0]}-{summary.anomaly_frames[1] - 1}")
    click.echo(f"model:    {summary.fit.store}\nscores:   {summary.score.csv}\nmaps:     {summary.score.store}")
    for path in summary.score.overlays:
        click.echo(f"overlay:  {path}")
    click.echo(f"timeline: {summary.score.plot}")


if __name__ == "__main__":
    main()
