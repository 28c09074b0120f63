"""The monitor against a hostile run folder and hostile requests: files symlinked out of the root, Host
headers of another site (DNS rebinding), and nasty parameters or file contents that must never give a 500."""

from __future__ import annotations

import json
import logging
import os
import shutil
from urllib.parse import quote

import h5py
import numpy as np
import pytest

pytest.importorskip("starlette", reason="the monitor needs starlette (pip install '.[monitor]' or '.[test]')")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (in the [test] extra)")

from monitor_runs import RunWriter, local_client  # noqa: E402

from spibatch.monitor.report import collect  # noqa: E402

SECRET = "987654"     # in every file outside the root; must never appear in an answer


def endpoints(run: str = "done", iterations=(1, 2, 3, 4, None)) -> list[str]:
    """Every JSON endpoint's URL for one run (each iteration for the per-iteration ones)."""
    urls = ["/api/runs", "/healthz"] + [f"/api/{e}?run={run}" for e in
                                         ("run", "fingerprint", "emc", "phase", "phase/slices", "fsc", "texts")]
    for i in iterations:
        urls += [f"/api/emc/frames?run={run}" + (f"&iteration={i}" if i else ""),
                 f"/api/emc/slices?run={run}" + (f"&iteration={i}" if i else "")]
    return urls


