"""The command line's machinery: progress bars, one-line errors, the options several commands
share and their translation into configs. With ``cli.py`` (the commands), the only importer of
click; like it, it imports no heavy library until a command runs."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from streamad.errors import Interrupted, one_line


class Finite(click.FloatRange):
    """A float option that must be a finite number (NaN and infinity are refused: a NaN
    threshold would silently turn every decision off), optionally within a range."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number is not None and not math.isfinite(number):
            self.fail(f"expected a finite number, got {value!r}", param, ctx)
        return number

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


INTERRUPTED = 130  # the exit status of a job stopped by Ctrl-C (128 + SIGINT), as shells report it


def friendly_errors(func: F) -> F:
    """Turn any error into a one-line message and exit status 1, without a traceback (the
    top-level ``--debug`` shows it); Ctrl-C into exit status 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (KeyboardInterrupt, Interrupted) as exc:  # Ctrl-C where no checkpoint is due: the shell's convention
            click.echo(f"Error: {str(exc) or 'interrupted (Ctrl-C)'}", err=True)
            raise click.exceptions.Exit(INTERRUPTED) from None
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


def say(lines: Iterable[str]) -> None:
    for line in lines:
        click.echo(line)


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
        "--ray-gpus-per-task", type=Finite(min=0), default=0.0, show_default=True, help="GPUs each Ray task or actor asks for (0: CPU workers)."
    ),
    click.option("--ray-shard-frames", type=click.IntRange(min=1), default=2000, show_default=True, help="fit --ray: at most this many frames a shard."),
)


with_runtime = options(
    click.option(
        "--runtime",
        type=click.Choice(["auto", "torch", "onnxruntime", "openvino"]),
        default="auto",
        show_default=True,
        help="What runs the backbone and scorer: auto picks onnxruntime where it applies and is installed (fastest measured on a CPU), else torch; "
        "$STREAMAD_RUNTIME names auto's pick.",
    ),
)


with_weights = options(
    click.option("--weights", type=click.Path(dir_okay=False), default=None, help="State dict file for torchvision backbones."),
    click.option("--weights-b", type=click.Path(dir_okay=False), default=None, help="State dict file of a torchvision second backbone (pfm/pefm)."),
)


with_events = options(
    click.option("--events-webhook", multiple=True, help="POST each event's open, update and close as JSON to this http(s) URL (repeatable)."),
    click.option("--events-mqtt", multiple=True, help="Publish events and state to mqtt://[user:pass@]host[:port]/topic-prefix (repeatable)."),
    click.option("--events-inline-snapshot", is_flag=True, help="A closed event's message carries its snapshot PNG (base64)."),
)

with_live_outputs = options(
    click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None, help="Serve Prometheus metrics on this port (/metrics)."),
    click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics are served on (0.0.0.0: every interface)."),
    click.option("--http-port", type=click.IntRange(min=0, max=65535), default=None, help="Serve the live web view on this port."),
    click.option("--http-host", default="127.0.0.1", show_default=True, help="Address the web view is served on (0.0.0.0: every interface)."),
    click.option("--http-token", default=None, help="Require this token for the web view (open it at /?token=...)."),
)


def watch_settings(kw: dict[str, Any]) -> dict[str, Any]:
    """watch's options, as the keyword arguments of its WatchOptions."""
    from streamad.config import ModelConfig
    from streamad.io.cameras import parse_duration
    from streamad.io.live import LiveOptions

    live = LiveOptions(open_timeout_s=kw["open_timeout"], stall_timeout_s=kw["stall_timeout"], max_retries=kw["max_retries"], realtime=kw["realtime"])
    return {
        "max_batch": kw["max_batch"],
        "max_wait_s": kw["max_wait"],
        "queue_size": kw["queue_size"],
        "stats_every_s": kw["stats_every"],
        "threshold": kw["threshold"],
        "min_frames": kw["min_frames"],
        "learn_for_s": parse_duration(kw["learn_for"]) if kw["learn_for"] else None,
        "learn_config": ModelConfig(method=kw["learn_method"], motion=kw["learn_motion"]),
        "adapt": kw["adapt"],
        "refresh_every": kw["refresh_every"],
        "checkpoint_every_s": parse_duration(kw["checkpoint_every"]),
        "frame_score": frame_score_config(kw),
        "live": live,
        "device": kw["device"],
        "runtime": kw["runtime"],
        "duration_s": parse_duration(kw["duration"]) if kw["duration"] else None,
    }


def site_outputs(kw: dict[str, Any], *, metrics: Any = None, view: Any = None) -> Any:
    """watch's outputs beyond its files: event messages, the metrics and the web view served."""
    from streamad.publish.site import SiteOutputs

    return SiteOutputs(tuple(kw["events_webhook"]), tuple(kw["events_mqtt"]), kw["events_inline_snapshot"], metrics, view)


