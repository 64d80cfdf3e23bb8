"""Files from elsewhere, as a hostile user would make them: every class of bad input ends in one line and exit 2 (an
``ArenaError`` from the Python API) before any work, or in a correct result; nothing from data becomes a path outside
the folder asked for; a merge never changes what is already here."""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from conftest import matchup, run_cli, tiny, write_scenario
from PIL import Image, PngImagePlugin
from torch import nn

from arena import ThreatModel, evaluate, untrusted
from arena.errors import ArenaError
from arena.interchange import InterchangeError, read_reported
from arena.leaderboard import rows
from arena.networks import check_width
from arena.store import Store
from arena_plugins.named_models import Timm
from arena_plugins.user_data import NPZ, ImageFolder
from arena_plugins.weights import weights_problem
from arena_plugins.zoo import RobustBenchModel

RUN = "20260101-000000-abc123"


def make_store(folder: Path, run_id: str = RUN, dataset: str = "cifar10", **run: object) -> Path:
    """A real results store holding one complete run of two hand-made matchups (8 samples each)."""
    store = Store(folder)
    values = {"id": run_id, "scenario": "s", "scenario_path": "s.yaml", "scenario_digest": "d" * 64,
              "scenario_text": "", "arena_version": "1", "seed": 0, "norm": "linf", "eps": 8 / 255,
              "dataset": dataset, "samples": 8, "device": "cpu", "status": "complete",
              "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00",
              "weights": json.dumps({"cnn/none": {"key": "k" * 40, "source": "trained"}}), **run}
    with store.db:
        store.db.execute(f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                         list(values.values()))
    for m in (matchup("fgsm", (1, 1, 1, 0, 0, 0, 0, 0)), matchup("pgd", (1, 1, 0, 0, 0, 0, 0, 0))):
        m.key = f"{run_id}-{m.attack}"
        store.add_matchup(run_id, m)
    store.close()
    return folder


def edit(folder: Path, *statements: str) -> None:
    """Run SQL statements on a store's file, as someone editing it by hand would."""
    db = sqlite3.connect(folder / "arena.db")
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def one_line_exit_2(code: int, err: str, expected: str = "") -> None:
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert expected in err, err


def files_under(root: Path) -> set[Path]:
    """Every path under ``root`` but SQLite's own companions of a store it read (``arena.db-wal``, ``-shm``)."""
    return {p for p in root.rglob("*") if not p.name.endswith(("-wal", "-shm"))}


# Paths from data -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("id", "../../../../escaped"), ("id", "/tmp/absolute"),
                                          ("dataset", "../../escaped"), ("dataset", "..")])
@pytest.mark.parametrize("command", [["board", "--format", "html"], ["board", "--format", "robustbench"],
                                     ["report"], ["merge"]])
def test_a_hostile_name_in_a_store_writes_nothing_anywhere(tmp_path, capsys, field, value, command):
    results = make_store(tmp_path / "deep" / "er" / "results")
    edit(results, f"UPDATE runs SET {field} = '{value}'", f"UPDATE matchups SET run_id = '{value}'"
         if field == "id" else "SELECT 1")
    before = files_under(tmp_path)
    out = tmp_path / "deep" / "er" / "out"
    args = [*command, "--results", str(results), "--out", str(out)]
    if command == ["report"]:
        args = ["report", value if field == "id" else RUN, "--results", str(results)]
    if command == ["merge"]:
        args = ["merge", str(results), "--results", str(out)]
    code, _, err = run_cli(capsys, *args)
    one_line_exit_2(code, err, f"field {field!r}")
    assert files_under(tmp_path) == before, "nothing written, inside or outside"


def test_a_sound_store_renders_and_every_output_stays_in_the_folder(tmp_path, capsys):
    results = make_store(tmp_path / "results")
    for fmt in ("html", "robustbench"):
        code, _, err = run_cli(capsys, "board", "--results", str(results), "--format", fmt, "--out",
                               str(tmp_path / fmt))
        assert code == 0, err
        written = [p for p in files_under(tmp_path) if p.is_file() and "results" not in p.parts]
        assert written and all(p.resolve().is_relative_to(tmp_path.resolve()) for p in written)
    assert (tmp_path / "html" / "reports" / RUN / "leaderboard.html").is_file()
    [info] = (tmp_path / "robustbench" / "cifar10" / "Linf").glob("*.json")
    assert json.loads(info.read_text())["clean_acc"] == "75.00", "6 of 8 clean, measured"


