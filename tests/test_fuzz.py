"""Hypothesis over the readers of files from elsewhere: random and truncated bytes, hostile headers and values, random
edits of a store's rows. The property everywhere: one ``ArenaError`` line (exit 2) or a correct result; never another
exception, never a file outside the output folder, never a changed row in the store merged into. Derandomized and
bounded so the whole suite runs in well under a minute."""

from __future__ import annotations

import io
import json
import sqlite3
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_untrusted import RUN, _rows, files_under, make_store

from arena import untrusted
from arena.errors import ArenaError
from arena.interchange import read_reported
from arena_plugins.user_data import NPZ, ImageFolder

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _mutated(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    """``data`` truncated at ``cut`` (of its length, 0-1000 ‰) with some bytes replaced."""
    out = bytearray(data[: max(1, len(data) * cut // 1000)])
    for where, value in flips:
        if out:
            out[where % len(out)] = value
    return bytes(out)


mutations = st.tuples(st.integers(0, 1000), st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)),
                                                     max_size=6))


def _sound_npz() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=rng.integers(0, 256, (6, 8, 8, 3), np.uint8), y_train=np.array([0, 1, 2] * 2),
             x_test=rng.integers(0, 256, (4, 8, 8, 3), np.uint8), y_test=np.array([0, 1, 2, 0]))
    return buffer.getvalue()


SOUND_NPZ = _sound_npz()


def _measurable(images, labels) -> None:
    """A correct result: what the run would measure on passes every check of a split."""
    untrusted.check_split(images, labels, int(labels.max()) + 1 if int(labels.max()) > 0 else 2, "fuzzed")


@FUZZ
@given(mutation=mutations, raw=st.booleans(), junk=st.binary(max_size=300))
def test_npz_bytes(mutation, raw, junk):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.npz"
        path.write_bytes(junk if raw else _mutated(SOUND_NPZ, *mutation))
        try:
            images, labels = NPZ(file=path).load("test", Path(folder))
        except ArenaError as exc:
            assert "\n" not in str(exc)
        else:
            _measurable(images, labels)


@FUZZ
@given(shape=st.lists(st.integers(-1, 1 << 40), min_size=0, max_size=5), descr=st.sampled_from(
    ["|u1", "<i8", "<f4", "|O", "<U3", "|b1", ">i2"]), fortran=st.booleans())
def test_npz_hostile_headers(shape, descr, fortran):
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {tuple(shape)}, }}".encode()
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\n" + bytes(64)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.npz"
        with zipfile.ZipFile(path, "w") as archive:
            for name in ("x_train", "y_train", "y_test"):
                archive.writestr(f"{name}.npy", _npy(name))
            archive.writestr("x_test.npy", npy)
        try:
            images, labels = NPZ(file=path).load("test", Path(folder))
        except ArenaError as exc:
            assert "\n" not in str(exc)
        else:
            _measurable(images, labels)


def _npy(name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(SOUND_NPZ)) as archive:
        return archive.read(f"{name}.npy")


def _png(mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (12, 10), 90).save(buffer, "PNG")
    return buffer.getvalue()


SOUND_PNG = _png("RGB")


@FUZZ
@given(mutation=mutations, raw=st.booleans(), junk=st.binary(max_size=200))
def test_image_bytes(mutation, raw, junk):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "images"
        for name in ("a", "b"):
            (root / name).mkdir(parents=True)
            (root / name / "0.png").write_bytes(SOUND_PNG)
        (root / "b" / "1.png").write_bytes(junk if raw else _mutated(SOUND_PNG, *mutation))
        try:
            images, labels = ImageFolder(root=root, size=8).load("test", Path(folder))
        except ArenaError as exc:
            assert "\n" not in str(exc)
        else:
            untrusted.check_split(images, labels, 2, "fuzzed")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=12)
FIELDS = ("name", "dataset", "eps", "clean_acc", "autoattack_acc", "external", "arena", "architecture", "unreliable")