def strict_json(text: str):
    """JSON as a browser's JSON.parse reads it: NaN / Infinity are refused."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


# ---------------------------------------------------------------- files symlinked out of the root

def _outside_copy(run: RunWriter, rel: str, outside) -> None:
    """Replace the run's file ``rel`` by a symlink to a copy outside the root that carries SECRET."""
    target = outside / rel.replace("/", "_")
    original = run.folder / rel
    if rel.endswith(".h5"):
        shutil.copy(original, target)
        with h5py.File(target, "r+") as f:
            f.attrs["iteration"] = int(SECRET)
            name = "intensity" if "intensity" in f else "density"
            data = np.zeros(f[name].shape, f[name].dtype)
            data[tuple(s // 2 for s in data.shape)] = float(SECRET)
            data[tuple(s // 2 + 1 for s in data.shape)] = 1.0
            f[name][...] = data
            if "best_probability" in f:
                f["best_probability"][...] = 0.5
                f.attrs["iteration"] = int(SECRET)
    elif rel.endswith(".jsonl"):
        rows = [json.loads(line) for line in original.read_text().splitlines()]
        for row in rows:
            row.update({k: -float(SECRET) for k in ("log_likelihood", "final_error") if k in row})
            row.update({k: int(SECRET) for k in ("seed",) if k in row})
        target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif rel.endswith(".json"):
        data = json.loads(original.read_text())
        data.update({k: f"{SECRET}-secret" for k in ("status", "host") if k in data})
        if "cc" in data:
            data["cc"] = float(f"0.{SECRET}")
        target.write_text(json.dumps(data))
    else:
        target.write_text(original.read_text().replace("monitor-test", f"secret-{SECRET}") + f"\n{SECRET} secret line\n")
    original.unlink()
    os.symlink(target, original)


SYMLINKED = ["emc/EMC.log", "emc/metrics.jsonl", "config.yaml", "log.txt", "provenance.json", "emc/output_002.h5",
             "emc/output_004.h5", "phase/phasing.h5", "phase/metrics.jsonl", "validate/fsc_vs_truth.json"]


@pytest.mark.parametrize("rel", SYMLINKED)
def test_a_file_symlinked_out_of_the_root_is_never_served(tmp_path, rel):
    """Every endpoint, and report.html's collector, for a run one of whose files leads out of the root."""
    outside = tmp_path / "outside"             # a sibling of the monitored folder
    outside.mkdir()
    run = RunWriter(tmp_path / "runs" / "done").complete()
    _outside_copy(run, rel, outside)
    client = local_client(tmp_path / "runs")
    for url in endpoints():
        response = client.get(url)
        assert response.status_code < 500, (url, response.status_code, response.text[:300])
        assert SECRET not in response.text, (url, response.text[:300])
    if rel.endswith(".h5") and "output" in rel:
        i = int(rel[-6:-3])
        for kind in ("frames", "slices"):
            assert client.get(f"/api/emc/{kind}?run=done&iteration={i}").status_code == 403
    if rel == "phase/phasing.h5":
        assert client.get("/api/phase/slices?run=done").status_code == 404
    if rel == "validate/fsc_vs_truth.json":
        assert client.get("/api/fsc?run=done").status_code == 404
    assert SECRET not in json.dumps(collect(run.folder))          # report.html's data


def test_etc_passwd_behind_emc_log_and_metrics(tmp_path):
    run = RunWriter(tmp_path / "runs" / "live")
    run.emc(1)
    for name in ("EMC.log", "metrics.jsonl"):
        (run.emc_dir / name).unlink()
        os.symlink("/etc/passwd", run.emc_dir / name)
    client = local_client(tmp_path / "runs")
    for url in endpoints("live", iterations=(1, None)):
        response = client.get(url)
        assert response.status_code < 500 and "root:" not in response.text, (url, response.text[:300])
    assert client.get("/api/texts?run=live").json()["emc_log"] is None
    assert "root:" not in json.dumps(collect(run.folder))


def test_a_symlink_inside_the_root_is_followed(tmp_path):
    """Links that stay under the root are fine (a run's log.txt pointing at another run's)."""
    RunWriter(tmp_path / "runs" / "a").complete()
    b = RunWriter(tmp_path / "runs" / "b")
    b.emc(1)
    (b.folder / "log.txt").unlink()
    os.symlink(tmp_path / "runs" / "a" / "log.txt", b.folder / "log.txt")
    assert "run directory here" in local_client(tmp_path / "runs").get("/api/texts?run=b").json()["log"]


def test_a_fifo_in_a_run_does_not_hang_the_server(tmp_path):
    run = RunWriter(tmp_path / "runs" / "live")
    run.emc(1)
    (run.folder / "log.txt").unlink()
    os.mkfifo(run.folder / "log.txt")
    response = local_client(tmp_path / "runs").get("/api/texts?run=live")
    assert response.status_code == 200 and response.json()["log"] is None


def _data_elsewhere(path, name, how, outside):
    """Rewrite dataset ``name`` of the HDF5 file ``path`` so that its data live outside the file: ``external``
    raw storage in a file of SECRET bytes, ``fifo`` external storage on a FIFO, ``virtual`` a virtual dataset
    whose source is an HDF5 file holding SECRET."""
    with h5py.File(path, "r+") as f:
        shape, dtype = f[name].shape, f[name].dtype
        del f[name]
        if how == "virtual":
            source = outside / "source.h5"
            with h5py.File(source, "w") as g:
                g[name] = np.full(shape, float(SECRET), dtype)
            layout = h5py.VirtualLayout(shape, dtype)
            layout[...] = h5py.VirtualSource(str(source), name, shape)
            f.create_virtual_dataset(name, layout)
            return
        size = int(np.prod(shape)) * dtype.itemsize
        if how == "fifo":
            target = outside / "fifo"
            os.mkfifo(target)
        else:
            target = outside / "secret.bin"
            target.write_bytes((SECRET.encode() * (size // len(SECRET) + 1))[:size])
        f.create_dataset(name, shape, dtype, external=[(str(target), 0, size)])


@pytest.mark.parametrize("how", ["external", "virtual", "fifo"])
@pytest.mark.parametrize("rel, name", [("emc/output_002.h5", "intensity"), ("emc/output_002.h5", "best_probability"),
                                       ("phase/phasing.h5", "density")])
def test_data_kept_in_another_file_are_never_read(tmp_path, how, rel, name):
    """An HDF5 dataset inside the root whose bytes are elsewhere (external storage, a virtual dataset, a FIFO
    behind external storage) is 422: never served (the bytes of any readable file), never a crash (a virtual
    source through the file-object driver), never a hung thread (a FIFO)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    run = RunWriter(tmp_path / "runs" / "done").complete()
    _data_elsewhere(run.folder / rel, name, how, outside)
    client = local_client(tmp_path / "runs")
    urls = (["/api/phase?run=done", "/api/phase/slices?run=done"] if rel.startswith("phase") else
            ["/api/emc/slices?run=done&iteration=2", "/api/emc/frames?run=done&iteration=2"])
    for url in urls:
        response = client.get(url)
        assert response.status_code == 422 and "keeps its data in another file" in response.json()["error"], \
            (url, response.status_code, response.text[:300])
    for url in endpoints():
        response = client.get(url)
        assert response.status_code < 500 and SECRET not in response.text, (url, response.text[:300])
    assert SECRET not in json.dumps(collect(run.folder))


def test_declared_sizes_bound_what_the_monitor_reads(tmp_path):
    """A file of a few kB may declare a volume of 8000^3 or 10^8 frames (chunks never written): refused from
    the declared shape (422), not read (a plane of it was 2 GB of memory); a config.yaml past 256 kB is not
    parsed (YAML in Python takes ~1 s a MB, and /api/runs parses every run's)."""
    run = RunWriter(tmp_path / "runs" / "done").complete()
    for name, shape, chunks in (("intensity", (8000, 8000, 8000), (8, 256, 256)),
                                ("best_probability", (60_000_000,), (1_000_000,))):
        with h5py.File(run.emc_dir / "output_002.h5", "r+") as f:
            del f[name]
            f.create_dataset(name, shape, "f4", chunks=chunks, compression="gzip")
    (run.folder / "config.yaml").write_text("emc: {iterations: 3}\nx: [" + ",".join(["1"] * 200_000) + "]\n")
    client = local_client(tmp_path / "runs")
    slices = client.get("/api/emc/slices?run=done&iteration=2")
    frames = client.get("/api/emc/frames?run=done&iteration=2")
    assert slices.status_code == 422 and "8000^3" in slices.json()["error"]
    assert frames.status_code == 422 and "60,000,000 values" in frames.json()["error"]
    assert client.get("/api/runs").status_code == 200
    series = client.get("/api/emc?run=done")
    assert series.status_code == 200 and series.json()["planned"] is None      # the config was not parsed
    (run.folder / "config.yaml").write_text("emc: {iterations: 3}\n")
    assert local_client(tmp_path / "runs").get("/api/emc?run=done").json()["planned"] == 3


# ---------------------------------------------------------------- the Host header

@pytest.fixture
def runs(tmp_path):
    RunWriter(tmp_path / "runs" / "done").complete()
    return tmp_path / "runs"


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:8765", "", "127.0.0.1.evil.example.com",
                                  "localhost.evil.example.com:8765", "[::2]:8765", "a b"])
def test_a_host_of_another_name_is_refused(runs, host):
    client = local_client(runs)
    for url in ("/", "/api/runs", "/api/emc?run=done", "/healthz", "/static/app.js"):
        response = client.get(url, headers={"host": host})
        assert response.status_code == 400, (url, host, response.status_code)
        assert "--allowed-host" in response.json()["error"] and SECRET not in response.text


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "LOCALHOST", "[::1]:8765", "127.0.0.1"])
def test_the_loopback_names_pass(runs, host):
    assert local_client(runs).get("/api/runs", headers={"host": host}).status_code == 200


def test_hosts_follow_the_bound_address_and_the_allowed_list(runs):
    from spibatch.monitor.guards import allowed_hosts

    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("::1", ["Spi.Example.org"]) == ["spi.example.org", "127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("10.1.2.3") == ["10.1.2.3"]
    assert allowed_hosts("0.0.0.0", ["node7", "fd00::7"]) == ["node7", "[fd00::7]", "127.0.0.1", "localhost", "[::1]"]
    bound = local_client(runs, allowed_hosts=allowed_hosts("10.1.2.3"))
    assert bound.get("/api/runs", headers={"host": "10.1.2.3:8765"}).status_code == 200
    assert bound.get("/api/runs", headers={"host": "localhost:8765"}).status_code == 400
    listed = local_client(runs, allowed_hosts=allowed_hosts("0.0.0.0", ["*.example.org", "node7", "fd00::7"]))
    for good in ("spi.example.org", "a.b.example.org:80", "node7:8765", "[fd00::7]:8765", "localhost:8765"):
        assert listed.get("/healthz", headers={"host": good}).status_code == 200, good
    for bad in ("example.org.evil.com", "node77", "evil.example.com", ""):
        assert listed.get("/healthz", headers={"host": bad}).status_code == 400, bad
    anyone = local_client(runs, allowed_hosts=["*"])
    assert anyone.get("/api/runs", headers={"host": "whatever.example"}).status_code == 200


# ---------------------------------------------------------------- no 500s: nasty parameters

NASTY = ["", " ", "\t", "²", "٣", "１", "-1", "+1", "1e400", "1e3", "inf", "-inf", "NaN", "nan", "0x1f", "1_000",
         "1.5", " 1", "1 ", "9" * 5000, str(10 ** 30), "99999999999", "4294967297", "latest", "..", "../..",
         "/etc/passwd", "done/../..", "\x00", "done\x00", "\n", "a" * 8192, "é" * 3000, "🙂", "\\", "null", "[]",
         "{}", "<script>alert(1)</script>", "' OR 1=1 --", "done/", "./done", "done//", ".", "~", "$HOME",
         "a/" * 300, "con", "x" * 256]
RAW = ["%ff%fe", "%", "%zz", "%C0%AE%C0%AE", "%2e%2e%2f%2e%2e", "%00", "%e2%80%ae", "run=done&run=..", ";"]
API = ["/api/run", "/api/fingerprint", "/api/emc", "/api/emc/frames", "/api/emc/slices", "/api/phase",
       "/api/phase/slices", "/api/fsc", "/api/texts", "/api/runs", "/healthz", "/"]


def test_nasty_parameters_never_give_a_500(runs):
    client = local_client(runs)
    queries = [f"run={quote(v, safe='')}" for v in NASTY] + [f"run={r}" for r in RAW]
    queries += [f"run=done&iteration={quote(v, safe='')}" for v in NASTY] + [f"run=done&iteration={r}" for r in RAW]
    queries += [f"iteration={quote(v, safe='')}&run={quote(v, safe='')}" for v in NASTY[:12]] + ["x=1", "run"]
    for path in API:
        for query in queries:
            response = client.get(f"{path}?{query}")
            assert response.status_code < 500, (path, query[:60], response.status_code, response.text[:200])
            if response.status_code >= 400 and path != "/":
                assert set(response.json()) == {"error"}, (path, query[:60])
        assert client.get(f"{path}?run=done").status_code == 200, path      # and it goes on serving


@pytest.mark.parametrize("value, status", [("²", 400), ("٣", 400), ("-1", 400), ("1e400", 400), ("9" * 5000, 400),
                                           ("inf", 400), ("NaN", 400), ("1.0", 400), ("999999999", 404), ("2", 200)])
def test_iteration_is_ascii_digits(runs, value, status):
    response = local_client(runs).get("/api/emc/slices", params={"run": "done", "iteration": value})
    assert response.status_code == status, response.text[:200]


def test_a_long_run_name_is_400_and_a_long_part_404(runs):
    client = local_client(runs)
    long_name = client.get("/api/emc", params={"run": "a" * 8192})
    assert long_name.status_code == 400 and "1024 characters" in long_name.json()["error"]
    assert client.get("/api/emc", params={"run": "b" * 1000}).status_code == 404       # a part over 255 bytes


def test_an_unexpected_error_is_one_json_line_logged_once(runs, monkeypatch, caplog):
    from spibatch.monitor import rundata

    def broken(self):
        raise RuntimeError("a bug in a reader")

    monkeypatch.setattr(rundata.RunData, "emc_series", broken)
    client = local_client(runs)
    with caplog.at_level(logging.ERROR, logger="spibatch.monitor"):
        answers = [client.get("/api/emc?run=done") for _ in range(3)]
    assert [a.status_code for a in answers] == [500] * 3
    assert answers[0].json() == {"error": "internal error (RuntimeError); the monitor's log has the details"}
    assert "\n" not in answers[0].text
    records = [r for r in caplog.records if "a bug in a reader" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is not None
    assert client.get("/api/texts?run=done").status_code == 200                       # still serving


# ---------------------------------------------------------------- no 500s: nasty file contents

def _rewrite_h5(path, change):
    with h5py.File(path, "r+") as f:
        change(f)


def _replace(f, name, data):
    del f[name]
    f[name] = data


BIG = "1" + "0" * 400          # a JSON integer beyond any float

POISONS = {
    "metrics.jsonl values": lambda run: (run.emc_dir / "metrics.jsonl").write_text(
        '{"iteration": 1, "log_likelihood": NaN, "mutual_info": Infinity, "rms_change": -Infinity, "beta_mean": 0}\n'
        '{"iteration": 2, "log_likelihood": "abc", "mutual_info": [], "rms_change": {}, "beta_mean": 1e400}\n'
        f'{{"iteration": 3, "log_likelihood": {BIG}, "mutual_info": true, "num_rot": "x", "beta_mean": 1e-300}}\n'
        '{"iteration": 1e400}\n{"iteration": NaN}\n{"iteration": "4"}\n{"iteration": -5}\n{"iteration": 2.5}\n'
        f'{{"iteration": {BIG}}}\n[1, 2]\n"text"\n' + "[" * 100000 + "\n" + '{"iteration": 4, "beta_mean": 1e308}\n'),
    "EMC.log table": lambda run: ((run.emc_dir / "metrics.jsonl").unlink(), (run.emc_dir / "EMC.log").write_text(
        "iter time rms_change info_rate log-likelihood num_rot beta\n1 1 nan inf -inf 5 0.1\n2 x y z w v u\n"
        "1e400 1 1 1 1 1e400 1\n")),
    "output attributes": lambda run: _rewrite_h5(run.emc_dir / "output_004.h5", lambda f: f.attrs.update(
        {"iteration": np.inf, "voxel_size_per_m": np.nan})) or _rewrite_h5(
        run.emc_dir / "output_003.h5", lambda f: f.attrs.update({"iteration": "three", "voxel_size_per_m": -1.0}))
        or _rewrite_h5(run.emc_dir / "output_002.h5", lambda f: f.attrs.update({"iteration": 1e30,
                                                                                  "voxel_size_per_m": [1.0, 2.0]})),
    "output values": lambda run: _rewrite_h5(run.emc_dir / "output_004.h5", lambda f: (
        _replace(f, "intensity", np.full((21, 21, 21), np.inf)), _replace(f, "best_probability", np.full(60, np.nan)),
        _replace(f, "scale", np.array([np.inf, 1.0, -np.inf])))) or _rewrite_h5(
        run.emc_dir / "output_003.h5", lambda f: (_replace(f, "intensity", np.full((21, 21, 21), np.nan)),
                                                  _replace(f, "scale", np.array([np.nan, np.inf]))))
        or _rewrite_h5(run.emc_dir / "output_001.h5", lambda f: _replace(f, "best_probability", np.array([b"a", b"b"]))),
    "output shapes": lambda run: _rewrite_h5(run.emc_dir / "output_004.h5", lambda f: (
        _replace(f, "intensity", np.ones((21, 21))), _replace(f, "best_probability", np.float64(0.5)))) or _rewrite_h5(
        run.emc_dir / "output_003.h5", lambda f: _replace(f, "intensity", np.ones((3, 4, 5)))) or _rewrite_h5(
        run.emc_dir / "output_002.h5", lambda f: (f.__delitem__("intensity"), f.create_group("intensity")))
        or _rewrite_h5(run.emc_dir / "output_001.h5", lambda f: _replace(f, "intensity", np.array([b"x"] * 8).reshape(2, 2, 2))),
    "phasing.h5": lambda run: _rewrite_h5(run.folder / "phase" / "phasing.h5", lambda f: (
        f.attrs.update({"voxel_size_m": np.inf}), _replace(f, "density", np.full((5, 5, 5), np.nan)),
        _replace(f, "support", np.ones((4, 4, 4))), _replace(f, "prtf_frequency_per_m", np.array([np.inf, 1.0])))),
    "phasing metrics": lambda run: (run.folder / "phase" / "metrics.jsonl").write_text(
        '{"stage": "phase", "kind": "start", "seed": "x", "errors": "abc", "final_error": NaN, "algorithms": "HIO"}\n'
        '{"stage": "phase", "kind": "start", "seed": 1e400, "errors": [Infinity, "a", null], "algorithms": [["HIO"]]}\n'
        '{"stage": "phase", "kind": "merge", "kept_seeds": "all", "prtf": [NaN, Infinity], "resolution_m": -Infinity,'
        ' "resolution_shell": "7", "max_measured_shell": 1e400}\n'),
    "fsc values": lambda run: (run.folder / "validate" / "fsc_vs_truth.json").write_text(
        '{"cc": NaN, "inverted": "yes", "voxel_size_m": Infinity, "frequency": "abc", "fsc": [NaN, Infinity, "x"],'
        ' "resolution_0.5_m": -Infinity, "resolution_0.143_m": 1e400, "data_edge_resolution_m": "far"}'),
    "fsc without frequency": lambda run: (run.folder / "validate" / "fsc_vs_truth.json").write_text(
        '{"voxel_size_m": 0, "radius": ["a", NaN, 1e400, [1]], "resolution_0.5_m": Infinity, "fsc_0.5_radius": 0}'),
    "fsc not an object": lambda run: (run.folder / "validate" / "fsc_vs_truth.json").write_text('[1, 2, 3]'),
    "fsc deeply nested": lambda run: (run.folder / "validate" / "fsc_vs_truth.json").write_text("[" * 100000),
    "fsc corrupt": lambda run: (run.folder / "validate" / "fsc_vs_truth.json").write_bytes(b'{"cc": 0.8, "fsc": [1,'),
    "fsc huge integer": lambda run: (run.folder / "validate" / "fsc_vs_truth.json").write_text(
        '{"cc": ' + "9" * 5000 + '}'),
    "truncated h5": lambda run: [(p.write_bytes(p.read_bytes()[:3000])) for p in
                                 (run.emc_dir / "output_004.h5", run.folder / "phase" / "phasing.h5")],
    "provenance types": lambda run: (run.folder / "provenance.json").write_text(
        '{"status": 5, "command": "spibatch demo", "started": {}, "finished": [1], "host": NaN, "error": 1e400}'),
    "provenance command numbers": lambda run: (run.folder / "provenance.json").write_text(
        '{"status": "running", "command": [1, 2, null]}'),
    "provenance not an object": lambda run: (run.folder / "provenance.json").write_text('"running"'),
    "config types": lambda run: (run.folder / "config.yaml").write_text(
        "emc: 5\nphasing:\n  num_starts: .inf\nsimulation: [1]\n"),
    "config numbers": lambda run: (run.folder / "config.yaml").write_text(
        "emc:\n  iterations: 1e400\nphasing:\n  num_starts: 99999999999999999999999\n"),
    "config negative": lambda run: (run.folder / "config.yaml").write_text(
        "emc:\n  iterations: -3\nphasing:\n  num_starts: true\n"),
    "config broken": lambda run: (run.folder / "config.yaml").write_text("emc: [\n  :: - {\n"),
    "config binary": lambda run: (run.folder / "config.yaml").write_bytes(b"\xff\xfe\x00\x01" * 100),
    "stage markers": lambda run: [(run.stage_log(s), run.layout.marker(s).write_text(text)) for s, text in (
        ("emc", '{"status": "done", "seconds": NaN, "finished": 5}'), ("phase", "[1]"), ("validate", "{"))],
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_bad_file_contents_never_give_a_500(tmp_path, poison):
    run = RunWriter(tmp_path / "runs" / "done", pipeline=True).complete()
    POISONS[poison](run)
    client = local_client(tmp_path / "runs")
    for url in endpoints():
        response = client.get(url)
        assert response.status_code < 500 or response.status_code == 503, (url, response.status_code, response.text[:300])
        body = strict_json(response.text)
        if response.status_code >= 400:
            assert set(body) == {"error"}, (url, body)
    assert client.get("/api/runs").json()["runs"][0]["run"] == "done"        # the run is still listed
    json.dumps(collect(run.folder), allow_nan=False)                          # and report.html can be written


def test_truncated_files_are_503_and_corrupt_json_too(tmp_path):
    run = RunWriter(tmp_path / "runs" / "done").complete()
    POISONS["truncated h5"](run)
    POISONS["fsc corrupt"](run)
    client = local_client(tmp_path / "runs")
    for url in ("/api/emc/slices?run=done&iteration=4", "/api/phase/slices?run=done", "/api/fsc?run=done"):
        response = client.get(url)
        assert response.status_code == 503 and response.headers["retry-after"] == "2", url
    assert client.get("/api/emc/slices?run=done&iteration=3").status_code == 200


def test_contents_of_the_wrong_shape_are_422(tmp_path):
    run = RunWriter(tmp_path / "runs" / "done").complete()
    POISONS["output shapes"](run)
    client = local_client(tmp_path / "runs")
    for i in (1, 2, 3, 4):
        response = client.get(f"/api/emc/slices?run=done&iteration={i}")
        assert response.status_code == 422 and "output_00" in response.json()["error"], (i, response.text[:200])
    assert client.get("/api/fsc?run=done").status_code == 200