def test_a_link_inside_the_output_folder_is_not_followed_out_of_it(tmp_path, capsys):
    results = make_store(tmp_path / "results")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "reports").symlink_to(elsewhere)
    code, _, err = run_cli(capsys, "board", "--results", str(results), "--format", "html", "--out",
                           str(tmp_path / "out"))
    one_line_exit_2(code, err, "leads outside")
    assert not list(elsewhere.iterdir())
    with pytest.raises(ArenaError):
        untrusted.child(tmp_path, "..")


# Merge never changes what is here --------------------------------------------------------------------------------

def _rows(folder: Path) -> list[tuple]:
    db = sqlite3.connect(folder / "arena.db")
    found = db.execute("SELECT * FROM runs ORDER BY id").fetchall() + db.execute(
        "SELECT * FROM matchups ORDER BY id").fetchall()
    db.close()
    return found


def test_merge_file_reads_that_file(tmp_path, capsys):
    make_store(tmp_path / "some", run_id="20260101-000000-aaaaaa")
    make_store(tmp_path / "backup", run_id="20260101-000000-bbbbbb")
    os.replace(tmp_path / "backup" / "arena.db", tmp_path / "some" / "backup.db")
    code, out, err = run_cli(capsys, "merge", str(tmp_path / "some" / "backup.db"), "--results",
                             str(tmp_path / "here"))
    assert code == 0, err
    assert [r[0] for r in _rows(tmp_path / "here") if isinstance(r[0], str)] == ["20260101-000000-bbbbbb"]


@pytest.mark.parametrize("change", ["UPDATE runs SET scenario = 'edited'",
                                    "UPDATE runs SET weights = '{\"cnn/none\": {\"key\": \"other\"}}'",
                                    "UPDATE matchups SET robust_correct = x'0000000000000000'"])
def test_merge_reports_an_altered_copy_and_keeps_this_stores(tmp_path, capsys, change):
    here, there = make_store(tmp_path / "here"), make_store(tmp_path / "there")
    edit(there, change)
    before = _rows(here)
    code, out, err = run_cli(capsys, "merge", str(there), "--results", str(here))
    assert code == 1 and "ALTERED: run" in err and "kept this store's" in err, err
    assert _rows(here) == before, "nothing already here changed"


@pytest.mark.parametrize("change, expected", [
    ("ALTER TABLE matchups DROP COLUMN robust_correct", "lacks column(s) robust_correct"),
    ("UPDATE matchups SET clean_correct = NULL", "without its per-sample results"),
    ("UPDATE matchups SET clean_correct = x'01'", "not 8 per-sample 0/1 bytes"),
    ("UPDATE runs SET weights = '{oops'", "field 'weights' is not valid JSON"),
    ("UPDATE runs SET expected = '7'", "field 'expected'"),
    ("UPDATE matchups SET robust_accuracy = 1.5", "within [0, 1]"),
    ("UPDATE runs SET eps = 'NaN'", "field 'eps'"),
    ("PRAGMA user_version = 99", "newer arena"),
    ("PRAGMA user_version = 0", "schema version 0"),
])
def test_merge_and_board_refuse_a_damaged_source_whole_before_any_write(tmp_path, capsys, change, expected):
    here, there = make_store(tmp_path / "here", run_id="20260101-000000-cccccc"), make_store(tmp_path / "there")
    edit(there, change)
    before = _rows(here)
    code, _, err = run_cli(capsys, "merge", str(there), "--results", str(here))
    one_line_exit_2(code, err, expected)
    assert _rows(here) == before
    code, _, err = run_cli(capsys, "board", "--results", str(there))
    one_line_exit_2(code, err, expected)


def test_corrupt_sqlite_pages_are_one_line(tmp_path, capsys):
    results = make_store(tmp_path / "r")
    data = bytearray((results / "arena.db").read_bytes())
    data[4096:8192] = os.urandom(4096)
    (results / "arena.db").write_bytes(bytes(data))
    for command in ("board", "leaderboard", "report"):
        code, _, err = run_cli(capsys, command, "--results", str(results))
        one_line_exit_2(code, err)


