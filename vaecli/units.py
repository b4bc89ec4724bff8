"""Unit conversions.  Nats to bits per dimension happens here and nowhere else."""

import math

LN2 = math.log(2.0)


def bits_per_dim(log_likelihood_nats, num_dims):
    """Bits per dimension of a log-likelihood (or ELBO) given in nats per image.

    ``bpd = -log_likelihood_nats / (num_dims * ln 2)``.  Works on Python floats and
    on NumPy, torch and CuPy arrays alike (plain arithmetic only).
    """
    return -log_likelihood_nats / (num_dims * LN2)


def equivalent_beta(sigma):
    """The beta of an MSE-loss beta-VAE equivalent to a Gaussian decoder with
    per-dimension standard deviation ``sigma``: beta = 2 sigma^2 (SPEC.md).

    -log N(y; mu, sigma^2) = SSE / (2 sigma^2) + const, so the negative ELBO
    times 2 sigma^2 is SSE + 2 sigma^2 KL."""
    return 2.0 * sigma * sigma
