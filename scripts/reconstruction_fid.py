"""FID of a run's reconstructions of the test images, against those same images: a
diagnostic beside the FID of prior samples (vae eval --metric fid).

    python scripts/reconstruction_fid.py RUN.h5 [--samples 10000] > result.json

Each test image is reconstructed as vae reconstruct shows it: the decoder mean on the
posterior-mean path (every group's noise 0), quantized to uint8 as prior samples are
for FID.  When
reconstructions score much better than prior samples, what the decoder can draw is
not what the prior asks of it: the prior puts mass where the aggregate posterior has
little (prior holes), or the hierarchy's groups do not agree when drawn from the prior.
The reference statistics are those vae eval uses (cached); the EMA weights where the
run has them, as vae eval.
"""

from __future__ import annotations

import argparse

import torch

from script_output import print_result  # this folder is first on the path of a script run from it

from vaecli import fid, runfile
from vaecli.runs import load_model, load_split, prepare_images, reconstruct


def reconstruction_fid(path, samples=10_000, batch_size=fid.DEFAULT_BATCH):
    run = runfile.read(path)
    model = load_model(run, "cpu")
    reference = load_split(run.config.dataset, "test", run.config.image_size)
    extractor = fid.FeatureExtractor(None, torch.device("cpu"), False)
    mu_ref, sigma_ref, n_ref = fid.reference_statistics(extractor, reference, batch_size=batch_size)
    images = torch.from_numpy(prepare_images(reference.images[:samples], run.config))

    feats = fid.sharded_features(lambda index, start, stop: reconstruct(model, images[start:stop])[1],
                                 len(images), extractor, batch_size)
    score = fid.frechet(fid.statistics(feats), (mu_ref, sigma_ref))
    return {"run": str(path), "reconstruction_fid": score, "n": len(images), "n_reference": n_ref,
            "reference": f"{reference.name}/{reference.split}",
            "generated_from": "likelihood mean on the posterior-mean path (noise 0) of each test image, uint8"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--samples", type=int, default=10_000, help="test images reconstructed (the first N)")
    args = parser.parse_args(argv)
    print_result(reconstruction_fid, args.run, args.samples)


if __name__ == "__main__":
    main()