def test_a_zlib_bomb_in_a_kept_example_is_refused(tmp_path, capsys):
    results = make_store(tmp_path / "r")
    edit(results, "INSERT INTO examples VALUES (1, 0, 0, '[3, 32, 32]', x'{0}', x'{0}', 0, 1, 0.9, 0.8, 'zlib')"
         .format(zlib.compress(bytes(1 << 24)).hex()))
    code, _, err = run_cli(capsys, "report", "--results", str(results))
    one_line_exit_2(code, err, "field 'clean' is not a zlib image")


# Numbers nobody measured -----------------------------------------------------------------------------------------

def _info(folder: Path, **fields: object) -> Path:
    path = folder / "Linf" / "m.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = fields.pop("_raw", None)
    info = {"name": "m", "dataset": "cifar10", "eps": "8/255", "clean_acc": "90.1", "autoattack_acc": "50.2",
            **fields}
    path.write_text(raw or json.dumps(info))
    return path


@pytest.mark.parametrize("fields, expected", [
    ({"clean_acc": "150"}, "'clean_acc'"), ({"autoattack_acc": "-20"}, "'autoattack_acc'"),
    ({"autoattack_acc": "nan"}, "'autoattack_acc'"), ({"external": [1]}, "'external'"),
    ({"name": {"a": 1}}, "'name'"), ({"eps": None}, "'eps'"), ({"arena": {"eps": [1]}}, "'arena.eps'"),
    ({"arena": {"samples": "many"}}, "'arena.samples'"), ({"arena": {"norm": "l7"}}, "'arena.norm'"),
    ({"dataset": "../x"}, "'dataset'"), ({"_raw": '{"clean_acc": 1e400}'}, "beyond the range"),
    ({"_raw": "[" * 5000 + "]" * 5000}, "nested deeper"), ({"_raw": '{"a": NaN}'}, "not a number JSON allows"),
])
def test_a_reported_file_with_numbers_nobody_measured_is_refused(tmp_path, fields, expected):
    with pytest.raises(InterchangeError) as raised:
        read_reported(_info(tmp_path, **fields))
    message = str(raised.value)
    assert expected in message and "\n" not in message and str(tmp_path) in message


def test_a_sound_reported_file_reads(tmp_path):
    entry = read_reported(_info(tmp_path))
    assert (entry.clean_accuracy, entry.worst_case) == pytest.approx((0.901, 0.502))


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    base = {"x_train": rng.integers(0, 256, (6, 8, 8, 3), np.uint8), "y_train": np.array([0, 1, 2] * 2),
            "x_test": rng.integers(0, 256, (4, 8, 8, 3), np.uint8), "y_test": np.array([0, 1, 2, 0])}
    np.savez(path, **{**base, **arrays})
    return path