@contextlib.contextmanager
def serve_metrics(kw: dict[str, Any]) -> Iterator[Any]:
    """``--metrics-port``'s server for the command's life (None without it)."""
    if kw["metrics_port"] is None:
        yield None
        return
    from streamad.publish.prometheus import Metrics

    with Metrics(kw["metrics_port"], host=kw["metrics_host"]) as metrics:
        yield metrics


SITE_KEYS: dict[str, dict[str, str]] = {
    "cameras": {},  # NAME = {url = "...", model = "..."}
    "events": {"webhooks": "events_webhook", "mqtt": "events_mqtt", "inline_snapshot": "events_inline_snapshot"},
    "metrics": {"port": "metrics_port", "host": "metrics_host"},
    "http": {"port": "http_port", "host": "http_host", "token": "http_token"},
}


def site_config(kw: dict[str, Any], urls: tuple[str, ...], models: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``--config site.toml``: its cameras after the command line's, and its outputs where no
    flag gave them (``kw`` is updated); a key it does not know is a one-line error."""
    from pathlib import Path

    from streamad.errors import ConfigError

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    urls_out, models_out = list(urls), list(models)
    if kw["site"] is not None:
        try:
            site = tomllib.loads(Path(kw["site"]).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"expected --config to be a readable TOML file, got {kw['site']}: {exc}") from None
        unknown = [key for key in site if key not in SITE_KEYS]
        unknown += [f"{table}.{key}" for table, keys in SITE_KEYS.items() if table != "cameras" for key in site.get(table, {}) if key not in keys]
        cameras = site.get("cameras", {})
        if unknown or not all(isinstance(c, dict) and set(c) == {"url", "model"} for c in cameras.values()):
            raise ConfigError(f"expected --config keys among {list(SITE_KEYS)} and cameras as NAME = {{url, model}}, got {unknown or cameras}")
        urls_out += [f"{name}={c['url']}" for name, c in cameras.items()]
        models_out += [f"{name}={c['model']}" for name, c in cameras.items()]
        given = click.get_current_context().get_parameter_source
        for table, keys in SITE_KEYS.items():
            for key, value in (site.get(table, {}).items() if table != "cameras" else ()):
                option = keys[key]
                if given(option) in (None, click.core.ParameterSource.DEFAULT):  # not given as a flag
                    kw[option] = tuple(value) if isinstance(value, list) else value
    if not urls_out or not models_out:
        raise ConfigError("expected cameras and their models, as URL arguments with -m, or in --config's [cameras]")
    return urls_out, models_out


@contextlib.contextmanager
def serve_view(kw: dict[str, Any]) -> Iterator[Any]:
    """``--http-port``'s web view for the command's life (None without it)."""
    if kw["http_port"] is None:
        yield None
        return
    from streamad.io.urls import redact
    from streamad.publish.web import LiveView

    with LiveView(kw["http_port"], host=kw["http_host"], token=kw["http_token"]) as view:
        click.echo(f"live view: {redact(view.url + ('?token=' + kw['http_token'] if kw['http_token'] else ''))}", err=True)
        yield view


def cluster_options(kw: dict[str, Any]) -> Any:
    """The --ray options, or None when the job runs here."""
    if kw["ray_address"] is None:
        return None
    from streamad.config import ClusterOptions

    address = None if kw["ray_address"] == "local" else kw["ray_address"]
    return ClusterOptions(address=address, gpus_per_task=kw["ray_gpus_per_task"], shard_frames=kw["ray_shard_frames"])


with_frame_score = options(
    click.option("--raw", is_flag=True, help="Frame scores from distances not normalised per position."),
    click.option(
        "--topk", type=Finite(0, 1), default=0.01, show_default=True, help="Frame score = mean of the top fraction of map pixels (0 = max)."
    ),
    click.option("--window", type=click.IntRange(min=1), default=1, show_default=True, help="Causal moving average over this many frames per source (camera)."),
    click.option(
        "--smooth",
        type=Finite(min=0, max=3600),
        default=None,
        help="Causal exponential filter of frame scores, time constant in seconds (0: off; default: the model's, 0.2 for video).",
    ),
    click.option("--branch", default="both", show_default=True, help="Score one cue alone (gcad: local, global; video: appearance, motion, flow, speed)."),
)


def frame_score_config(kw: dict[str, Any]) -> FrameScoreConfig:
    """The frame-score options as a config (torch is imported only when a command runs)."""
    from streamad.config import FrameScoreConfig

    return FrameScoreConfig(normalised=not kw["raw"], topk_fraction=kw["topk"], window=kw["window"], branch=kw["branch"], smooth_s=kw["smooth"])


def score_options(kw: dict[str, Any], **extra: Any) -> Any:
    """The common and frame-score options of score, eval and calibrate as ScoreOptions."""
    from streamad.engine.scoring import ScoreOptions

    picked = {k: kw[k] for k in ("every", "start", "stop", "batch_size", "device", "workers", "runtime") if k in kw}
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
