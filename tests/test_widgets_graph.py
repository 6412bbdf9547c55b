"""Graph view: Netron serves the model as loaded, on 127.0.0.1 only, with nothing blocking its page.

The facts checked come from Netron's own page (netron/browser.js): a ``consent`` cookie skips the
consent notice; a ``<meta name="date">`` older than 180 days brings up "Please update".
"""
import datetime
import re
import shutil
import urllib.request

import pytest
from coremltools.proto import Model_pb2

import workbench as wb
from workbench import examples
from workbench.widgets import GraphView, Session


@pytest.fixture
def view(tmp_path):
    shutil.copytree(examples.BUNDLED_LAYERS_DIR, tmp_path / "layers")
    model = wb.load(examples.example_path(), layers=tmp_path / "layers")
    view = GraphView(Session(model))
    yield view
    view.close()


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers, response.read()


def test_serves_the_spec_on_loopback_with_consent_and_a_current_date(view):
    assert view.address[0] == "127.0.0.1" and view.url.startswith("http://127.0.0.1:")
    headers, page = get(view.url)
    assert re.match(r"consent=\d+; Path=/", headers["Set-Cookie"])
    date = re.search(rb'<meta name="date" content="([^"]*)">', page).group(1).decode()
    age = datetime.datetime.now() - datetime.datetime.strptime(date, "%Y-%m-%d %H:%M:%S")
    assert abs(age.days) < 2
    served = re.search(rb'<meta name="file" content="([^"]*)">', page).group(1).decode()
    _, data = get(view.url.rstrip("/") + served)
    spec = Model_pb2.Model()
    spec.ParseFromString(data)
    assert [l.custom.className for l in spec.neuralNetwork.layers if l.WhichOneof("layer") == "custom"] == \
        ["ScaledSwish", "PixelNorm"]
    assert f'src="{view.url}?workbench=1"' in view.frame.value


def test_serves_again_after_a_change(view):
    view.session.model.spec.neuralNetwork.layers[0].name = "renamed_for_the_test"
    first = view.url
    view.session.changed("model")
    assert view.errors.last_error is None
    assert view.generation == 2 and "?workbench=2" in view.frame.value and view.url != first
    with pytest.raises(OSError):
        get(first)                                                          # the previous server is stopped
    headers, page = get(view.url)
    served = re.search(rb'<meta name="file" content="([^"]*)">', page).group(1).decode()
    _, data = get(view.url.rstrip("/") + served)
    assert b"renamed_for_the_test" in data
    assert repr(view) == f"<workbench GraphView: Netron at 127.0.0.1:{view.address[1]}>"