@pytest.mark.parametrize("arrays, expected", [
    ({"x_test": np.zeros((0, 8, 8, 3), np.uint8), "y_test": np.zeros(0, np.int64)}, "holds no image"),
    ({"y_test": np.array([0.0, 1.7, 2.2, 0.0])}, "float labels are not rounded"),
    ({"y_test": np.array([[0], [1], [2], [0]])}, "flatten it with y.reshape(-1)"),
    ({"y_test": np.array([0, 1, 2, 2**40])}, "expected class indices 0 to 99999"),
    ({"y_train": np.zeros(6, np.int64), "y_test": np.zeros(4, np.int64)}, "one class only"),
    ({"x_train": np.zeros((6, 16, 16, 3), np.uint8)}, "every split of one image size"),
])
def test_npz_arrays_nobody_could_measure_on_are_one_line(tmp_path, arrays, expected):
    dataset = NPZ(file=_npz(tmp_path / "d.npz", **arrays))
    with pytest.raises(ArenaError) as raised:
        dataset.load("test", tmp_path)
        dataset.load("train", tmp_path)
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_npz_files_that_lie_are_refused_before_they_are_read(tmp_path):
    npy = tmp_path / "single.npz"
    np.save(npy.with_suffix(".npy"), np.zeros(3))
    os.replace(npy.with_suffix(".npy"), npy)
    forged = _npz(tmp_path / "forged.npz")
    with zipfile.ZipFile(forged) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    header = np.lib.format.header_data_from_array_1_0(np.zeros((4, 8, 8, 3), np.uint8))
    header["shape"] = (10**7, 1000, 1000, 3)  # tens of terabytes
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    members["x_test.npy"] = buffer.getvalue() + members["x_test.npy"][128:]
    with zipfile.ZipFile(forged, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    for path, expected in ((npy, "a single .npy array"), (forged, "header claims")):
        with pytest.raises(ArenaError, match=expected):
            NPZ(file=path).load("test", tmp_path)


def _folder(root: Path, classes: dict[str, list[str]], size=(12, 10)) -> Path:
    for name, modes in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for n, mode in enumerate(modes):
            Image.new(mode, size, 128).save(root / name / f"{n}.png")
    return root


def test_an_image_folder_follows_no_link_and_skips_hidden_folders(tmp_path):
    root = _folder(tmp_path / "images", {"cat": ["RGB"], "dog": ["RGB"]})
    _folder(tmp_path / "elsewhere", {"many": ["RGB"] * 9})
    (root / "cat" / "linked").symlink_to(tmp_path / "elsewhere" / "many")
    (root / "dog" / "linked.png").symlink_to(tmp_path / "elsewhere" / "many" / "0.png")
    (root / "linkclass").symlink_to(tmp_path / "elsewhere" / "many")
    _folder(root / ".ipynb_checkpoints", {"cat": ["RGB"]})
    assert ImageFolder.check_params({"root": root, "resize": None, "size": 8}) == {}
    images, labels = ImageFolder(root=root, size=8).load("test", tmp_path)
    assert labels.tolist() == [0, 1] and images.shape == (2, 3, 8, 8)


def test_image_folders_that_would_give_a_wrong_number_are_one_line(tmp_path):
    one = _folder(tmp_path / "one", {"only": ["RGB", "RGB"]})
    assert "one class subfolder" in ImageFolder.check_params({"root": one, "resize": None, "size": 8})["root"]
    mixed = _folder(tmp_path / "mixed", {"a": ["L"], "b": ["L"]})
    _folder(mixed / "test", {"a": ["RGB"], "b": ["RGB"]})
    _folder(mixed / "train", {"a": ["L"], "b": ["L"]})
    dataset = ImageFolder(root=mixed, size=8)
    dataset.load("test", tmp_path)
    with pytest.raises(ArenaError, match="a grey image, but .* is colour"):
        dataset.load("train", tmp_path)


def test_decompression_bombs_and_huge_text_chunks_are_refused_cleanly(tmp_path):
    root = _folder(tmp_path / "bomb", {"a": ["RGB"], "b": ["RGB"]})
    Image.new("1", (10_000, 6_000)).save(root / "a" / "0.png")  # 60 M pixels in a few kB
    with pytest.raises(ArenaError, match="more than 25,000,000 pixels"):
        ImageFolder(root=root, size=8).load("test", tmp_path)
    root = _folder(tmp_path / "text", {"a": ["RGB"], "b": ["RGB"]})
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("big", "x" * (untrusted.MAX_TEXT_CHUNK + 10), zip=True)
    Image.new("RGB", (12, 10)).save(root / "b" / "0.png", pnginfo=chunk)
    with pytest.raises(ArenaError, match="not a readable image"):
        ImageFolder(root=root, size=8).load("test", tmp_path)


@pytest.mark.parametrize("images, labels, classes, expected", [
    (torch.full((4, 3, 8, 8), 200.0), torch.tensor([0, 1, 0, 1]), 2, "divide 0-255 pixel values by 255"),
    (torch.rand(4, 3, 8, 8), torch.tensor([[0], [1], [0], [1]]), 2, "flatten them"),
    (torch.rand(4, 3, 8, 8), torch.tensor([0.0, 1.0, 0.0, 1.0]), 2, "float labels"),
    (torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 5]), 2, "labels from 0 to 5"),
    (torch.rand(0, 3, 8, 8), torch.zeros(0, dtype=torch.int64), 2, "at least one float image"),
    (torch.rand(4, 3, 8, 8), torch.tensor([0, 0, 0, 0]), 1, "fewer than two"),
])
def test_any_dataset_split_is_checked_before_any_work(images, labels, classes, expected):
    with pytest.raises(ArenaError, match=expected):
        untrusted.check_split(images, labels, classes, "dataset 'x', test split")
    untrusted.check_split(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), 2, "sound")


class _Returns(nn.Module):
    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def forward(self, x: torch.Tensor):
        return self.make(x)


