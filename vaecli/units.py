"""Unit conversions.  Nats to bits per dimension happens here and nowhere else."""

import math

LN2 = math.log(2.0)


def bits_per_dim(log_likelihood_nats, num_dims):
    """Bits per dimension of a log-likelihood (or ELBO) given in nats per image.

    ``bpd = -log_likelihood_nats / (num_dims * ln 2)``.  Works on Python floats and
    on NumPy, torch and CuPy arrays alike (plain arithmetic only).
    """
    return -log_likelihood_nats / (num_dims * LN2)
