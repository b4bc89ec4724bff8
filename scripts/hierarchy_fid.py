"""Where along a hierarchical VAE's groups its prior samples leave its posteriors: FID of
pictures whose first k latent groups are drawn from the posteriors of the test images and
the rest from the prior, for k = 0 (a prior sample) to every group (a posterior sample).

    python scripts/hierarchy_fid.py RUN.h5 [--groups 0,2,4,6] [--samples 10000] > result.json

A diagnostic beside scripts/reconstruction_fid.py (every group on the posterior-mean
path) and the FID of prior samples at lower temperatures.  Where a prior-sampled model
scores far worse than its reconstructions, this finds the groups that open the gap: if
drawing the top groups from the posteriors (the aggregate posterior at that depth) and the
rest from the prior still scores like a prior sample, the lower groups' priors
p(z_g | z_<g) do not match what the posteriors there hold; if it scores like the
all-posterior cut, the top groups do.  Every cut decodes the same test images with the same
noise (common random numbers), so differences between cuts are the cut's alone.  The
pictures are the likelihood's mean, quantized to uint8 as prior samples are for FID; the
reference statistics are those vae eval uses (cached); the EMA weights where the run has
them.  By default the cuts are 0 and the end of each resolution's groups.
"""

from __future__ import annotations

import argparse
import sys

import torch

from script_output import print_result  # this folder is first on the path of a script run from it

from vaecli import fid, runfile
from vaecli.errors import VaeError
from vaecli.models.protocol import draw_noise
from vaecli.runs import load_model, load_split, mean_to_uint8, prepare_images


def default_cuts(model):
    """0, then the number of groups through each resolution (hvae: 0, 2, 4, 6 at 1, 7, 14)."""
    sides = [name.split("/")[0] for name in model.group_names]
    return [0] + [i + 1 for i, side in enumerate(sides) if i + 1 == len(sides) or sides[i + 1] != side]


@torch.no_grad()
def cut_pictures(model, images: torch.Tensor, eps: torch.Tensor, posterior_groups: int):
    """uint8 pictures: the first ``posterior_groups`` groups from the images' posteriors."""
    raw = model.posterior_then_prior(model.encode(images), eps, posterior_groups)
    return mean_to_uint8(model.likelihood.mean(raw))


def hierarchy_fid(path, cuts=None, samples=10_000, seed=0, batch_size=fid.DEFAULT_BATCH):
    run = runfile.read(path)
    model = load_model(run, "cpu")
    if not hasattr(model, "posterior_then_prior"):
        raise VaeError(f"{path}: --model {run.config.model} has no hierarchy of latent groups to cut; "
                       "this diagnostic is for --model hvae")
    groups = len(model.group_names)
    cuts = default_cuts(model) if cuts is None else cuts
    bad = [k for k in cuts if not 0 <= k <= groups]
    if bad:
        raise VaeError(f"--groups: cuts must be 0 to {groups} (the model's latent groups), got {bad}")
    reference = load_split(run.config.dataset, "test", run.config.image_size)
    if not 2 <= samples <= len(reference.images):
        raise VaeError(f"--samples {samples}: FID needs 2 to {len(reference.images)} images (the test split's)")
    extractor = fid.FeatureExtractor(None, torch.device("cpu"), False)
    mu_ref, sigma_ref, n_ref = fid.reference_statistics(extractor, reference, batch_size=batch_size)
    images = torch.from_numpy(prepare_images(reference.images[:samples], run.config))
    eps = draw_noise(model, samples, torch.Generator().manual_seed(seed))
    results = []
    for k in cuts:
        feats = fid.sharded_features(lambda index, start, stop: cut_pictures(model, images[start:stop],
                                                                             eps[start:stop], k),
                                     samples, extractor, batch_size)
        results.append({"posterior_groups": k, "posterior_through": model.group_names[k - 1] if k else None,
                        "fid": fid.frechet(fid.statistics(feats), (mu_ref, sigma_ref))})
        print(f"posterior groups {k} of {groups}: FID {results[-1]['fid']:.2f}", file=sys.stderr)
    return {"run": str(path), "group_names": list(model.group_names), "cuts": results, "n": samples,
            "n_reference": n_ref, "reference": f"{reference.name}/{reference.split}", "seed": seed,
            "generated_from": "likelihood mean, the first k groups drawn from the posteriors of the first n "
                              "test images and the rest from the prior (T = 1), the same noise at every k, uint8"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--groups", help="cuts k, comma-separated (default: 0 and each resolution's last group)")
    parser.add_argument("--samples", type=int, default=10_000, help="test images used (the first N)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    args = parser.parse_args(argv)
    try:
        cuts = None if args.groups is None else [int(k) for k in args.groups.split(",")]
    except ValueError:
        raise SystemExit(f"error: --groups takes whole numbers like 0,2,4,6, got {args.groups!r}") from None
    print_result(hierarchy_fid, args.run, cuts, args.samples, args.seed)


if __name__ == "__main__":
    main()