@pytest.mark.parametrize("make, expected", [
    (lambda x: (torch.zeros(len(x), 10),), "returns tuple"), (lambda x: torch.zeros(10), "returns (10,)"),
    (lambda x: torch.full((len(x), 10), float("nan")), "NaN or infinite logits"),
    (lambda x: torch.zeros(len(x), 4), "outputs 4 logits"),
])
def test_models_whose_output_cannot_be_measured_are_refused(make, expected):
    data = SimpleNamespace(images=torch.rand(4, 3, 8, 8), dataset=SimpleNamespace(num_classes=10, name="d"))
    with pytest.raises(ArenaError, match=re.escape(expected)):
        check_width(_Returns(make), data, SimpleNamespace(name="m"))


class Payload:
    """Any class that is not a tensor: a pickle that would build it is refused by ``weights_only``."""


def test_checkpoints_are_opened_with_weights_only_and_their_keys_checked_at_validation(tmp_path):
    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    assert "holds objects beyond tensors" in weights_problem(tmp_path / "evil.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), tmp_path / "good.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    model = {"arch": "resnet18", "size": 32, "channels": 3, "mean": None, "std": None}
    assert "not a state_dict of this architecture" in Timm(**model, checkpoint=tmp_path / "other.pt").input_problem(
        (3, 32, 32))
    assert "not a state_dict of tensors" in Timm(**model, checkpoint=tmp_path / "tensor.pt").input_problem((3, 32, 32))
    assert Timm(**model, checkpoint=tmp_path / "good.pt").input_problem((3, 32, 32)) is None


def test_a_checkpoint_for_another_number_of_classes_is_refused_at_validation(tmp_path, capsys, scenario_data_dir):
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), tmp_path / "three.pt")
    model = Timm(arch="resnet18", size=32, channels=3, mean=None, std=None, checkpoint=tmp_path / "three.pt")
    assert model.classes_problem(3) is None
    assert "fc.weight has shape (3, 512), but this architecture for 10 classes needs (10, 512)" in \
        model.classes_problem(10)
    scenario = write_scenario(tmp_path, tiny(
        dataset={"name": "cifar10", "split": "test", "samples": 8, "data_dir": str(scenario_data_dir)},
        models=[{"name": "timm", "arch": "resnet18", "size": 32, "checkpoint": "three.pt"}]))
    code, _, err = run_cli(capsys, "validate", str(scenario))
    assert code == 2 and "models[0]" in err and "three.pt: fc.weight has shape (3, 512)" in err, err
    zoo = RobustBenchModel(model="Carmon2019Unlabeled", dataset="cifar10", threat="Linf", model_dir="models",
                           download=False)
    assert zoo.classes_problem(10) is None and "outputs 10 logits; the data set has 100 classes" in \
        zoo.classes_problem(100)


# Messages that point the right way -------------------------------------------------------------------------------

def test_square_beyond_bpda_says_the_approximation_is_weak():
    apgd = matchup("apgd_ce", (1, 1, 1, 0, 0, 0, 0, 0), defense="art.jpeg", bpda=["art.jpeg"])
    square = matchup("square", (1, 0, 0, 0, 0, 0, 0, 0), defense="art.jpeg", gradient_free=True)
    [row] = rows([apgd, square])
    assert any("the BPDA approximation of art.jpeg is weak here" in f for f in row.flags), row.flags
    assert not any("attack adaptively (BPDA" in f for f in row.flags)


def test_the_security_page_states_the_limits_of_the_code():
    page = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text(encoding="utf-8")
    for name in ("MAX_IMAGE_PIXELS", "MAX_TEXT_CHUNK", "MAX_TEXT_MEMORY", "MAX_ARRAY_BYTES", "MAX_CLASSES",
                 "MAX_JSON_BYTES", "MAX_JSON_DEPTH"):
        assert f"| `{name}` | {getattr(untrusted, name):,} |" in page, name
    assert untrusted.SAFE_NAME.pattern in page


@pytest.mark.parametrize("labels, make, expected", [
    (torch.tensor([0.0, 1.6, 2.0, 1.0]), None, "float labels"),
    (torch.tensor([0, 1, 2, 7]), None, "class indices in 0..2"),
    (torch.tensor([[0], [1], [2], [1]]), None, "flatten them"),
    (torch.tensor([0, 1, 2, 1]), lambda x: (torch.zeros(len(x), 3),), "returns tuple"),
])
def test_evaluate_refuses_labels_and_outputs_it_cannot_measure(labels, make, expected):
    model = _Returns(make) if make else nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    with pytest.raises(ArenaError, match=expected):
        evaluate(model, torch.rand(4, 3, 8, 8), labels, attacks=["fgsm"], threat=ThreatModel("linf", 0.1))
