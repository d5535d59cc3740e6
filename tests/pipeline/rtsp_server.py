"""A real RTSP server for the tests: GStreamer's gst-rtsp-server serving one H.264 MP4 file at /cam.

Run with the system Python that has PyGObject (Debian: python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-good)::

    /usr/bin/python3 rtsp_server.py VIDEO.mp4 PORT     # PORT 0: any free port

Prints the bound port on stdout once it is listening; streams in real time, all clients share one
session (like a camera); runs until killed. ``--check`` only verifies that everything it needs is there.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
missing = [name for name in ("filesrc", "qtdemux", "rtph264pay") if Gst.ElementFactory.find(name) is None]
if missing:
    sys.exit(f"missing GStreamer elements: {', '.join(missing)}")
if sys.argv[1:] == ["--check"]:
    sys.exit(0)

path, port = sys.argv[1], sys.argv[2]
server = GstRtspServer.RTSPServer.new()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory.new()
factory.set_launch(f'( filesrc location="{path}" ! qtdemux ! rtph264pay name=pay0 pt=96 config-interval=1 )')
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
print(server.get_bound_port(), flush=True)
GLib.MainLoop().run()
