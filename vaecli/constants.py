"""Every numerical constant of vaecli, named once, with its reason (SPEC.md)."""

# Data: integer levels 0 .. L-1 with L = 2**n_bits.
DEFAULT_N_BITS = 8  # 8-bit images: 256 levels

# Floor of every learned or analytic log-scale, applied with a soft clip
# (softclip(t, m) = m + softplus(t - m)), as in the sigma-VAE authors' code.  In sigma
# it adds exactly: exp(softclip(log s, m)) = s + e^m, so every scale is at least
# exp(-6) ~ 0.0025, below half a bin (1/510) of 8-bit data, and it keeps per-pixel
# variances from collapsing to zero (the gaussian-pixel failure mode).  It does move
# a calibrated sigma a little: the sigma-VAE's eval sigma is sqrt(MSE) + 0.0025
# (2.5% at sigma 0.1), and its ELBO is that of this sigma.
LOG_SIGMA_MIN = -6.0

# Fixed standard deviation of the plain `gaussian` decoder when none is given:
# sigma = 1 makes -log p equal to 0.5 * sum of squared errors plus a constant,
# i.e. the usual "MSE loss" VAE.
DEFAULT_FIXED_SIGMA = 1.0

# Student-t degrees of freedom are df = STUDENT_T_MIN_DF + softplus(raw):
# df > 2 keeps the variance finite.
STUDENT_T_MIN_DF = 2.0

# Number of components of the discretized logistic mixture (PixelCNN++ default).
DEFAULT_MIXTURES = 10

# A latent dimension is "active" when the variance over the data of its
# posterior mean exceeds this (Burda et al., 2016).
ACTIVE_UNIT_THRESHOLD = 0.01

# KID (Binkowski et al. 2018), as torch-fidelity computes it: 100 random subsets of
# 1000 features, polynomial kernel k(x, y) = (x.y / d + KID_COEF0) ** KID_DEGREE, where
# 1/d keeps x.y/d of order one for any feature width d.
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
KID_DEGREE = 3
KID_COEF0 = 1.0

# The sigma-VAE's evaluation sigma for its discretized PMF (bits/dim, NLL in bits) is
# the maximum-likelihood sigma of that PMF on this many training images (a fixed
# subset, one posterior sample each; ~4*10^5 pixels on MNIST).  Other subsets move it
# by about 1% on mnist5k (0.222-0.228), which changes bits/dim by under 0.001 since the
# optimum is flat; the search costs about 1 s on a CPU.  It runs over log sigma on a
# grid of PMF_SIGMA_GRID points from log_sigma_min to log(PMF_SIGMA_MAX), refined by
# Brent's bounded method to PMF_SIGMA_XTOL in log sigma.
PMF_CALIBRATION_IMAGES = 500
# ... but at most about this many values (and at least PMF_CALIBRATION_MIN examples): a
# sequence model's example is a video (SM-MNIST: 20 frames of 64x64, 82k values), and 500
# of them held 29M doubles that every step of the search scored (about 6 min an epoch on
# one CPU core).  Images of up to 8,388 values keep their 500 (MNIST has 784, CIFAR 3,072).
PMF_CALIBRATION_VALUES = 1 << 22
PMF_CALIBRATION_MIN = 16
PMF_SIGMA_GRID = 13
PMF_SIGMA_MAX = 2.0
PMF_SIGMA_XTOL = 1e-3

# The backends' discretized Gaussian and Student-t: a bin whose standardized width w
# satisfies w * (1 + |midpoint|) < tau is too narrow for a difference of log-CDFs
# (they agree to most of their digits, e.g. a Gaussian with sigma > 1 at 8 bits): that
# difference loses about eps/tau relative, while Simpson's rule on the density errs by
# about tau^4/2880 relative.  tau balances the two, per floating-point type.
SIMPSON_MAX_WIDTH = {"float32": 0.2, "float64": 0.003}

# The Student-t density's normalizer lgamma(a + 1/2) - lgamma(a) - 1/2 log(a pi), a = df/2,
# is a difference of two log-gammas that grow like a log a: in float32 it lost 0.003
# nats at df = 1e5.  From this a on, the asymptotic series
# c(a) = lgamma(a + 1/2) - lgamma(a) - 1/2 log a = -1/(8a) + 1/(192a^3) - 1/(640a^5) + 17/(14336a^7)
# is used instead (its first omitted term is below 1e-11 relative at a = 10 and 1e-17
# at 40); below it the two log-gammas are small enough to subtract.
STUDENT_T_SERIES_MIN_HALF_DF = {"float32": 10.0, "float64": 40.0}

# A bin whose standardized width d = (bin width)/scale is below this (a scale above
# ~1e16 at 8 bits) has 1 - e^-d = d to within d/2, below the resolution of log d in any
# float type; and d itself, 1/s times the width, would turn subnormal and then zero as
# the log-scale grows (float32 from a log-scale of about 82, float64 from about 740).
# There the discretized logistic takes log(1 - e^-d) = log d = log(bin width) - log s,
# from the log-scale itself; the Gaussian and Student-t bins, narrow against the scale
# there, take their Simpson mass as log(bin width) - log s + log(mean density) always.
TINY_BIN_WIDTH = 2.0**-60

# The Student-t CDF at large df, F(-|t|) = I_u(a, 1/2) / 2 with a = df/2 and
# u = df/(df + t^2): the backends' incomplete beta (a continued fraction, or CuPy's
# betainc) needs about sqrt(a) iterations and forms u = 1 - t^2/df, which loses the
# digits of t^2/df (float64 lost 1e-9 relative at df 1e6 and 3e-5 at 1e9, and was
# infinite from 1e20).  From this a on they take DiDonato and Morris's asymptotic
# expansion for a large and b <= 1 (ACM TOMS 708, BGRAT; valid there for a >= 15) where
# u >= 1/2 (t^2 <= df): with z = (a - 1/4) log1p(t^2/df),
#   I_u(a, 1/2) = G e^-z (erfcx(sqrt z) + sum_{n>=1} d_n K_n),  G = Gamma(a+1/2)/(Gamma(a) sqrt(a - 1/4)),
# K_n = (b_n (b_n + 1) K_{n-1} + (z + b_n + 1) T^(n-1) sqrt(z/pi)) / (4 (a - 1/4)^2),
# b_n = 1/2 + 2(n-1), T = log1p(t^2/df)^2/4, K_0 = erfcx(sqrt z), and d_n the constants
# below; STUDENT_T_BGRAT_TERMS terms reach float64 resolution at a = 15 (checked against
# 50-digit quadrature).  Where u < 1/2 the series of DLMF 8.17.8 converges like u^n.
STUDENT_T_BGRAT_MIN_HALF_DF = 15.0
STUDENT_T_BGRAT_TERMS = 8


def _bgrat_coefficients(b: float, terms: int) -> tuple[float, ...]:
    """d_1 .. d_terms of TOMS 708's BGRAT for parameter b: with c_n = 1/(2n+1)!,
    d_n = (b - 1) c_n + (1/n) sum_{i<n} (b - n + (i - 1) b) c_i d_(n-i)."""
    c, d = [], []
    for n in range(1, terms + 1):
        c.append((c[-1] if c else 1.0) / ((2 * n) * (2 * n + 1)))
        s = sum((b - n + (i - 1) * b) * c[i - 1] * d[n - i - 1] for i in range(1, n))
        d.append((b - 1.0) * c[n - 1] + s / n)
    return tuple(d)


STUDENT_T_BGRAT_D = _bgrat_coefficients(0.5, STUDENT_T_BGRAT_TERMS)
