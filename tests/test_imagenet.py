"""The packaged ImageNet class table and its lookups."""
import hashlib
from importlib.resources import files

import numpy as np
import pytest

from fbi_ref.errors import InputError
from fbi_ref.io.imagenet import (CLASSES, class_index, class_name, class_wnid,
                              decode_predictions)

# The hash keras.applications.imagenet_utils checks imagenet_class_index.json against.
KERAS_CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"


def test_packaged_json_is_byte_identical_to_keras():
    data = files("fbi_ref.io").joinpath("imagenet_classes.json").read_bytes()
    assert hashlib.md5(data).hexdigest() == KERAS_CLASS_INDEX_MD5


def test_table_shape_and_landmarks():
    assert len(CLASSES) == 1000
    assert CLASSES[0] == ("n01440764", "tench")
    assert CLASSES[999] == ("n15075141", "toilet_tissue")
    assert CLASSES[207] == ("n02099601", "golden_retriever")
    wnids = [wnid for wnid, _ in CLASSES]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000  # Keras orders by WordNet id


def test_class_name_and_wnid():
    assert class_name(0) == "tench" and class_wnid(0) == "n01440764"
    assert class_name(np.int64(999)) == "toilet_tissue"


@pytest.mark.parametrize("bad", [-1, 1000, 2.0, "3", True, None])
def test_bad_index(bad):
    with pytest.raises(InputError, match="class index"):
        class_name(bad)


def test_every_class_round_trips_by_wnid():
    assert [class_index(wnid) for wnid, _ in CLASSES] == list(range(1000))


@pytest.mark.parametrize("query, index", [
    ("tench", 0), ("golden_retriever", 207), ("Golden Retriever", 207), ("Shih-Tzu", 155),
    ("n02012849", 134), ("n03126707", 517), ("toilet_tissue", 999),
])
def test_class_index(query, index):
    assert class_index(query) == index


@pytest.mark.parametrize("name, wnids", [("crane", ["n02012849", "n03126707"]),
                                         ("maillot", ["n03710637", "n03710721"])])
def test_ambiguous_names_ask_for_a_wnid(name, wnids):
    with pytest.raises(InputError, match=wnids[0]) as info:
        class_index(name)
    assert all(w in str(info.value) for w in wnids)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(InputError, match="golden_retriever"):
        class_index("golden retreiver")


def test_decode_predictions_like_keras():
    probs = np.zeros((2, 1000), np.float32)
    probs[0, [3, 207, 999]] = [0.2, 0.7, 0.1]
    probs[1, 0] = 1.0
    first, second = decode_predictions(probs, top=3)
    assert [(w, n) for w, n, _ in first] == [CLASSES[207], CLASSES[3], CLASSES[999]]
    assert [s for _, _, s in first] == pytest.approx([0.7, 0.2, 0.1])
    assert second[0] == ("n01440764", "tench", 1.0) and len(second) == 3


@pytest.mark.parametrize("probs, top, says", [
    (np.zeros(1000), 5, "must be a .N, 1000. numeric array"), (np.zeros((1, 10)), 5, "must be a .N, 1000. numeric"),
    (np.full((1, 1000), np.nan), 5, "NaN or infinite"), (np.zeros((1, 1000)), 0, "top must be an integer in 1..1000"),
    (np.zeros((1, 1000)), 1001, "top must be an integer in 1..1000"),
])
def test_decode_predictions_bad_input(probs, top, says):
    with pytest.raises(InputError, match=says):
        decode_predictions(probs, top)
