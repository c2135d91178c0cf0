"""A real RTSP server for the live tests: GStreamer's RTSP server (Debian packages, see
``.ci/setup-system``), serving an H.264 MP4 file at its native rate on 127.0.0.1.

Run with the system Python that has the GObject bindings::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --file clip.mp4   # rtsp://127.0.0.1:8554/live

Every client gets the file from its start; when the file ends, the stream ends (a live reader
then reconnects). Prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--path", default="/live")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( filesrc location={args.file} ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(False)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        sys.exit(f"could not listen on 127.0.0.1:{args.port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
