"""Every real third-party model in ../shared/corpus loads and runs.

These models were made by other people with other tools (Keras 1/2, Caffe, Turi, coremltools 3-7);
running them checks that the runtime reads what the world actually wrote.
"""
import numpy as np
import pytest
from PIL import Image

import workbench as wb
from support import CORPUS, LAYERS, corpus

MODELS = [
    "dneprDroid_DeformConv2d_test-model.mlmodel", "dneprDroid_GridSample_model.mlmodel",
    "fritz_starry_night_640x480_small_a03_q8.mlmodel", "hollance_NeuralMcNeuralNet.mlmodel",
    "kingreza_food.mlmodel", "kingreza_food_kmeans_3.mlmodel", "lausbert_Exermote.mlmodel",
    "packt_FastStyleTransferVanGoghStarryNight.mlmodel", "swiftbrain_MNIST.mlmodel",
    "tucan9389_model_hourglass.mlmodel", "waifu2x_up_photo_scale2x_model.mlmodel",
]


def test_the_list_is_the_corpus():
    if not CORPUS.exists():
        pytest.skip("../shared/corpus not found (it exists beside the project checkout and in CI)")
    assert sorted(p.name for p in CORPUS.glob("*.mlmodel")) == sorted(MODELS)


# Sequence models take [Seq, Batch, C, H, W] arrays: Exermote reads 40 time steps of 12 features.
SEQUENCE_SHAPES = {"accelerations": (40, 1, 12, 1, 1)}


def default_inputs(model):
    """Deterministic inputs of each feature's default shape: PIL images for image inputs."""
    rng = np.random.default_rng(0)
    inputs = {}
    for f in model.io.inputs:
        if f.name in SEQUENCE_SHAPES:
            inputs[f.name] = rng.uniform(-1, 1, SEQUENCE_SHAPES[f.name]).astype(np.float32)
            continue
        kind = f.type.WhichOneof("Type")
        if kind == "imageType":
            from workbench.runtime.spec import image_size
            w, h = image_size(f)
            mode = "L" if f.type.imageType.colorSpace == 10 else "RGB"
            shape = (h, w) if mode == "L" else (h, w, 3)
            inputs[f.name] = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
        else:
            from workbench.runtime.spec import array_shape
            inputs[f.name] = rng.uniform(-1, 1, array_shape(f)).astype(np.float32)
    return inputs


@pytest.mark.parametrize("name", MODELS)
def test_loads_and_runs(name):
    model = wb.load(corpus(name), layers=LAYERS)
    assert model.missing_implementations() == []
    inputs = default_inputs(model)
    outputs = model.predict(inputs)
    assert set(outputs) == {f.name for f in model.spec.description.output}
    for key, value in outputs.items():
        if isinstance(value, np.ndarray):
            assert np.isfinite(value).all(), key


def test_food_classifier_answers_like_coremltools():
    model = wb.load(corpus("kingreza_food.mlmodel"))
    image = Image.open(corpus("floortje.png")).convert("RGB").resize((227, 227))
    out = model.predict({"data": image})
    label_name = model.spec.description.predictedFeatureName
    probs_name = model.spec.description.predictedProbabilitiesName
    probs = out[probs_name]
    assert len(probs) == 101 and isinstance(out[label_name], str)
    assert out[label_name] == max(probs, key=probs.get)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)


def test_exermote_lstm_state_outputs_feed_back():
    model = wb.load(corpus("lausbert_Exermote.mlmodel"))
    inputs = default_inputs(model)
    first = model.predict(inputs)
    state = {k.replace("_out", "_in"): v for k, v in first.items() if k.endswith("_out")}
    assert set(state) <= set(inputs)
    second = model.predict({**inputs, **state})
    assert any(not np.allclose(first[k], second[k]) for k in first if not k.endswith("_out"))
