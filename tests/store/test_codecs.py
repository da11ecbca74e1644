"""Update codecs: round trips, top-k's error feedback, and malformed payloads rejected with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from fedkeeper.function.errors import InvalidUpdate
from fedkeeper.function.store import codecs
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.codecs import Codec, compress, decompress
from fedkeeper.function.store.db import SessionStore
from fedkeeper.function.store.updates import StoredUpdate, UnreadableUpdate
from fedkeeper.host.serve.changes import Changes

FLOAT16, INT8, TOPK = Codec("float16"), Codec("int8"), Codec("topk", 0.1)


def _model(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(64, 16)).astype(np.float32), rng.normal(size=(16,)).astype(np.float32)]


def _update(reference: list[np.ndarray], seed: int = 1, step: float = 0.05) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(r + step * rng.normal(size=r.shape)).astype(np.float32) for r in reference]


def test_none_stores_the_weights_as_they_are() -> None:
    reference = _model()
    update = _update(reference)
    encoded = compress(update, reference, codecs.NONE)
    assert wire.checksum(encoded.arrays) == wire.checksum(update) and encoded.residual is None
    assert wire.checksum(decompress(encoded.arrays, reference, codecs.NONE)) == wire.checksum(update)


def test_float16_round_trip_is_within_float16_rounding_of_the_delta() -> None:
    reference = _model()
    update = _update(reference)
    (payload,) = compress(update, reference, FLOAT16).arrays
    assert payload.dtype == np.float16 and payload.size == sum(r.size for r in reference)
    decoded = decompress([payload], reference, FLOAT16)
    for got, want, ref in zip(decoded, update, reference, strict=True):
        assert got.dtype == np.float32 and got.shape == want.shape
        delta = np.abs(want.astype(np.float64) - ref)
        # float16 has an 11-bit significand: relative error <= 2**-11 of the delta, plus float32's of the sum
        assert np.all(np.abs(got - want) <= delta * 2**-11 + np.abs(want) * 2**-23 + 1e-12)


def test_int8_round_trip_error_is_at_most_half_a_step_of_each_arrays_scale() -> None:
    reference = _model()
    update = _update(reference)
    q, scales = compress(update, reference, INT8).arrays
    assert q.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (2,)
    assert int(np.abs(q).max()) == 127  # the largest delta of an array takes the full range
    decoded = decompress([q, scales], reference, INT8)
    for got, want, scale in zip(decoded, update, scales, strict=True):
        assert np.max(np.abs(got - want)) <= float(scale) / 2 + 1e-6


def test_int8_of_an_unchanged_array_is_exactly_the_reference() -> None:
    reference = _model()
    update = [reference[0] + np.float32(0.1), reference[1].copy()]  # the bias did not move
    encoded = compress(update, reference, INT8)
    assert encoded.arrays[1][1] == 0
    np.testing.assert_array_equal(decompress(encoded.arrays, reference, INT8)[1], reference[1])


def test_topk_keeps_exactly_the_k_largest_deltas_of_each_array() -> None:
    reference = _model()
    update = _update(reference)
    encoded = compress(update, reference, TOPK)
    decoded = decompress(encoded.arrays, reference, TOPK)
    for got, want, ref in zip(decoded, update, reference, strict=True):
        delta = (want.astype(np.float64) - ref).ravel()
        k = codecs.kept(0.1, delta.size)
        largest = set(np.argsort(-np.abs(delta))[:k].tolist())
        sent = (got.astype(np.float64) - ref).ravel()
        assert set(np.flatnonzero(sent).tolist()) == largest
        # what is sent is the delta (to float16 and float32 rounding); the rest stays the reference
        np.testing.assert_allclose(sent[sorted(largest)], delta[sorted(largest)], rtol=2e-3, atol=1e-6)
    assert [int(k) for k in encoded.arrays[0]] == [103, 2]  # ceil(0.1 * 1024), ceil(0.1 * 16)


def test_topk_residual_is_what_was_not_sent_and_is_sent_later() -> None:
    reference = [np.zeros(10, dtype=np.float32)]
    delta = np.array([5, 4, 3, 2, 1, 0.5, 0.25, 0.2, 0.1, 0.05], dtype=np.float32)
    codec = Codec("topk", 0.1)  # one entry of ten per update
    first = compress([delta], reference, codec)
    np.testing.assert_array_equal(
        decompress(first.arrays, reference, codec)[0], [5, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    )
    assert first.residual is not None
    np.testing.assert_allclose(first.residual[0], np.where(np.arange(10) == 0, 0, delta))
    # The next update moves nothing: what it sends is the largest of what the first one dropped.
    second = compress(reference, reference, codec, first.residual)
    np.testing.assert_allclose(decompress(second.arrays, reference, codec)[0], np.eye(10)[1] * 4)
    assert second.residual is not None
    np.testing.assert_allclose(second.residual[0].sum(), delta[2:].sum(), rtol=1e-6)


@pytest.mark.parametrize("codec", [FLOAT16, INT8, TOPK], ids=lambda c: c.name)
def test_an_empty_array_and_a_single_value_round_trip(codec: Codec) -> None:
    reference = [np.zeros((0, 3), np.float32), np.ones(1, np.float32), np.zeros(30, np.float32)]
    update = [
        np.zeros((0, 3), np.float32),
        np.full(1, 1.5, np.float32),
        np.linspace(0, 1, 30, dtype=np.float32),
    ]
    decoded = decompress(compress(update, reference, codec).arrays, reference, codec)
    assert [d.shape for d in decoded] == [(0, 3), (1,), (30,)]
    np.testing.assert_allclose(decoded[1], [1.5], rtol=1e-3)


def test_a_delta_past_float16_range_does_not_fit_the_codec() -> None:
    reference = [np.zeros(4, dtype=np.float32)]
    with pytest.raises(InvalidUpdate, match="past float16's range"):
        compress([np.array([0, 0, 1e6, 0], dtype=np.float32)], reference, FLOAT16)


def _payload(codec: Codec) -> tuple[list[np.ndarray], list[np.ndarray]]:
    reference = _model()
    return compress(_update(reference), reference, codec).arrays, reference


def _replaced(arrays: list[np.ndarray], index: int, value: np.ndarray) -> list[np.ndarray]:
    return [value if i == index else a for i, a in enumerate(arrays)]


def _topk_with_indices(first: list[int]) -> list[np.ndarray]:
    arrays, _ = _payload(TOPK)
    offsets = arrays[2].copy()
    offsets[: len(first)] = first
    return _replaced(arrays, 2, offsets)


MALFORMED = [
    pytest.param(FLOAT16, lambda a: a + a, "float16 payload has 2 arrays, expected 1", id="float16-count"),
    pytest.param(
        FLOAT16, lambda a: [a[0].astype(np.float32)], "float16 payload a0: dtype float32", id="float16-dtype"
    ),
    pytest.param(
        FLOAT16, lambda a: [a[0][:-1]], "float16 payload a0: 1039 values, expected 1040", id="float16-size"
    ),
    pytest.param(
        FLOAT16,
        lambda a: [np.full_like(a[0], np.inf)],
        "float16 payload a0: contains NaN or infinite values",
        id="float16-inf",
    ),
    pytest.param(
        INT8, lambda a: [a[0].reshape(2, -1), a[1]], "int8 payload a0: shape (2, 520)", id="int8-shape"
    ),
    pytest.param(
        INT8,
        lambda a: [np.full_like(a[0], -128), a[1]],
        "int8 payload a0: value -128 is outside [-127, 127]",
        id="int8-range",
    ),
    pytest.param(
        INT8,
        lambda a: [a[0], np.array([np.nan, 1], np.float32)],
        "int8 payload a1 (scales): contains NaN",
        id="int8-scale-nan",
    ),
    pytest.param(
        INT8,
        lambda a: [a[0], np.array([-1, 1], np.float32)],
        "int8 payload a1 (scales): negative scale -1.0",
        id="int8-scale-negative",
    ),
    pytest.param(
        INT8, lambda a: [a[0], a[1][:1]], "int8 payload a1: 1 values, expected 2", id="int8-scales-size"
    ),
    pytest.param(
        TOPK,
        lambda a: _replaced(a, 0, np.array([104, 2], np.uint32)),
        "topk payload a0 (counts): [104, 2], expected [103, 2]",
        id="topk-counts",
    ),
    pytest.param(
        TOPK,
        lambda a: _replaced(a, 3, a[3][:-1]),
        "topk payload: 105 indices (a2) and 104 values (a3), expected 105",
        id="topk-values-size",
    ),
    pytest.param(
        TOPK,
        lambda a: _replaced(a, 1, np.array([102, 3], np.uint32)),
        "topk payload a1 (blocks) of array 0: 102 indices, expected 103",
        id="topk-blocks",
    ),
    pytest.param(
        TOPK,
        lambda a: _topk_with_indices([0, 1, 1]),
        "topk payload a2 (indices) of array 0: not strictly increasing (repeated or unsorted)",
        id="topk-repeated-index",
    ),
    pytest.param(
        TOPK,
        lambda a: _replaced(a, 2, np.where(np.arange(a[2].size) == 102, 1024, a[2]).astype(np.uint16)),
        "topk payload a2 (indices) of array 0: index 1024 is past its size 1024",
        id="topk-index-range",
    ),
    pytest.param(
        TOPK,
        lambda a: _replaced(a, 2, a[2].astype(np.int64)),
        "topk payload a2: dtype int64, expected uint16",
        id="topk-index-dtype",
    ),
]


@pytest.mark.parametrize(("codec", "corrupt", "reason"), MALFORMED)
def test_malformed_payload_is_refused_naming_the_array_and_the_fault(
    codec: Codec, corrupt, reason: str
) -> None:
    arrays, reference = _payload(codec)
    with pytest.raises(InvalidUpdate) as refused:
        decompress(corrupt(arrays), reference, codec)
    assert str(refused.value).startswith(reason), str(refused.value)


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ({"name": "int8", "version": 1}, "update was written with codec 'int8', the session uses 'topk'"),
        ({"name": "topk", "version": 2, "fraction": 0.1}, "update's topk codec version 2 is not 1"),
        (
            {"name": "topk", "version": 1, "fraction": 0.5},
            "update's topk fraction 0.5 is not the session's 0.1",
        ),
        (None, "update was written with codec 'none', the session uses 'topk'"),
        ("topk", "update's codec tag must be a mapping, got str"),
    ],
)
def test_an_update_tagged_with_another_codec_is_refused(tag: object, reason: str) -> None:
    with pytest.raises(InvalidUpdate, match=f"^{reason}$".replace("(", r"\(").replace(")", r"\)")):
        codecs.check_tag(tag, TOPK)


# ----------------------------------------------------------------------------- in the store
@pytest.mark.parametrize("codec", [codecs.NONE, FLOAT16, INT8, TOPK], ids=lambda c: c.name)
def test_stored_update_streams_back_decoded_and_records_its_codec_and_bytes(
    store: SessionStore, codec: Codec
) -> None:
    reference = _model()
    update = _update(reference)
    assert store.updates.put(0, 2, update, 10, 0.5, 0.8, codec=codec, reference=reference)
    (got,) = store.updates.stream(0, [2], codec=codec, reference=reference)
    assert isinstance(got, StoredUpdate)
    want = decompress(compress(update, reference, codec).arrays, reference, codec)
    assert wire.checksum(got.weights) == wire.checksum(want)
    doc = store.store.db.updates.find_one({"session": "s1", "round": 0, "client": 2})
    assert doc["codec"] == codec.tag() and doc["payload_bytes"] == doc["blob"]["size"]
    assert (doc["residual"] is None) == (codec.name != "topk")


def test_compressed_updates_take_fewer_bytes_in_the_store(store: SessionStore) -> None:
    reference = [np.random.default_rng(0).normal(size=(784, 64)).astype(np.float32)]
    update = _update(reference)
    sizes = {}
    for client, codec in enumerate([codecs.NONE, FLOAT16, INT8, TOPK]):
        store.updates.put(0, client, update, 10, 0.5, 0.8, codec=codec, reference=reference)
        sizes[codec.name] = store.store.db.updates.find_one({"session": "s1", "client": client})[
            "payload_bytes"
        ]
    assert sizes["none"] / sizes["float16"] > 1.9
    assert sizes["none"] / sizes["int8"] > 3.9
    assert sizes["none"] / sizes["topk"] > 9


def test_residual_carries_over_the_clients_rounds_and_only_the_newest_is_kept(store: SessionStore) -> None:
    reference = [np.zeros(10, dtype=np.float32)]
    codec = Codec("topk", 0.1)
    delta = [np.array([5, 4, 3, 2, 1, 0.5, 0.25, 0.2, 0.1, 0.05], dtype=np.float32)]
    assert store.updates.put(0, 1, delta, 10, 0.5, 0.8, codec=codec, reference=reference)
    # A retried attempt of the same round stores nothing and touches no residual.
    assert not store.updates.put(0, 1, reference, 10, 0.5, 0.8, codec=codec, reference=reference)
    # Round 3 (the client sat out rounds 1-2): it moves nothing, and sends what round 0 left.
    assert store.updates.put(3, 1, reference, 10, 0.5, 0.8, codec=codec, reference=reference)
    (sent,) = store.updates.stream(3, [1], codec=codec, reference=reference)
    assert isinstance(sent, StoredUpdate)
    np.testing.assert_allclose(sent.weights[0], np.eye(10)[1] * 4)
    residual = store.updates.residual(4, 1, reference)
    assert residual is not None
    np.testing.assert_allclose(residual[0], np.where(np.arange(10) < 2, 0, delta[0]), rtol=1e-6)
    held = list(store.store.db.updates.find({"session": "s1", "client": 1, "residual": {"$ne": None}}))
    assert [d["round"] for d in held] == [3]
    assert store.updates.residual(4, 2, reference) is None  # another client has its own


def test_malformed_stored_payload_streams_as_unreadable_with_its_reason(store: SessionStore) -> None:
    reference = _model()
    store.updates.put(0, 1, _update(reference), 10, 0.5, 0.8, codec=TOPK, reference=reference)
    arrays = _topk_with_indices([0, 1, 1])
    store.store.db.updates.update_one(
        {"session": "s1", "round": 0, "client": 1},
        {"$set": {"blob": store.store.blobs.put(wire.encode(arrays)), "checksum": wire.checksum(arrays)}},
    )
    (got,) = store.updates.stream(0, [1], codec=TOPK, reference=reference)
    assert isinstance(got, UnreadableUpdate) and got.client == 1
    assert (
        got.reason == "topk payload a2 (indices) of array 0: not strictly increasing (repeated or unsorted)"
    )


def test_removing_a_session_deletes_its_residuals_held_in_gridfs(store: SessionStore) -> None:
    store.store.blobs.inline_limit = 0  # every payload goes to GridFS, as a large model's would
    reference = _model()
    store.updates.put(0, 1, _update(reference), 10, 0.5, 0.8, codec=TOPK, reference=reference)
    assert store.store.db["blobs.files"].count_documents({}) == 2  # the payload and the residual
    Changes(store.store).remove_session("s1", force=True)
    assert store.store.db["blobs.files"].count_documents({}) == 0
