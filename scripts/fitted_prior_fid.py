"""FID of a run's samples drawn from a Gaussian fitted to its aggregate posterior instead
of its prior N(0, I): a diagnostic beside the FID of prior samples (vae eval --metric fid).

    python scripts/fitted_prior_fid.py RUN.h5 [--samples 10000] > result.json

The Gaussian has the mean and covariance of the mixture of the posteriors of the run's
training images (vaecli.aggregate.gaussian_fit; the images it trained on, without the
validation share it held out), the "ex-post density estimation" of Ghosh et al. (2020,
"From variational to deterministic autoencoders").  Its samples are decoded as prior
samples are for FID (the decoder mean, uint8) and scored against the test split's
reference statistics (cached).  When they score much better than prior samples, the
prior puts mass where the aggregate posterior has little: prior holes the first two
moments show (the JSON gives the fitted Gaussian's KL from the prior too).  Models with
one Gaussian latent only (conv, mlp): a hierarchy's groups have no single aggregate.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from script_output import print_result  # this folder is first on the path of a script run from it

from vaecli import fid, runfile
from vaecli.aggregate import gaussian_fit, standard_normal_kl
from vaecli.errors import VaeError
from vaecli.models.protocol import OneGaussianLatent
from vaecli.runs import hold_out_validation, load_model, load_split, mean_to_uint8, prepare_images


@torch.no_grad()
def posterior_moments(model, images: np.ndarray, batch: int = 1000):
    """(mean, logvar), (N, Z) float64, of the posteriors of ``images`` (uint8 levels, prepare_images)."""
    means, logvars = [], []
    for start in range(0, len(images), batch):
        mu, logvar = model.encode(torch.from_numpy(images[start : start + batch]))
        means.append(mu.double())
        logvars.append(logvar.double())
    return torch.cat(means), torch.cat(logvars)


@torch.no_grad()
def fitted_prior_pictures(model, m: torch.Tensor, cov: torch.Tensor, n: int, seed: int, batch: int = 1000):
    """uint8 pictures of n draws z = m + L eps (L L^T = cov, eps the seed's standard normal noise)."""
    chol = torch.linalg.cholesky(cov)
    eps = torch.randn(n, len(m), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = (m + eps @ chol.T).float()
    return np.concatenate([mean_to_uint8(model.likelihood.mean(model.decode(z[start : start + batch])))
                           for start in range(0, n, batch)])


def fitted_prior_fid(path, samples=10_000, seed=0, batch_size=fid.DEFAULT_BATCH):
    run = runfile.read(path)
    model = load_model(run, "cpu")
    if not isinstance(model, OneGaussianLatent):
        raise VaeError(f"{path}: --model {run.config.model} has more than one latent group; "
                       "a fitted prior is defined here for models with one Gaussian latent (conv, mlp)")
    train = load_split(run.config.dataset, "train", run.config.image_size)
    if run.config.validation:
        train, _ = hold_out_validation(train, run.config.validation)
    mean, logvar = posterior_moments(model, prepare_images(train.images, run.config))
    m, cov = gaussian_fit(mean, logvar)
    pictures = fitted_prior_pictures(model, m, cov, samples, seed)

    reference = load_split(run.config.dataset, "test", run.config.image_size)
    extractor = fid.FeatureExtractor(None, torch.device("cpu"), False)
    mu_ref, sigma_ref, n_ref = fid.reference_statistics(extractor, reference, batch_size=batch_size)
    feats = fid.sharded_features(lambda index, start, stop: pictures[start:stop], len(pictures), extractor, batch_size)
    variances = torch.linalg.eigvalsh(cov)
    return {"run": str(path), "fitted_prior_fid": fid.frechet(fid.statistics(feats), (mu_ref, sigma_ref)),
            "n": len(pictures), "n_reference": n_ref, "reference": f"{reference.name}/{reference.split}",
            "fitted_on": f"{train.name}/{train.split}", "fitted_images": len(mean), "seed": seed,
            "fitted_kl_from_prior": standard_normal_kl(m, cov),
            "fitted_mean_norm": float(m.norm()),
            "fitted_variances": {"min": float(variances.min()), "median": float(variances.median()),
                                 "max": float(variances.max())},
            "generated_from": "likelihood mean of z ~ N(m, S), the aggregate posterior's Gaussian fit, uint8"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--samples", type=int, default=10_000, help="samples drawn and scored")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples' noise")
    args = parser.parse_args(argv)
    print_result(fitted_prior_fid, args.run, args.samples, args.seed)


if __name__ == "__main__":
    main()
