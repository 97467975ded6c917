"""The main job (hw/demo.py via ``python -m hw.build --target sim``) and ``bench demo``.

* bad input: every bad argument / image / configuration -> exit code 2, one stderr line naming
  the culprit, no traceback, before any work (no quantization, no build);
* image loading (PNG, bilevel PNG, .npy layouts, bundled canvases) and the PNG drawing: boxes
  read back from the written file where the coordinates say, the canvas untouched elsewhere;
* the report and the printed table on GoldenDevice: structure, bit-exactness, detections equal
  to decoding the host reference independently, hit counting; a corrupted READ_OUT word is
  caught and named by layer (exit code 1), a hung device too;
* ONE end-to-end run of the same code path on the Verilator RTL (``sim.build_top.SMALL_TOP``,
  whose build the RTL tests share): the first two layers (stem1, s2_down) of a real frame --
  the rest of the network needs K = 288..576 > SMALL_TOP's kmax of 256 and is refused up front
  (tested) -- bit-exact, with the RTL's counters equal to GoldenDevice's (ideal host).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector import dataset as D
from detector import quantize as Qz
from firmware.device import DeviceError
from firmware.golden_device import GoldenDevice
from golden import isa
from golden.config import ArrayConfig
from hw import build, demo
from sim.build_top import SMALL_TOP

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph():
    return Qz.build_int8_graph()


def _png(path, arr, mode=None):
    Image.fromarray(arr, mode).save(path) if mode is None else Image.fromarray(arr).convert(mode).save(path)
    return str(path)


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, text the single error line must contain)."""
    g = np.zeros((96, 96), np.uint8)
    (tmp / "notimage.png").write_text("this is not a PNG\n")
    ok = tmp / "ok.png"
    Image.fromarray(g).save(ok)
    (tmp / "truncated.png").write_bytes(ok.read_bytes()[:60])
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(tmp / "rgb.png")
    Image.fromarray(np.zeros((96, 96, 4), np.uint8)).save(tmp / "rgba.png")
    Image.fromarray(g).convert("LA").save(tmp / "la.png")
    Image.fromarray(np.zeros((96, 96), np.uint16)).save(tmp / "gray16.png")
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(tmp / "small.png")
    np.save(tmp / "float.npy", np.zeros((96, 96), np.float32))
    np.save(tmp / "shape.npy", np.zeros((95, 96), np.uint8))
    np.save(tmp / "hwc.npy", np.zeros((96, 96, 3), np.uint8))
    np.save(tmp / "chw.npy", np.zeros((3, 96, 96), np.uint8))
    np.save(tmp / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp / "afile").write_text("x")
    t = str(tmp)
    img = lambda n: ["--images", f"{t}/{n}"]  # noqa: E731
    return [
        (img("missing.png"), "missing.png: no such file"),
        (["--images", t], "is a directory"),
        (img("notimage.png"), "notimage.png: not an image"),
        (img("truncated.png"), "truncated.png: unreadable image"),
        (img("rgb.png"), "rgb.png: 3 channels"),
        (img("rgba.png"), "rgba.png: 4 channels"),
        (img("la.png"), "la.png: 2 channels"),
        (img("gray16.png"), "gray16.png: mode I;16 (not 8-bit)"),
        (img("small.png"), "small.png: size 80x64 (width x height); the detector takes a 96x96"),
        (img("float.npy"), "float.npy: dtype float32"),
        (img("shape.npy"), "shape.npy: size 96x95"),
        (img("hwc.npy"), "hwc.npy: 3 channels"),
        (img("chw.npy"), "chw.npy: 3 channels"),
        (img("pickled.npy"), "pickled.npy: not a readable .npy"),
        (["--images", "test:0-600"], "index 600 out of range; the test split has canvases 0..499"),
        (["--images", "test:3-1"], "empty range 3-1"),
        (["--images", "train:0"], "unknown split 'train'"),
        (["--images", "test:0", f"{t}/missing.npy"], "missing.npy: no such file"),   # later image still checked first
        (["--k", "0"], "--k must be an integer in [1, 5760]"),
        (["--score", "1.5"], "--score must be in [0, 1]"),
        (["--layers", "0"], "--layers must be >= 1"),
        (["--top", "core"], "--top core is for --target verilog"),
        (["--out", f"{t}/x.v"], "--out is the Verilog path of --target verilog"),
        (["--out-dir", f"{t}/afile"], "--out-dir"),
        (["--rows", "0"], "rows"),
    ]


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    """Every bad input: exit code 2, exactly one stderr line naming the culprit, nothing else done."""
    def no_work(*a, **k):
        raise AssertionError("work started despite bad input")
    monkeypatch.setattr(Qz, "build_int8_graph", no_work)
    monkeypatch.setattr("sim.build_top.build_top", no_work)
    out_dir = str(tmp_path / "out")
    for argv, culprit in _bad_inputs(tmp_path):
        extra = [] if "--out-dir" in argv else ["--out-dir", out_dir]
        rc = build.main(["--target", "sim", *argv, *extra])
        cap = capsys.readouterr()
        assert rc == 2, (argv, cap)
        lines = cap.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, cap.err)
        assert culprit in lines[0], (argv, lines[0])
        assert "Traceback" not in cap.err and cap.out == "", (argv, cap)