@FUZZ
@given(values=st.dictionaries(st.sampled_from(FIELDS), json_values | st.sampled_from(
    ["8/255", "59.5", "1e400", "-3", "../x", "cifar10", "0/0"]), max_size=9), text=st.text(max_size=60),
    raw=st.booleans())
def test_reported_json(values, text, raw):
    base = {"name": "m", "dataset": "cifar10", "eps": "8/255", "clean_acc": "90", "autoattack_acc": "50"}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "Linf" / "m.json"
        path.parent.mkdir()
        path.write_text(text if raw else json.dumps({**base, **values}, allow_nan=True))
        try:
            entry = read_reported(path)
        except ArenaError as exc:
            assert "\n" not in str(exc)
        else:
            for number in (entry.clean_accuracy, entry.worst_case):
                assert number is None or 0 <= number <= 1


CELLS = st.one_of(st.none(), st.integers(-(1 << 62), 1 << 62), st.floats(), st.binary(max_size=12),
                  st.sampled_from(["../../../../x", "/abs", "..", "ok-name", "{}", "[]", "{oops", "linf", "complete",
                                   "ok", '{"a": {"key": "../x"}}', "[[\"a\",\"b\",\"c\"]]", "NaN"]))
RUN_COLUMNS = ("id", "dataset", "norm", "eps", "samples", "seed", "status", "weights", "classes", "expected",
               "runtime", "origin", "finished_at", "scenario")
MATCHUP_COLUMNS = ("run_id", "model", "defense", "attack", "params", "gradient", "key", "status", "samples",
                   "clean_accuracy", "robust_accuracy", "clean_correct", "robust_correct", "attacked", "checks",
                   "cascade_after", "suite")


@settings(FUZZ, max_examples=30)
@given(edits=st.lists(st.tuples(st.sampled_from(("runs", "matchups")), st.integers(0, 100), CELLS), min_size=1,
                      max_size=3))
def test_store_row_edits(capsys, edits):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        source, here = make_store(root / "src" / "r"), make_store(root / "here", run_id="20260101-000000-dddddd")
        db = sqlite3.connect(source / "arena.db")
        for table, column, value in edits:
            columns = RUN_COLUMNS if table == "runs" else MATCHUP_COLUMNS
            try:
                db.execute(f'UPDATE {table} SET "{columns[column % len(columns)]}" = ?', (value,))
            except sqlite3.Error:
                pass  # a constraint refused the edit: the store stays as it was
        db.commit()
        db.close()
        before, outside = _rows(here), files_under(root)
        code, _, err = run_cli(capsys, "merge", str(source), "--results", str(here))
        assert code in (0, 2) and (code == 0 or len(err.strip().splitlines()) == 1), err
        assert set(_rows(here)) >= set(before), "no row already here changed or went"
        out = root / "src" / "out"
        code, _, err = run_cli(capsys, "board", "--results", str(source), "--format", "robustbench", "--out",
                               str(out))
        assert code in (0, 2) and (code == 0 or len(err.strip().splitlines()) == 1), err
        new = files_under(root) - outside
        assert all(p.resolve().is_relative_to(out.resolve()) or p.resolve().is_relative_to(here.resolve())
                   for p in new), new


@settings(FUZZ, max_examples=25)
@given(mutation=mutations)
def test_store_file_bytes(capsys, mutation):
    with tempfile.TemporaryDirectory() as folder:
        results = make_store(Path(folder) / "r")
        data = (results / "arena.db").read_bytes()
        (results / "arena.db").write_bytes(_mutated(data, 1000, mutation[1]) if mutation[0] % 2 else
                                           _mutated(data, *mutation))
        for command in (["board", "--format", "json"], ["leaderboard", "--run", RUN]):
            code, _, err = run_cli(capsys, *command, "--results", str(results))
            assert code in (0, 2) and (code == 0 or len(err.strip().splitlines()) == 1), err


@pytest.mark.parametrize("part", ["..", ".", "/abs", "a/b", "", ".hidden", "x" * 200, "ok\x00"])
def test_child_refuses_every_unsafe_part(tmp_path, part):
    with pytest.raises(ArenaError):
        untrusted.child(tmp_path, part)
