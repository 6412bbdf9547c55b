"""Graph: Netron on the model as loaded, in an IFrame, served on 127.0.0.1 only.

Netron's page (netron/browser.js, 9.x) holds the model back behind two notifications: a consent
notice, skipped when a ``consent`` cookie is present, and "Please update to the newest version",
shown when the page's ``<meta name="date">`` is more than 180 days old. The server here answers
the page with a ``consent`` cookie and today's date, so the graph opens at once. It serves the
current spec (written to a temporary .mlmodel), and serves it again after every edit.
"""
import datetime
import html
import logging
import re
import socket
import tempfile
import time
from pathlib import Path

import ipywidgets as W

from ._common import ErrorArea

HOST = "127.0.0.1"
logging.getLogger("netron.server").setLevel(logging.WARNING)       # not "Serving ..." on every edit
CONSENT_DAYS = 30


def free_port(host=HOST):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _unblocking_handler(base):
    """Netron's request handler, answering its page with the consent cookie and a current date."""
    class UnblockingHandler(base):
        def end_headers(self):
            if self.path.split("?")[0] in ("/", "/index.html"):
                now_ms = int(time.time() * 1000)
                self.send_header("Set-Cookie", f"consent={now_ms}; Path=/; Max-Age={CONSENT_DAYS * 86400}; "
                                               f"SameSite=Lax")
            super().end_headers()

        def _write(self, status_code, content_type, content):
            if content_type == "text/html" and content:
                today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                content = re.sub(rb'<meta name="date" content="[^"]*">',
                                 f'<meta name="date" content="{today}">'.encode(), content)
            super()._write(status_code, content_type, content)
    return UnblockingHandler


def serve_spec(spec, name, address, folder):
    """Serve ``spec`` (a Model_pb2.Model) with Netron at ``address``; return the URL."""
    import netron
    import netron.server as netron_server

    path = Path(folder) / (Path(name).stem + ".mlmodel")
    path.write_bytes(spec.SerializeToString())
    netron.start(str(path), address=address, browse=False)
    # Netron's server has no option for these; a subclass of its handler per server adds them, and
    # holds this server's content (Netron keeps it on its one handler class, shared by all servers).
    for thread in netron_server._threads(address):
        base = thread.server.RequestHandlerClass
        handler = _unblocking_handler(base)
        handler.content = base.content
        thread.server.RequestHandlerClass = handler
    return f"http://{address[0]}:{address[1]}/"


def stop_serving(address):
    import netron
    netron.stop(address)


class GraphView(W.VBox):
    """Netron in an IFrame, showing the session's model; served again after each change."""

    def __init__(self, session, height=640, **kwargs):
        self.session = session
        self.errors = ErrorArea()
        self.height = height
        self.address = None
        self.folder = tempfile.mkdtemp(prefix="workbench-netron-")
        self.frame = W.HTML()
        self.reload_button = W.Button(description="Serve again", icon="refresh")
        self.reload_button.on_click(self.errors.guard(lambda _: self.serve()))
        self.link = W.HTML()
        self.generation = 0
        self.url = None
        super().__init__([W.HBox([self.reload_button, self.link]), self.frame, self.errors], **kwargs)
        self.add_class("workbench-graph")
        session.on_change(self.errors.guard(lambda what: self.serve() if what == "model" else None))
        self.errors.guard(self.serve)()

    def serve(self):
        """Serve the current spec on a fresh port, point the IFrame at it, stop the previous server.

        (Netron restarting on the port it just closed can find it still taken.)
        """
        previous, self.address = self.url and self.address, (HOST, free_port())
        self.url = serve_spec(self.session.model.spec, self.session.model.name, self.address, self.folder)
        if previous:
            stop_serving(previous)
        self.generation += 1
        src = f"{self.url}?workbench={self.generation}"
        self.frame.value = (f'<iframe class="workbench-netron" src="{html.escape(src)}" '
                            f'style="width:100%;height:{int(self.height)}px;border:1px solid #ccc"></iframe>')
        self.link.value = f'<a href="{html.escape(self.url)}" target="_blank">open Netron in a new tab</a>'
        return self.url

    def close(self):
        if self.address:
            stop_serving(self.address)
        super().close()

    def __repr__(self):
        return f"<workbench GraphView: Netron at {self.address[0]}:{self.address[1]}>"