def test_configuration_that_cannot_run_the_network_is_refused_before_the_build(tmp_path, capsys, monkeypatch, graph):
    """SMALL_TOP's kmax (256) < K of s2_a (3x3 over 32 channels = 288): exit 2 naming the layer, no build."""
    monkeypatch.setattr(Qz, "build_int8_graph", lambda *a, **k: graph)

    def no_build(*a, **k):
        raise AssertionError("the Verilator build started")
    monkeypatch.setattr("sim.build_top.build_top", no_build)
    c = SMALL_TOP
    argv = ["--target", "sim", "--rows", str(c.rows), "--cols", str(c.cols), "--max-k", str(c.max_k),
            "--bus-bytes", str(c.bus_bytes), "--act-depth", str(c.act_depth), "--wgt-depth", str(c.wgt_depth),
            "--param-depth", str(c.param_depth), "--out-depth", str(c.out_depth), "--images", "test:0",
            "--out-dir", str(tmp_path)]
    assert build.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot run layer 's2_a'" in err[0] and "288" in err[0], err
    assert not (tmp_path / "report.json").exists()


def test_cli_bad_image_no_traceback(tmp_path):
    """The real command line: a missing image -> exit 2, one line, no traceback."""
    r = subprocess.run([sys.executable, "-m", "hw.build", "--target", "sim", "--images", str(tmp_path / "nope.png"),
                        "--out-dir", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {tmp_path / 'nope.png'}: no such file"
    assert r.stdout == ""


def test_load_images(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (96, 96), dtype=np.uint8)
    p = _png(tmp_path / "a.png", a)
    assert np.array_equal(demo.load_image_file(p), a)
    bw = (a > 127)
    Image.fromarray(bw).save(tmp_path / "bw.png")                      # mode "1" -> 0 / 255
    assert Image.open(tmp_path / "bw.png").mode == "1"
    assert np.array_equal(demo.load_image_file(str(tmp_path / "bw.png")), bw.astype(np.uint8) * 255)
    for shape in ((96, 96), (1, 96, 96), (1, 1, 96, 96)):
        np.save(tmp_path / "x.npy", a.reshape(shape))
        got = demo.load_image_file(str(tmp_path / "x.npy"))
        assert got.shape == (96, 96) and got.dtype == np.uint8 and np.array_equal(got, a)
    ims = demo.parse_images(["test:3-4", p, p, "val:0"])
    assert [i.name for i in ims] == ["test_0003", "test_0004", "a", "a_1", "val_0000"]
    c = D.make_split("test", 2, start=3)
    for i in range(2):
        assert np.array_equal(ims[i].pixels, c.images[i, 0])
        assert np.array_equal(ims[i].boxes, c.boxes[i]) and np.array_equal(ims[i].classes, c.classes[i])
    assert ims[2].boxes is None and ims[2].source == p
    assert np.array_equal(ims[4].pixels, D.make_split("val", 1).images[0, 0])


def test_render_png_round_trip(tmp_path):
    """Boxes land on the upscaled pixels the coordinates name; everything else is the canvas."""
    s = demo.SCALE
    canvas = np.random.default_rng(1).integers(0, 100, (96, 96), dtype=np.uint8)   # never a box colour
    det = {"class": 3, "score": 0.5, "box": [10.0, 20.0, 30.0, 40.0]}
    gt = np.array([[50.0, 50.0, 70.0, 80.0]])
    clipped = {"class": 1, "score": 0.9, "box": [-5.0, 90.0, 8.25, 101.0]}       # partly outside
    path = demo.write_png(tmp_path / "sub" / "r.png", demo.render(canvas, [det, clipped], gt, caption="cap"))
    got = np.asarray(Image.open(path).convert("RGB"))
    assert got.shape == (96 * s + demo.FOOTER, 96 * s, 3)
    red, green = np.array(demo.DET_COLOUR), np.array(demo.GT_COLOUR)
    x0, y0, x1, y1 = 10 * s, 20 * s, 30 * s - 1, 40 * s - 1
    for edge in (got[y0:y1 + 1, x0], got[y0:y1 + 1, x0 + 1], got[y0:y1 + 1, x1], got[y0:y1 + 1, x1 - 1],
                 got[y0, x0:x1 + 1], got[y1, x0:x1 + 1]):
        assert (edge == red).all()
    gx0, gy0, gx1, gy1 = 50 * s, 50 * s, 70 * s - 1, 80 * s - 1
    for edge in (got[gy0:gy1 + 1, gx0], got[gy0:gy1 + 1, gx1], got[gy0, gx0:gx1 + 1], got[gy1, gx0:gx1 + 1]):
        assert (edge == green).all()
    # the clipped box: left edge at column 0, right edge at round(8.25 * 4) - 1 = 32, top at 360, bottom clipped
    assert (got[360:384, 0] == red).all() and (got[360:384, 32] == red).all() and (got[360, 0:33] == red).all()
    # the label of the first box: a red strip right above it with white text in it
    assert (got[y0 - 1, x0:x0 + 20] == red).all() and (got[y0 - 12:y0, x0:x0 + 20] == 255).all(-1).any()
    # interiors are the canvas, nearest-upscaled
    up = np.repeat(np.repeat(canvas, s, 0), s, 1)
    for (ya, yb, xa, xb) in ((y0 + 2, y1 - 1, x0 + 2, x1 - 1), (gy0 + 1, gy1, gx0 + 1, gx1)):
        assert (got[ya:yb, xa:xb] == up[ya:yb, xa:xb, None]).all()
    # far from every box and label: untouched
    assert (got[200:300, 0:150] == up[200:300, 0:150, None]).all()
    assert got[96 * s:].any()                                     # the caption strip is drawn


def test_hits():
    gt_b = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    gt_c = np.array([1, 2])
    h = demo.hits([[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30], [50, 50, 60, 60]], [1, 1, 7, 2], gt_b, gt_c)
    assert h == {"hits": 1, "misses": 1, "false_positives": 3, "matched": [0, -1, -1, -1]}
    h = demo.hits([[21, 21, 30, 30]], [2], gt_b, gt_c)          # IoU 0.81
    assert h["hits"] == 1 and h["matched"] == [1]
    assert demo.hits([], [], gt_b, gt_c) == {"hits": 0, "misses": 2, "false_positives": 0, "matched": []}


def test_golden_report_and_table(tmp_path, graph):
    """The main job's report on GoldenDevice: one row per fused node, bit-exact, detections equal to
    decoding the host reference independently, PNG and report.json written."""
    cfg = ArrayConfig()
    ims = demo.parse_images(["test:0"])
    lines = []
    rep = demo.run_demo(cfg, ims, backend="golden", out_dir=tmp_path, graph=graph, log=lines.append)
    g = graph.fuse()
    (im,) = rep["images"]
    assert [r["layer"] for r in im["layers"]] == [n.name for n in g.nodes]
    assert rep["bit_exact"] and im["bit_exact"] and im["first_mismatch"] is None and im["error"] is None
    assert rep["bit_exact_layers"] == rep["layers"] == len(g.nodes) == 24
    peak = cfg.rows * cfg.out_lanes
    for r, n in zip(im["layers"], g.nodes):
        assert r["mismatches"] == 0 and r["values"] == int(np.prod(g.shape(n.name)))
        assert r["macs"] == n.macs(g.in_shapes(n))
        if n.on_array:
            assert r["where"] == "array" and r["cycles_measured"] >= r["cycles_model"] > 0
            assert r["utilization"] == round(r["macs"] / (r["cycles_measured"] * peak), 4)
            assert r["useful_macs_measured"] >= r["macs"] > 0
        else:
            assert r["where"] == "host" and r["cycles_measured"] is None and r["utilization"] is None
    assert im["simulated_cycles"] == sum(r["cycles_measured"] or 0 for r in im["layers"])
    # detections: the same as decoding the host reference (no device involved)
    ref = Qz.run_int8_reference(graph, ims[0].pixels[None, None])
    dets = Qz.decode_outputs(graph, ref)
    sc = dets["scores"][0].astype(np.float64) / 256
    keep = dets["peak"][0] & (sc >= 0.3)
    assert [d["class"] for d in im["detections"]] == list(dets["classes"][0][keep])
    assert np.allclose([d["box"] for d in im["detections"]], dets["boxes"][0][keep], atol=1e-3)
    assert im["hits"]["hits"] + im["hits"]["misses"] == len(ims[0].boxes)
    assert im["hits"]["hits"] >= 1 and 0 < im["mAP"] <= 1
    assert Path(im["png"]).exists() and Image.open(im["png"]).size == (96 * demo.SCALE, 96 * demo.SCALE + demo.FOOTER)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["images"][0]["layers"] == im["layers"] and on_disk["config"]["rows"] == 8
    assert set(rep["timings"]) >= {"build_seconds", "frame_seconds", "simulated_cycles", "cycles_per_second"}
    # the printed table: every layer, the total line
    table = demo.format_layer_table(im["layers"], cfg)
    text = "\n".join(lines)
    assert table in text
    for n in g.nodes:
        assert any(line.split()[0] == n.name for line in table.splitlines()[2:])
    total = table.splitlines()[-1].split()
    assert total[0] == "total" and total[-1] == "ok" and f"{sum(r['macs'] for r in im['layers']):,}" in total


class _CorruptDevice(GoldenDevice):
    """GoldenDevice that flips bit 0 of the first READ_OUT word of its ``layer``-th array layer."""

    def __init__(self, cfg, layer: int):
        super().__init__(cfg)
        self.layer, self.clears, self.armed, self.done = layer, 0, False, False

    def send_command(self, desc):
        op = desc & ((1 << isa.OPCODE_BITS) - 1)
        if op == int(isa.Op.CLEAR_STATUS):
            self.clears += 1
        self.armed = op == int(isa.Op.READ_OUT) and self.clears == self.layer and not self.done
        super().send_command(desc)

    def receive(self, n, timeout_s=5.0):
        words = super().receive(n, timeout_s)
        if self.armed:
            words[0] ^= 1
            self.armed, self.done = False, True    # once
        return words


def test_mismatch_and_device_failure_are_named(tmp_path, capsys, monkeypatch, graph):
    """A corrupted output word of s2_a -> exit code 1, the report and the output name s2_a first;
    a hung device -> exit 1 naming the layer it hung in; a simulator that does not start -> exit 1,
    one error line."""
    monkeypatch.setattr(Qz, "build_int8_graph", lambda *a, **k: graph)
    monkeypatch.setattr(demo, "_open_device", lambda backend, cfg: _CorruptDevice(cfg, 3))
    argv = ["--target", "sim", "--backend", "golden", "--images", "test:0", "--layers", "4", "--out-dir", str(tmp_path)]
    assert build.main(argv) == 1
    out = capsys.readouterr().out
    assert "NOT BIT-EXACT: " in out and "first 's2_a'" in out
    im = json.loads((tmp_path / "report.json").read_text())["images"][0]
    assert not im["bit_exact"] and im["first_mismatch"] == "s2_a"
    assert [r["mismatches"] > 0 for r in im["layers"]] == [False, False, True, True]
    assert im["layers"][2]["mismatches"] >= 1 and im["detections"] is None       # --layers 4: no heads
    monkeypatch.setattr(demo, "_open_device", lambda backend, cfg: GoldenDevice(cfg, hang_after=60))
    assert build.main(argv) == 1
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "report.json").read_text())
    err = rep["images"][0]["error"]
    assert err.startswith("DeviceTimeout in layer ") and "DEVICE FAILURE" in out and not rep["bit_exact"]
    assert rep["images"][0]["bit_exact_layers"] == len(rep["images"][0]["layers"]) < 4

    def no_simulator(backend, cfg):
        raise DeviceError("the simulator did not connect within 300 s (log build/rtl_host/x/sim.log)")
    monkeypatch.setattr(demo, "_open_device", no_simulator)
    assert build.main(argv) == 1
    cap = capsys.readouterr()
    assert cap.err.strip() == "error: DeviceError: the simulator did not connect within 300 s (log build/rtl_host/x/sim.log)"


