"""The ``streamad`` command line: click options mapped one-to-one onto the pipelines' jobs (the
machinery they share is :mod:`streamad.cli_support`'s).

Each command imports its job only when it runs, so ``streamad --help`` loads neither torch nor
zarr nor PyAV.
"""

from __future__ import annotations

import functools
from typing import Any

import click

from streamad.cli_support import (
    BACKBONES,
    INTERRUPTED,
    ClickProgress,
    Finite,
    OneLineErrors,
    cluster_options,
    friendly_errors,
    parse_hw,
    report_drops,
    say,
    score_options,
    serve_metrics,
    serve_view,
    setup,
    site_config,
    site_outputs,
    watch_settings,
    with_common,
    with_events,
    with_frame_score,
    with_live_outputs,
    with_ray,
    with_runtime,
    with_weights,
)


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
@click.option("--method", default=None, help="Scorer: padim, soe, knn, pfm, pefm, ae-l2, ae-ssim, gcad, a registered one (default: knn for video, else padim)")
@click.option("--backbone", type=click.Choice(BACKBONES), default=None, help="Backbone (default lite0).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="State dict file for torchvision backbones.")
@click.option("--input-size", default=None, help="HEIGHTxWIDTH (multiples of 16); default keeps the aspect ratio, short side ~256.")
@click.option("-k", "k", type=click.IntRange(min=1), default=None, help="Projected dimension (default 100).")
@click.option("--seed", type=int, default=None, help="Projection seed (default 0).")
@click.option("--eps", type=Finite(), default=None, help="Covariance ridge (default 0.01).")
@click.option("--bank-size", type=click.IntRange(min=1), default=None, help="knn: patches each memory bank keeps (default 2500 for video, 10000 for images).")
@click.option("--patch-stride", type=click.IntRange(min=1), default=None, help="knn: the patch grid's stride in pixels (default 8 for video, 4 for images).")
@click.option("--motion", default=None, help="Video motion cues: off, or feat, flow, speed comma-separated (padim: feat, flow; knn: feat, speed, its default).")
@click.option("--backbone-b", type=click.Choice(BACKBONES), default=None, help="Second backbone of pfm/pefm (default lite2).")
@click.option("--weights-b", type=click.Path(dir_okay=False), default=None, help="State dict file for a torchvision --backbone-b.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs of trained scorers (default: the papers' schedule, scaled).")
@click.option("--cache-frames", type=click.IntRange(min=1), default=None, help="Trained scorers: frames kept (reservoir-sampled) to train on (default 1000).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=2000, show_default=True, help="Frames between checkpoints.")
@click.option("--calibration-frames", type=click.IntRange(min=1), default=500, show_default=True, help="At most this many held-out frames normalise.")
@click.option("--holdout-every", type=click.IntRange(min=2), default=None, help="Every N-th frame is held out to normalise on (default 10; a resume: its own).")
@click.option("--float64-stats", is_flag=True, help="Update the statistics in float64: reproducible bit for bit, slower (default: float32 GEMMs).")
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
    from streamad.config import AUTO, ModelConfig
    from streamad.engine.fitting import FitOptions
    from streamad.pipelines.fit import fit as run_fit

    given = {"method": kw["method"], "backbone": kw["backbone"], "input_hw": parse_hw(kw["input_size"]), "k": kw["k"], "seed": kw["seed"]}
    given.update(eps=kw["eps"], weights=kw["weights"], motion=kw["motion"], backbone_b=kw["backbone_b"], weights_b=kw["weights_b"], bank_size=kw["bank_size"])
    given["patch_stride"] = kw["patch_stride"]
    config = None
    if not kw["resume"] or any(v is not None for v in given.values()):
        defaults = ModelConfig(method=AUTO, motion=AUTO)  # settled by the sources when the fit starts
        config = ModelConfig(**{name: (value if value is not None else getattr(defaults, name)) for name, value in given.items()})
    names = ["every", "start", "stop", "batch_size", "checkpoint_every", "calibration_frames", "holdout_every", "device", "workers", "epochs"]
    names += ["cache_frames", "float64_stats"]
    progress = ClickProgress(not kw["quiet"])
    on = cluster_options(kw)
    fit_options = FitOptions(**{n: kw[n] for n in names})
    if on is not None:
        from streamad.pipelines.distributed import fit_on_cluster

        run_fit = functools.partial(fit_on_cluster, on=on)
    summary = run_fit(list(sources), model_path, config, options=fit_options, resume=kw["resume"], overwrite=kw["overwrite"], progress=progress)
    progress.finish()
    report_drops(summary.drop_report)
    say(summary.lines())
    if summary.interrupted:  # checkpointed, but not a model to score yet: `fit && score` must stop here
        raise click.exceptions.Exit(INTERRUPTED)


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
@with_runtime
@click.option("--threshold", type=Finite(), default=None, help="Decide frames above it anomalous (default: the model's stored threshold, if any).")
@with_events
@with_weights
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
    outputs = {"overlay": kw["overlay"], "overlay_layers": layers, "plot": kw["plot"], "events": site_outputs(kw)}
    on = cluster_options(kw)
    if on is not None:
        from streamad.pipelines.cluster_score import score_on_cluster

        run_score = functools.partial(score_on_cluster, on=on)
    summary = run_score(list(sources), model_path, out_dir, options=options, **outputs, weights=kw["weights"], weights_b=kw["weights_b"], progress=progress)
    progress.finish()
    report_drops(summary.drop_report)
    if not summary.frames and not summary.interrupted:
        dropped = sum(sum(r.values()) for r in summary.dropped.values())
        raise click.ClickException(f"expected frames to score, got none ({dropped} dropped); hint: check the sources and --start/--stop")
    say(summary.lines())
    if summary.interrupted:  # the frames scored so far are written; the rest are not
        raise click.exceptions.Exit(INTERRUPTED)


@main.command()
@click.option("--model", "-m", "model_path", default="model.zarr", show_default=True, help="Model store to calibrate.")
@click.option("--quantile", type=Finite(0, 1, min_open=True), default=None, help="Threshold = this quantile of normal frame scores (default 0.99).")
@click.option("--on", "normal", multiple=True, help="Normal SOURCE to take the quantile on (repeatable; default: the frames fit held out).")
@click.option("--f1", "f1_testset", default=None, help="Labelled TESTSET (as for eval): the F1-optimal threshold on it.")
@click.option("--predictions", default=None, help="With --f1: read that test set's scores from this score store instead of scoring it.")
@click.option("--fixed", type=Finite(), default=None, help="Store this threshold as it is.")
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
@click.argument("urls", nargs=-1)
@click.option("--model", "-m", "models", multiple=True, help="Model store, for every camera, or NAME=PATH per camera (repeatable).")
@click.option("--config", "site", type=click.Path(dir_okay=False), default=None, help="A site's TOML file: cameras and outputs (flags win).")
@click.option("--out", "-o", "out_dir", default="watch", show_default=True, help="Folder for scores.csv, events.jsonl and snapshots.")
@click.option("--stats-every", type=Finite(min=0, min_open=True), default=10.0, show_default=True, help="Seconds between stats lines.")
@click.option("--stats-json", default=None, help="Also append the stats as JSON lines to this file.")
@click.option("--threshold", type=Finite(), default=None, help="Alert threshold (default: the model's stored or calibrated one).")
@click.option("--min-frames", type=click.IntRange(min=1), default=3, show_default=True, help="Frames above (below) the threshold that open (close) an alert.")
@click.option("--learn-for", default=None, help="Learn a camera without a model for this long first (90s, 5m, 2h).")
@click.option("--learn-method", default="auto", show_default=True, help="Method to learn (as fit's --method; auto: knn, fit's video default).")
@click.option("--learn-motion", default="auto", show_default=True, help="Motion cues to learn (as fit's --motion; auto: knn's feat,speed).")
@click.option("--adapt", is_flag=True, help="Keep updating the model with frames below the threshold.")
@click.option("--refresh-every", type=click.IntRange(min=1), default=500, show_default=True, help="With --adapt: refinalise the model every N frames.")
@click.option("--checkpoint-every", default="5m", show_default=True, help="With --adapt: save the store this often.")
@click.option(
    "--stall-timeout", type=Finite(min=0, min_open=True), default=5.0, show_default=True, help="Seconds without a frame before reconnecting."
)
@click.option("--open-timeout", type=Finite(min=0, min_open=True), default=10.0, show_default=True, help="Seconds to open a stream.")
@click.option("--max-retries", type=click.IntRange(min=0), default=None, help="Give a camera up after this many failed reconnects (default: never).")
@click.option("--realtime", is_flag=True, help="Play files at their native frame rate (as if live; drops when behind).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True, help="Frames (of all cameras) per backbone pass.")
@click.option("--max-wait", type=Finite(min=0), default=0.05, show_default=True, help="Seconds a batch waits to fill.")
@click.option("--queue-size", type=click.IntRange(min=1), default=4, show_default=True, help="Frames buffered per camera before the oldest is dropped.")
@click.option("--duration", default=None, help="Stop after this long (default: until Ctrl-C or every stream ended).")
@with_frame_score
@with_runtime
@with_events
@with_live_outputs
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
    from streamad.io.cameras import cameras_from
    from streamad.pipelines.watch import WatchOptions
    from streamad.pipelines.watch import watch as run_watch

    cameras, options = cameras_from(*site_config(kw, urls, models)), WatchOptions(**watch_settings(kw))
    with serve_metrics(kw) as metrics, serve_view(kw) as view:
        outputs = site_outputs(kw, metrics=metrics, view=view)
        shown = {"stats_json": kw["stats_json"], "print_stats": lambda text: click.echo(text, err=True)}
        summary = run_watch(cameras, out_dir, options=options, outputs=outputs, **shown)
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
@click.option("--max-fpr", type=Finite(0, 1, min_open=True), default=None, help="Integration limit of AUPRO (default 0.3) or of LOCO's sPRO (default 0.05).")
@click.option("--folds", type=click.IntRange(min=2), default=None, help="KolektorSDD folds: fit on the other folds' defect-free parts, test each fold.")
@click.option("--method", default=None, help="With --folds: the scorer to fit (default padim).")
@click.option("--backbone", type=click.Choice(BACKBONES), default=None, help="With --folds: the backbone (default lite0).")
@click.option("--input-size", default=None, help="With --folds: HEIGHTxWIDTH of the fitted models.")
@click.option("-k", "k", type=click.IntRange(min=1), default=None, help="With --folds: projected dimension (default 100).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="With --folds: training epochs of trained scorers.")
@with_frame_score
@with_runtime
@with_weights
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

    say(run_merge(list(inputs), output, overwrite=overwrite, calibrate_on=calibrate_on, device=device, progress=ClickProgress(not quiet)).lines())


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
@friendly_errors
def info(store: str, as_json: bool) -> None:
    """Print a model or score store's metadata."""
    from streamad.pipelines.info import describe_store

    say(describe_store(store, as_json=as_json))


@main.command()
@click.option("--model", "-m", "model_path", default="model.zarr", show_default=True, help="Fitted model store.")
@click.option("--out", "-o", "out", required=True, help="The file to write (model.onnx; openvino: model.xml and .bin).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino"]), default="onnx", show_default=True, help="What to write.")
@click.option("--raw", is_flag=True, help="Frame scores from distances not normalised per position.")
@with_weights
@friendly_errors
def export(model_path: str, out: str, fmt: str, raw: bool, weights: str | None, weights_b: str | None) -> None:
    """Export a fitted model's scoring graph: uint8 frames in, anomaly maps and frame scores out.

    Example: streamad export -m hazelnut.zarr -o hazelnut.onnx (then run it with onnxruntime)
    """
    setup(None, False)
    from streamad.pipelines.export import export as run_export

    say(run_export(model_path, out, fmt=fmt, raw=raw, weights=weights, weights_b=weights_b).lines())


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

    say(run_demo(out_dir, video=video, device=device, progress=ClickProgress(not quiet)).lines())


if __name__ == "__main__":
    main()
