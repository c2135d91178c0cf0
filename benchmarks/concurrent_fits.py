"""Two ``streamad fit --resume`` processes on one store, started together, round after round.

    python benchmarks/concurrent_fits.py [--rounds 10] [--source DIR_OR_VIDEO] [--work DIR]

The issue's reproduction: a store fitted on a few frames, then in every round two fits of
different sources resume it at once. Prints, per round, each process's exit status and
stderr, and checks what must hold: one finishes, the other exits 1 with one line naming the
lock's holder, the store loads, and its frames_seen is the previous count plus the frames
the finished run added. Default source: UCSD Ped2 training clips from ../shared/data.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "streamad"]
PED2 = ROOT.parent / "shared" / "data" / "ucsd_ped2" / "training" / "frames"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--source", type=Path, default=PED2, help="a folder of clip folders (one per round and process) or one video")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    from streamad.stores.fit_progress import read_progress
    from streamad.stores.model_store import load, open_store

    work = args.work or Path(tempfile.mkdtemp(prefix="concurrent-fits-"))
    clips = sorted(p for p in args.source.iterdir() if p.is_dir()) if args.source.is_dir() else [args.source]
    store = work / "S.zarr"
    common = ["--input-size", "128x192", "--checkpoint-every", "32", "-q", "-m", str(store)]
    subprocess.run([*CLI, "fit", str(clips[0]), "--stop", "38", *common], check=True)
    failures = 0
    for round_ in range(args.rounds):
        pair = []
        for side in "ab":  # a source name of its own per process and round, so each adds frames
            link = work / f"{side}{round_}{clips[0].suffix if clips[0].is_file() else ''}"
            link.symlink_to(clips[(2 * round_ + (side == "b")) % len(clips)].resolve())
            pair.append(link)
        before = read_progress(open_store(store)).frames_seen
        commands = [[*CLI, "fit", str(p), "--stop", "100", *common, "--resume"] for p in pair]
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
        results = [(p.wait(), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in results)
        won = [out for code, out, _ in results if code == 0]
        lost = [err.strip() for code, _, err in results if code == 1]
        added = int(won[0].split(": ")[1].split(" new frames")[0]) if len(won) == 1 else -1
        frames = load(open_store(store), where=str(store)).frames_seen
        ok = codes == [0, 1] and len(lost[0].splitlines()) == 1 and "pid " in lost[0] and frames == before + added
        failures += not ok
        print(f"round {round_ + 1}: exits {codes}, frames_seen {before} -> {frames} (+{added}), {'ok' if ok else 'FAILED'}; loser: {lost[0] if lost else '-'}")
    print(f"{args.rounds - failures} of {args.rounds} rounds held; work folder {work}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