def test_rtl_end_to_end_small_top(tmp_path, graph):
    """The main job's code path on the Verilator RTL (SMALL_TOP, shared build): stem1 and s2_down
    of test canvas 0 (the layers SMALL_TOP's kmax admits), bit-exact, counters equal GoldenDevice's."""
    ims = demo.parse_images(["test:0"])
    rep = demo.run_demo(SMALL_TOP, ims, backend="rtl", out_dir=tmp_path / "rtl", graph=graph, layers=2,
                        log=lambda m: None)
    gold = demo.run_demo(SMALL_TOP, ims, backend="golden", out_dir=tmp_path / "gold", graph=graph, layers=2,
                         log=lambda m: None)
    (im,) = rep["images"]
    assert im["error"] is None, im["error"]
    assert rep["bit_exact"] and im["bit_exact_layers"] == im["run_layers"] == 2
    assert [r["layer"] for r in im["layers"]] == ["stem1", "s2_down"]
    assert rep["model"]["key"].startswith("top-")
    for r, g in zip(im["layers"], gold["images"][0]["layers"]):
        for key in ("cycles_measured", "busy_cycles_measured", "useful_macs_measured", "macs", "cycles_model"):
            assert r[key] == g[key], (r["layer"], key, r[key], g[key])
    assert im["simulated_cycles"] >= sum(r["cycles_measured"] for r in im["layers"]) > 0
    assert im["cycles_per_second"] > 0 and im["frame_seconds"] > 0
